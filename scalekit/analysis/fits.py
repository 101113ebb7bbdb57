"""Every fit a report needs, in one object: approaches 1, 2 and 3, the extrapolation check, the law comparison (every
form x objective x approach fitted below the top budget and ranked by its error there), how far the approaches
agree, the fitted E against the data's known floor, and the compute-optimal N and D at larger budgets.

    from scalekit.analysis import load_sweep, fit_sweep
    fits = fit_sweep(load_sweep("runs/demo"), bootstrap=200)
    fits            # in Jupyter: tables of parameters with intervals per approach
    print(fits.summary()); fits.to_dict()

A failing approach (too few budgets, no training curves) is recorded in `errors` with its reason; the others go on.
The allocation `recommendation()` prints comes from the comparison's winner, refitted on every run, when the
comparison ran.
Library warnings (a parabola opening downward, a vertex outside the sampled sizes, ...) are kept in `warnings`.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field

import numpy as np

from scalekit.analysis.lrsweep import SweepLrLaw, fit_sweep_lr_law
from scalekit.analysis.style import human
from scalekit.analysis.sweepdata import CONVENTIONS, SweepResults
from scalekit.laws import (AllocationFit, ExtrapolationReport, LawFit, ScalingLawWarning, extrapolation_check,
                           fit_envelope, fit_isoflop, fit_law)
from scalekit.laws.compare import LawComparison, compare_laws
from scalekit.laws.render import fmt, jsonable

MULTIPLES = (10.0, 100.0, 1000.0)
FLOOR_LABEL = "3, E = floor"


@dataclass(repr=False)
class SweepFits:
    """The fits of one sweep. `approaches` maps 1, 2, 3 to AllocationFit / AllocationFit / LawFit (when they ran)."""

    results: SweepResults
    approaches: dict[int, AllocationFit | LawFit] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)   # "1", "2", "3", FLOOR_LABEL, "extrapolation",
    #                                                          "compare", "lr_law" -> why
    extrapolation: ExtrapolationReport | None = None
    extrapolation_optimum: dict | None = None       # approach 2 below the threshold, N_opt at the held-out budget
    extrapolation_floor: ExtrapolationReport | None = None  # the same check with E pinned to the known floor
    law_floor: LawFit | None = None                 # approach 3 with E fixed to the known floor (when there is one)
    comparison: LawComparison | None = None         # every form x objective x approach, top budget held out
    targets: np.ndarray = field(default_factory=lambda: np.array([]))
    level: float = 0.95
    bootstrap: int = 0
    warnings: list[str] = field(default_factory=list)
    lr_law: SweepLrLaw | None = None                # learning-rate grids: per-cell optima and lr_opt(N) = c N^-k

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def law(self) -> LawFit | None:
        return self.approaches.get(3)  # type: ignore[return-value]

    @property
    def isoflop(self) -> AllocationFit | None:
        return self.approaches.get(2)  # type: ignore[return-value]

    @property
    def winner_fit(self) -> AllocationFit | LawFit | None:
        """The law comparison's winner refitted on every run (None when the comparison did not run)."""
        return self.comparison.winner_fit if self.comparison is not None else None

    def winner_allocations(self) -> list[dict]:
        """Compute-optimal N, D and loss at the target budgets under the comparison's winner (empty without one)."""
        f = self.winner_fit
        if f is None:
            return []
        if not len(self.targets):
            return []
        try:                            # one call over every target (numeric optima for laws without a closed form)
            al = f.compute_optimal(np.asarray(self.targets, np.float64)).to_dict()
        except ValueError:              # a law without an optimum in range at these budgets
            return []
        rows = []
        for i in range(len(self.targets)):
            d = {k: (v[i] if isinstance(v, list) else v) for k, v in al.items() if k != "intervals"}
            d["intervals"] = {k: [v[0][i], v[1][i]] for k, v in al["intervals"].items()}
            if d.get("loss") is None and 3 in self.approaches:
                d["loss_under_approach3"] = float(self.approaches[3].predict(N=d["N_opt"], D=d["D_opt"]))
            rows.append(d)
        return rows

    def models(self) -> dict[str, AllocationFit | LawFit]:
        """Every fitted model by label: '1', '2', '3' (the approaches) and '3, E = floor' (E fixed to the floor)."""
        out: dict[str, AllocationFit | LawFit] = {str(k): f for k, f in sorted(self.approaches.items())}
        if self.law_floor is not None:
            out[FLOOR_LABEL] = self.law_floor
        return out

    def exponent(self, approach: int | str) -> tuple[float, tuple[float, float] | None]:
        """(a, interval or None) with N_opt ~ C^a, for one approach (or FLOOR_LABEL)."""
        f = self.models()[str(approach)]
        a = f.exponents["a"]
        key = "exponent_a" if isinstance(f, LawFit) else "a"
        return a, (tuple(f.intervals[key]) if key in f.intervals else None)

    def agreement(self) -> dict:
        """Exponent a of each approach with its interval, and approach 2 against approach 3 (the two main ones)."""
        out: dict = {"exponent_a": {}, "level": self.level}
        for k in self.models():
            a, iv = self.exponent(k)
            out["exponent_a"][k] = {"a": a, "interval": list(iv) if iv else None}
        if 2 in self.approaches and 3 in self.approaches:
            a2, iv2 = self.exponent(2)
            a3, iv3 = self.exponent(3)
            out["a2_minus_a3"] = a2 - a3
            out["a2_in_a3_interval"] = bool(iv3 and iv3[0] <= a2 <= iv3[1]) if iv3 else None
            out["intervals_overlap"] = (bool(iv2[0] <= iv3[1] and iv3[0] <= iv2[1]) if iv2 and iv3 else None)
            big = float(self.targets[-1]) if len(self.targets) else None
            if big:
                n2 = self.approaches[2].compute_optimal(big).N_opt
                n3 = self.approaches[3].compute_optimal(big).N_opt
                out["n_opt_ratio_at_largest_target"] = {"C": big, "approach2_over_approach3": float(n2 / n3)}
            if out["intervals_overlap"] is None:
                verdict = f"a differs by {a2 - a3:+.3f} (no intervals: fit with bootstrap > 0 to judge)"
            elif out["a2_in_a3_interval"] or out["intervals_overlap"]:
                verdict = (f"agree: a = {a2:.3f} (approach 2) and {a3:.3f} (approach 3) differ by {a2 - a3:+.3f}, "
                           f"within their {int(self.level * 100)}% intervals")
            else:
                verdict = (f"disagree: a = {a2:.3f} (approach 2) and {a3:.3f} (approach 3) differ by "
                           f"{a2 - a3:+.3f}; their {int(self.level * 100)}% intervals do not overlap")
            out["verdict"] = verdict
        return out

    def floor_check(self) -> dict | None:
        """The fitted irreducible loss E (with its interval) against the data's known floor, when both exist."""
        law, floor = self.law, self.results.floor
        if law is None or floor is None:
            return None
        E = law.params["E"]
        iv = law.intervals.get("E")
        inside = bool(iv[0] <= floor <= iv[1]) if iv else None
        return {"E": E, "interval": list(iv) if iv else None, "floor": floor,
                "entropy_floor": self.results.entropy_floor, "sequence_floor": self.results.sequence_floor,
                "relative_difference": (E - floor) / floor, "floor_in_interval": inside,
                "verdict": (f"fitted E = {E:.4f}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")
                            + f" vs the known floor {floor:.4f} nats/token: {(E - floor) / floor:+.1%}"
                            + ("" if inside is None else (", the floor lies inside the interval" if inside
                                                          else ", the floor lies OUTSIDE the interval")))}

    def allocations(self) -> dict[str, list[dict]]:
        """Compute-optimal N, D (with intervals where bootstrapped) at the target budgets, per approach."""
        out = {}
        for k, f in self.models().items():
            rows = []
            for C in self.targets:
                a = f.compute_optimal(float(C))
                d = a.to_dict()
                if a.loss is None and 3 in self.approaches:
                    d["loss_under_approach3"] = float(self.approaches[3].predict(N=a.N_opt, D=a.D_opt))
                rows.append(d)
            out[k] = rows
        return out

    # ------------------------------------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """Everything as plain JSON-ready data (what `fits.json` holds)."""
        r = self.results
        return jsonable({
            "source": r.source, "conventions": list(CONVENTIONS),
            "runs": {"done": len(r), "total": r.n_total, "failed": r.n_failed},
            "data": {"description": r.data_description, "entropy_floor": r.entropy_floor,
                     "sequence_floor": r.sequence_floor},
            "level": self.level, "bootstrap": self.bootstrap,
            "approaches": {str(k): f.to_dict() for k, f in sorted(self.approaches.items())},
            "errors": dict(self.errors),
            "agreement": self.agreement(), "floor_check": self.floor_check(),
            "extrapolation": self.extrapolation.to_dict() if self.extrapolation else None,
            "extrapolation_optimum": self.extrapolation_optimum,
            "extrapolation_with_known_floor": (self.extrapolation_floor.to_dict() if self.extrapolation_floor
                                               else None),
            "targets": list(map(float, self.targets)),
            "approach3_known_floor": self.law_floor.to_dict() if self.law_floor is not None else None,
            "compute_optimal": self.allocations(),
            "comparison": self.comparison.to_dict() if self.comparison is not None else None,
            "compute_optimal_winner": ({"law": self.comparison.describe_winner(), "allocations":
                                        self.winner_allocations()} if self.winner_fit is not None else None),
            "lr_law": self.lr_law.to_dict() if self.lr_law is not None else None,
            "warnings": self.warnings, "notes": r.notes,
        })

    def summary(self, allocations: bool = True) -> str:
        """A plain-text account of the fits; `allocations=False` leaves out the per-approach allocation table."""
        lines = [f"{len(self.results)} runs fitted ({self.results.source or 'frame'})"]
        for k in (3, FLOOR_LABEL, 2, 1):
            if str(k) in self.models():
                a, iv = self.exponent(k)
                ivs = f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""
                lines.append(f"approach {k}: N_opt ~ C^a, a = {a:.3f}{ivs}; D_opt ~ C^b, b = "
                             f"{self.models()[str(k)].exponents['b']:.3f}")
            elif str(k) in self.errors:
                lines.append(f"approach {k}: not fitted ({self.errors[str(k)]})")
        ag = self.agreement()
        if "verdict" in ag:
            lines.append(f"approaches 2 vs 3: {ag['verdict']}")
        fc = self.floor_check()
        if fc:
            lines.append(fc["verdict"])
        if self.extrapolation is not None:
            lines.append(self.extrapolation.summary())
        if self.extrapolation_floor is not None:
            lines.append(f"  with E fixed to the known floor: mean |rel. error| "
                         f"{self.extrapolation_floor.mean_abs_rel_error:.3%}")
        if self.comparison is not None:
            c = self.comparison
            lines.append(f"law comparison ({len(c.rows)} form x objective x approach fits, top budget held out): "
                         f"winner {c.describe_winner()}")
        elif "compare" in self.errors:
            lines.append(f"law comparison: not run ({self.errors['compare']})")
        if self.lr_law is not None:
            lines.append(self.lr_law.summary())
        if allocations:
            lines.append(allocation_text(self))
        return "\n".join(lines)

    def recommendation(self) -> str:
        """What to train next: the compute-optimal model and token count at the target budgets, from the law
        comparison's winner (refitted on every run) when the comparison ran, else from the most trustworthy single
        fit (approach 3 with E fixed to a known floor, else approach 3, else approach 2)."""
        pct = int(round(self.level * 100))
        if self.winner_fit is not None and len(self.targets):
            c = self.comparison
            lines = [f"compute-optimal allocation (law-comparison winner, top budget held out: {c.describe_winner()}; "
                     f"refitted on all {len(self.results)} runs; {pct}% bootstrap intervals; C = 6 N D):"]
            lines += [self._allocation_line(d) for d in self.winner_allocations()]
            return "\n".join(lines)
        models = self.models()
        key = next((k for k in (FLOOR_LABEL, "3", "2") if k in models), None)
        if key is None or not len(self.targets):
            return "no fit to recommend from"
        lines = [f"compute-optimal allocation (approach {key}; {pct}% bootstrap intervals; C = 6 N D):"]
        lines += [self._allocation_line(d) for d in self.allocations()[key]]
        return "\n".join(lines)

    def _allocation_line(self, d: dict) -> str:
        iv = d["intervals"]
        n_iv = f" [{human(iv['N_opt'][0])}, {human(iv['N_opt'][1])}]" if "N_opt" in iv else ""
        d_iv = f" [{human(iv['D_opt'][0])}, {human(iv['D_opt'][1])}]" if "D_opt" in iv else ""
        loss = d.get("loss") if d.get("loss") is not None else d.get("loss_under_approach3")
        l_iv = f" [{iv['loss'][0]:.4f}, {iv['loss'][1]:.4f}]" if loss and "loss" in iv else ""
        return (f"  C = {d['C']:.0e} FLOPs ({d['C'] / self.targets[0] * 10:g}x the largest budget): "
                f"N = {human(d['N_opt'])} params{n_iv}, D = {human(d['D_opt'])} tokens{d_iv}, "
                f"{d['tokens_per_param']:.0f} tokens/param" + (f", loss {loss:.4f}{l_iv}" if loss else ""))

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        fitted = ", ".join(self.models()) or "none"
        return f"SweepFits({len(self.results)} runs from {self.results.source or 'a frame'!r}; fitted: {fitted})"

    def _repr_html_(self) -> str:
        parts = [f"<h4>{html.escape(str(len(self.results)))} runs from {html.escape(self.results.source or 'a frame')}"
                 "</h4>"]
        for k in (3, 2, 1):
            if k in self.approaches:
                parts.append(self.approaches[k]._repr_html_())
                if k == 3 and self.law_floor is not None:
                    parts.append(f"<p>with E fixed to the known floor {self.results.floor:.4f}:</p>"
                                 + self.law_floor._repr_html_())
            elif str(k) in self.errors:
                parts.append(f"<p>approach {k}: not fitted ({html.escape(self.errors[str(k)])})</p>")
        for text in (self.agreement().get("verdict"), (self.floor_check() or {}).get("verdict")):
            if text:
                parts.append(f"<p>{html.escape(text)}</p>")
        if self.extrapolation is not None:
            parts.append(self.extrapolation._repr_html_())
        if self.comparison is not None:
            parts.append(self.comparison._repr_html_())
        parts.append(f"<pre>{html.escape(allocation_text(self))}</pre>")
        return "\n".join(parts)


def allocation_text(fits: SweepFits) -> str:
    """The compute-optimal table as text: one line per approach and target budget."""
    lines = ["compute-optimal allocation (C = 6 N D):"]
    for k, rows in fits.allocations().items():
        for d in rows:
            iv = d["intervals"].get("N_opt")
            ivs = f" [{fmt(iv[0])}, {fmt(iv[1])}]" if iv else ""
            loss = d.get("loss") or d.get("loss_under_approach3")
            lines.append(f"  approach {k}  C={fmt(d['C'])}: N_opt={fmt(d['N_opt'])}{ivs}  D_opt={fmt(d['D_opt'])}  "
                         f"D/N={d['tokens_per_param']:.1f}" + (f"  loss={loss:.4f}" if loss else ""))
    return "\n".join(lines)


def holdout_split(results: SweepResults) -> tuple[float, np.ndarray] | None:
    """(threshold on C, mask of runs above it): the largest IsoFLOP budget is held out, or else the top quarter of C.
    None when fewer than 8 runs would remain to fit (a 5-parameter law needs more to say anything)."""
    C = results.C
    b = results.budgets
    if b is not None and len(np.unique(b)) >= 3:
        ub = np.unique(b)
        thr = float(np.sqrt(ub[-1] * ub[-2]))
        above = b > thr
    else:
        thr = float(np.quantile(C, 0.75))
        above = C > thr
    if (~above).sum() < 8 or not above.any():
        return None
    return thr, above


def _set_bootstrap(fit: AllocationFit, rows: list, n: int, level: float, how: str) -> None:
    """Store bootstrap rows (a, log k_N, b, log k_D) on an AllocationFit as samples and percentile intervals."""
    if not rows:
        return
    from scalekit.laws.render import percentile_interval

    S = np.array(rows)
    fit.samples, fit.level = S, level
    fit.intervals = {"a": percentile_interval(S[:, 0], level), "k_N": percentile_interval(np.exp(S[:, 1]), level),
                     "b": percentile_interval(S[:, 2], level), "k_D": percentile_interval(np.exp(S[:, 3]), level)}
    fit.notes.append(f"bootstrap: {len(rows)}/{n} resamples usable ({how})")


def _row(f: AllocationFit) -> tuple[float, float, float, float]:
    p = f.params
    return p["a"], float(np.log(p["k_N"])), p["b"], float(np.log(p["k_D"]))


def _isoflop(data, bootstrap: int, seed: int, level: float) -> AllocationFit:
    """Approach 2 with bootstrap intervals; falls back to resampling through `fit_isoflop` itself where the
    library's vectorised bootstrap meets a degenerate resample (fewer than 3 distinct sizes in a budget)."""
    try:
        return fit_isoflop(data, bootstrap=bootstrap, seed=seed, level=level)
    except np.linalg.LinAlgError:
        pass
    fit = fit_isoflop(data)
    rng = np.random.default_rng(seed)
    B = data["budget"] if data.has("budget") else None
    groups = [np.flatnonzero(B == u) for u in np.unique(B)] if B is not None else [np.arange(len(data))]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(bootstrap):
            idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
            try:
                rows.append(_row(fit_isoflop(data.subset(idx))))
            except (ValueError, np.linalg.LinAlgError):
                continue
    _set_bootstrap(fit, rows, bootstrap, level, "points resampled within each budget; degenerate resamples skipped")
    return fit


def fit_sweep(results: SweepResults, *, bootstrap: int = 200, level: float = 0.95, seed: int = 0,
              multiples: tuple[float, ...] = MULTIPLES, grid=None, extrapolate: bool = True, compare: bool = True,
              compare_kw: dict | None = None) -> SweepFits:
    """Fit approaches 3, 2 and 1, run the extrapolation check and the law comparison (`compare_laws` with the top
    budget held out; `compare_kw` overrides its arguments, e.g. {"objectives": ("huber_log",)}), and set the
    target budgets (multiples of the largest C in the sweep). `grid` (approach 3's starting grid) defaults to
    Chinchilla's 4,500 starts.

    A sweep with learning-rate grids is fitted on its best lr per (size, budget) cell (`results.frame`, see
    `results_from_frame`), and `lr_law` holds each cell's interpolated optimal lr and the law lr_opt(N) = c N^(-k)
    with t-based intervals at `level` (`scalekit.analysis.lrsweep.fit_sweep_lr_law`; None without grids)."""
    out = SweepFits(results, level=level, bootstrap=bootstrap)
    caught: list[str] = []

    def keep(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")

    data = results.data()
    with warnings.catch_warnings():
        warnings.simplefilter("always", ScalingLawWarning)
        warnings.showwarning = keep
        if results.floor is not None:
            try:
                out.law_floor = fit_law(data, "chinchilla", grid=grid, bootstrap=bootstrap, seed=seed, level=level,
                                        fixed={"e": float(np.log(results.floor))})
            except ValueError as err:
                out.errors[FLOOR_LABEL] = f"{type(err).__name__}: {err}"
        steps = [(3, lambda: fit_law(data, "chinchilla", grid=grid, bootstrap=bootstrap, seed=seed, level=level,
                                     floor=results.floor)),
                 (2, lambda: _isoflop(data, bootstrap, seed, level)),
                 (1, lambda: _envelope(results, bootstrap, seed, level))]
        for k, fn in steps:
            try:
                out.approaches[k] = fn()
            except (ValueError, np.linalg.LinAlgError) as err:
                out.errors[str(k)] = f"{type(err).__name__}: {err}"
        if 2 in out.approaches:        # approach 2's bias on this grid, simulated on approach 3's surface
            from scalekit.laws.diagnostics import attach_isoflop_diagnostics

            attach_isoflop_diagnostics(out.approaches[2], data, surface=out.approaches.get(3))
        split = holdout_split(results) if extrapolate else None
        if split is not None:
            thr, above = split
            try:
                out.extrapolation = extrapolation_check(data, "chinchilla", thr, grid=grid)
            except ValueError as err:
                out.errors["extrapolation"] = f"{type(err).__name__}: {err}"
            out.extrapolation_optimum = _optimum_check(results, above, out.isoflop)
            if results.floor is not None and out.extrapolation is not None:
                try:  # what knowing the floor buys: the same check with E fixed to it
                    out.extrapolation_floor = extrapolation_check(data, "chinchilla", thr, grid=grid,
                                                                  fixed={"e": float(np.log(results.floor))})
                except ValueError:
                    pass
        if compare:
            kw = {"holdout": "top", "bootstrap": bootstrap, "level": level, "seed": seed, "floor": results.floor,
                  "grid": grid, **(compare_kw or {})}
            try:
                out.comparison = compare_laws(data, **kw)
            except ValueError as err:
                out.errors["compare"] = f"{type(err).__name__}: {err}"
    out.warnings = list(dict.fromkeys(caught))
    out.lr_law = fit_sweep_lr_law(results, level=level)
    if out.lr_law is not None and out.lr_law.error:
        out.errors["lr_law"] = out.lr_law.error
    cmax = float(np.max(results.budgets if results.budgets is not None else results.C))
    out.targets = np.array([cmax * m for m in multiples])
    return out


def _envelope(results: SweepResults, bootstrap: int = 0, seed: int = 0, level: float = 0.95) -> AllocationFit:
    """Approach 1 on the training curves (final points when there are none), with intervals from resampling whole
    runs (each drawn run keeps its curve)."""
    cd = results.curve_data()
    data = cd if cd is not None else results.data()
    fit = fit_envelope(data)
    if bootstrap:
        run = data["run"] if data.has("run") else np.arange(len(data))
        ids = np.unique(run)
        members = [np.flatnonzero(run == r) for r in ids]
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(bootstrap):
            pick = rng.integers(0, len(ids), len(ids))
            idx = np.concatenate([members[j] for j in pick])
            new_run = np.concatenate([np.full(len(members[j]), i) for i, j in enumerate(pick)])
            sub = data.subset(idx)
            sub.columns["run"] = new_run
            try:
                rows.append(_row(fit_envelope(sub)))
            except (ValueError, np.linalg.LinAlgError):
                continue
        _set_bootstrap(fit, rows, bootstrap, level, "whole runs resampled")
    return fit


def _optimum_check(results: SweepResults, above: np.ndarray, full: AllocationFit | None) -> dict | None:
    """Approach 2 fitted on the budgets below the threshold: its N_opt at the held-out budget against that budget's
    own parabola vertex (from the fit on all budgets)."""
    b = results.budgets
    if full is None or b is None or not above.any():
        return None
    try:
        low = fit_isoflop(results.data(~above))
    except ValueError:
        return None
    held = float(np.unique(b[above])[-1])
    j = np.flatnonzero(np.isclose(full.budgets, held, rtol=1e-6))
    if not len(j):
        return None
    pred = float(low.predict(held)["N_opt"])
    obs = float(full.n_opt[j[0]])
    return {"budget": held, "n_budgets_fitted": int(len(low.budgets)), "predicted_N_opt": pred,
            "observed_N_opt": obs, "ratio": pred / obs, "a_below": low.params["a"]}
