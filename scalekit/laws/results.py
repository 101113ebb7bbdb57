"""`LawFit`: the result of a parametric (approach 3) fit, with bootstrap intervals when they were computed."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from scalekit.laws import render
from scalekit.laws.allocate import Allocation, chinchilla_optimal, numeric_optimal, optimal_exponents
from scalekit.laws.forms import Law
from scalekit.laws.lbfgs import CONVERGED_CODES, STATUS


@dataclass
class LawFit:
    """A fitted law. `params` are natural (A, B, E, alpha, beta, ...), `lse` the optimiser's form (a, b, e, ...).

    `objective` is the value of the objective `objective_name` (delta `delta`, None for least squares) at the
    optimum, found by `solver`; `n_converged`/`n_starts` count the starts that met the tolerance; `start_status` holds every start's status code (see `scalekit.laws.lbfgs.STATUS`). After a
    bootstrap, `intervals` maps every parameter (both forms) and derived quantity to a percentile interval and
    `samples` holds the resampled LSE parameter rows.
    """

    law: Law
    lse: dict[str, float]
    params: dict[str, float]
    objective: float
    n_converged: int
    n_starts: int
    converged: bool
    n_points: int
    delta: float
    fixed: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    start_status: np.ndarray | None = field(default=None, repr=False)
    start_objective: np.ndarray | None = field(default=None, repr=False)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)
    level: float | None = None
    bootstrap_converged: tuple[int, int] | None = None
    flops_per_param_token: float = 6.0
    objective_name: str = "huber_log"
    solver: str = "lbfgs"
    ties: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    diagnostics: list = field(default_factory=list)
    seconds: float | None = None

    # ---------------------------------------------------------------------------------------------- parameters
    @property
    def theta(self) -> np.ndarray:
        return np.array([self.lse[k] for k in self.law.params], np.float64)

    @property
    def start_converged(self) -> np.ndarray:
        """Per start of the grid: did it meet the tolerance (gtol or ftol)?"""
        return np.isin(self.start_status, CONVERGED_CODES)

    @property
    def exponents(self) -> dict[str, float]:
        """Compute-optimal exponents a = beta/(alpha+beta) (N_opt ~ C^a), b = alpha/(alpha+beta) (D_opt ~ C^b)."""
        if "alpha" in self.lse and "beta" in self.lse:
            a, b = optimal_exponents(self.lse["alpha"], self.lse["beta"])
            return {"a": a, "b": b}
        if "eta" in self.lse:                      # Gadre et al.: alpha = beta, so N_opt and D_opt ~ C^0.5
            return {"a": 0.5, "b": 0.5}
        return {}

    @property
    def objective_label(self) -> str:
        """The objective and its delta, as every output names them (e.g. "huber_log (delta 0.001)")."""
        return self.objective_name + ("" if self.delta is None else f" (delta {self.delta:g})")

    def _sample_dicts(self):
        for row in self.samples:
            yield dict(zip(self.law.params, row))

    def interval_of(self, fn: Callable[[dict[str, float]], float | np.ndarray], level: float | None = None):
        """Percentile interval of any derived quantity fn(lse_params) over the bootstrap samples."""
        if self.samples is None:
            raise ValueError("no bootstrap samples: fit with bootstrap=K first")
        vals = np.array([fn(d) for d in self._sample_dicts()], np.float64)
        lv = self.level if level is None else level
        if vals.ndim == 1:
            return render.percentile_interval(vals, lv)
        lo = (1 - lv) / 2
        return np.nanquantile(vals, lo, axis=0), np.nanquantile(vals, 1 - lo, axis=0)

    # ---------------------------------------------------------------------------------------------- prediction
    def predict(self, inputs: dict | None = None, **kw) -> np.ndarray:
        """The law's prediction (loss; coverage for the coverage law) at named inputs, e.g. predict(N=..., D=...)."""
        inputs = dict(inputs or {}, **kw)
        return self._predict_with(self.lse, inputs)

    def _predict_with(self, lse: dict[str, float], inputs: dict) -> np.ndarray:
        missing = [k for k in self.law.inputs if k not in inputs]
        if missing:
            raise ValueError(f"law {self.law.name!r} needs inputs {self.law.inputs}; missing {missing}")
        arrs = np.broadcast_arrays(*(np.asarray(inputs[k], np.float64) for k in self.law.inputs))
        theta = np.array([lse[k] for k in self.law.params], np.float64)
        y = np.exp(self.law.log_predict_np(theta, dict(zip(self.law.inputs, arrs))))
        if self.law.target == "-log coverage":
            y = np.exp(-y)
        return y

    def predict_interval(self, inputs: dict | None = None, level: float | None = None, **kw):
        inputs = dict(inputs or {}, **kw)
        return self.interval_of(lambda d: self._predict_with(d, inputs), level)

    # ---------------------------------------------------------------------------------------------- allocation
    def _optimal_with(self, lse: dict[str, float], C, U=None):
        k = self.flops_per_param_token
        if self.law.name in ("chinchilla", "chinchilla_tied"):
            n, d = chinchilla_optimal(C, np.exp(lse["a"]), np.exp(lse["b"]), lse["alpha"], lse["beta"], k)
            return n, d
        if set(self.law.inputs) >= {"N", "D"}:
            extra = {} if U is None else {"U": U}

            def loss_fn(N, D):
                inp = {"N": N, "D": D, **extra}
                if "U" in self.law.inputs and "U" not in extra:
                    inp["U"] = D            # no repetition: every token unique
                return self._predict_with(lse, inp)

            return numeric_optimal(loss_fn, C, k)
        raise ValueError(f"law {self.law.name!r} is not a law in N and D: it has no compute-optimal allocation "
                         "(fit 'chinchilla' or 'data_constrained', or use approach 1/2)")

    def compute_optimal(self, C, U=None) -> Allocation:
        """N_opt, D_opt, tokens per parameter and predicted loss at budget(s) C (closed form for Chinchilla).

        For the data-constrained law pass U (unique tokens); without U every token is taken to be unique.
        Intervals are filled from the bootstrap samples when there are any.
        """
        n, d = self._optimal_with(self.lse, C, U)
        inp = {"N": n, "D": d}
        if "U" in self.law.inputs:
            inp["U"] = d if U is None else U
        loss = self._predict_with(self.lse, inp)
        scalar = np.ndim(C) == 0
        alloc = Allocation(C=C, N_opt=float(n) if scalar else n, D_opt=float(d) if scalar else d,
                           tokens_per_param=float(d / n) if scalar else d / n,
                           loss=float(loss) if scalar else loss,
                           convention=f"C = {self.flops_per_param_token:g} N D")
        if self.samples is not None:
            ns, ds, ls = [], [], []
            for s in self._sample_dicts():
                n_s, d_s = self._optimal_with(s, C, U)
                inp_s = {"N": n_s, "D": d_s}
                if "U" in self.law.inputs:
                    inp_s["U"] = d_s if U is None else U
                ns.append(n_s)
                ds.append(d_s)
                ls.append(self._predict_with(s, inp_s))
            ns, ds, ls = (np.array(v, np.float64) for v in (ns, ds, ls))
            lv = self.level
            lo = (1 - lv) / 2
            for name, arr in (("N_opt", ns), ("D_opt", ds), ("tokens_per_param", ds / ns), ("loss", ls)):
                alloc.intervals[name] = (np.nanquantile(arr, lo, axis=0), np.nanquantile(arr, 1 - lo, axis=0))
            if scalar:
                alloc.intervals = {k: (float(v[0]), float(v[1])) for k, v in alloc.intervals.items()}
        return alloc

    # ---------------------------------------------------------------------------------------------- reporting
    def summary(self) -> str:
        lines = [f"{self.law.name} law: {self.law.formula}",
                 f"points: {self.n_points}, objective: {self.objective_label}, value {self.objective:.8g}, "
                 f"solver: {self.solver}",
                 f"starts converged: {self.n_converged}/{self.n_starts}"
                 + ("" if self.converged else "  (the best start did NOT converge)")]
        if self.law.convention:
            lines.append(f"convention: {self.law.convention}")
        if self.fixed:
            lines.append("fixed: " + ", ".join(f"{k}={v:g}" for k, v in self.fixed.items()))
        if self.ties:
            lines.append("tied: " + ", ".join(f"{k}={v}" for k, v in self.ties.items()))
        if self.bounds:
            lines.append("bounds: " + ", ".join(f"{k} in [{'-inf' if lo is None else f'{lo:g}'}, "
                                                f"{'inf' if hi is None else f'{hi:g}'}]"
                                                for k, (lo, hi) in self.bounds.items()))
        head = render.header(self.level, bool(self.intervals))
        rows = render.param_rows(self.params, self.intervals)
        rows += [r for r in render.param_rows(self.lse, self.intervals) if r[0] not in self.params]
        ex = self.exponents
        rows += render.param_rows({f"exponent {k}": v for k, v in ex.items()},
                                  {f"exponent {k}": self.intervals[f"exponent_{k}"] for k in ex
                                   if f"exponent_{k}" in self.intervals})
        lines.append(render.text_table(rows, head))
        if self.bootstrap_converged:
            lines.append(f"bootstrap: {self.bootstrap_converged[0]}/{self.bootstrap_converged[1]} resamples "
                         "converged (percentile intervals)")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning [{d.code}]: {d.message}" for d in self.diagnostics if d.severity == "warning"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        status_counts = {}
        if self.start_status is not None:
            codes, counts = np.unique(self.start_status, return_counts=True)
            status_counts = {STATUS.get(int(c), str(c)): int(n) for c, n in zip(codes, counts)}
        return render.jsonable({
            "law": self.law.name, "formula": self.law.formula, "approach": 3,
            "params": self.params, "lse_params": self.lse,
            "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
            "exponents": self.exponents, "objective": self.objective, "objective_name": self.objective_name,
            "delta": self.delta, "solver": self.solver, "ties": self.ties,
            "bounds": {k: list(v) for k, v in self.bounds.items()}, "seconds": self.seconds,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "n_points": self.n_points, "converged": {"n": self.n_converged, "total": self.n_starts,
                                                     "best_converged": self.converged,
                                                     "by_status": status_counts},
            "bootstrap": ({"converged": self.bootstrap_converged[0], "resamples": self.bootstrap_converged[1]}
                          if self.bootstrap_converged else None),
            "fixed": self.fixed, "notes": self.notes,
        })

    def _repr_html_(self) -> str:
        rows = render.param_rows(self.params, self.intervals)
        ex = self.exponents
        rows += render.param_rows({f"exponent {k}": v for k, v in ex.items()},
                                  {f"exponent {k}": self.intervals[f"exponent_{k}"] for k in ex
                                   if f"exponent_{k}" in self.intervals})
        head = render.header(self.level, bool(self.intervals))
        foot = (f"{self.objective_label} = {self.objective:.6g} over {self.n_points} points ({self.solver}); "
                f"{self.n_converged}/{self.n_starts} starts converged")
        warn = "".join(f"<p>&#9888; {html.escape(d.message)}</p>" for d in self.diagnostics
                       if d.severity == "warning")
        return render.html_table(f"{self.law.name}: {self.law.formula}", rows, head, foot) + warn
