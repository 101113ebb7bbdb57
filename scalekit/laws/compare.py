"""Which law to trust: fit every (form, objective, approach) on the cheaper runs, predict the held-out ones, rank.

    from scalekit.laws.compare import compare_laws
    cmp = compare_laws(data)                       # DataFrame, ScalingData or dict of columns N, D, C, loss[, budget]
    print(cmp.summary()); cmp.winner; cmp.winner_fit.compute_optimal(1e22)
    cmp                                            # in Jupyter: the ranked table and the winner's predictions

This is a loop over (form, objective, approach) around the library's own fitters (`fit_law`, `bootstrap_fit`,
`fit_isoflop`), not a fitter of its own.

Hold-out schemes (`holdout`):
- "top": train on every budget but the largest and predict the runs of the largest (budgets: the `budget` column
  when the data have one, else clusters of C from `group_budgets`); with `threshold`, train on C <= threshold and
  predict the rest.
- "lobo": leave one budget out, for every budget but the smallest (which would be an extrapolation downwards);
  the error is the mean over folds of each fold's mean |relative error|.
- "both": both; "top" ranks, the LOBO error is a column.

Errors are relative errors of the predicted loss, (predicted - observed) / observed, over the held-out runs.

Approach-3 rows (a law L(N, D) fitted to every training run) predict each held-out run's loss. Their PREDICTION
intervals (not only parameter intervals) come from `bootstrap` resamples of the training runs: for resample b and
a held-out point x, draws pred_b(x) * exp(r*), where r* is drawn with replacement from the fit's in-sample log
residuals, inflated by sqrt(n / (n - p)) (n training runs, p free parameters) because in-sample residuals
understate the scatter of new points. The interval at `level` is the pair of percentiles of the pooled draws
(about 4,000 per point); coverage is the fraction of held-out runs whose observed loss lies inside. It treats the
scatter about the law as independent of the point; a law that is wrong far from the training runs (bias) shows up
as low coverage, which is the point of reporting it.

Approach-2 rows (IsoFLOP parabolas, optimum "robust" and "parabola") do not predict single runs: they predict the
held-out budget's compute-optimal N (compared with that budget's own optimum, whose vertex depends on that
budget's runs alone) and, through a power law in C fitted to the training budgets' vertex losses
(law "kaplan_c": L_opt(C) = E + A / C^alpha), the held-out budget's best loss (compared with its own vertex loss).
They are ranked by that loss error alongside the approach-3 rows, with their metric marked ("L_opt", not "runs"),
and carry their own N_opt error column. The winner is the best row on the held-out runs themselves (metric
"runs"): an approach-2 row's error is on one number per budget, compared with an estimate (the budget's own
vertex), so it wins only when no law in N and D could be fitted. `winner_fit` is the winner refitted on every run,
with `bootstrap` resamples, for the allocation (`winner_fit.compute_optimal(C)`, with intervals).

A fit that fails (bad data for that form, too few points, no converged start) becomes a row with its error message,
ranked last; it never stops the comparison.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from scalekit.laws.data import ScalingData, as_data
from scalekit.laws.errors import InvalidDataError
from scalekit.laws.comparison import LawComparison
from scalekit.laws.forms import get_law
from scalekit.laws.intervals import predictive_interval
from scalekit.laws.isoflop import budgets_of
from scalekit.laws.objective import OBJECTIVES

DEFAULT_FORMS = ("chinchilla", "chinchilla_tied", "kaplan_nd", "gadre")
FLOOR_SUFFIX = " (E = floor)"    # a form fitted with its irreducible loss fixed to the known floor of the loss
APPROACH2_OPTIMA = ("robust", "parabola")
HOLDOUTS = ("top", "lobo", "both")
# the objective of the power law L_opt(C) that approach-2 rows fit to their training budgets' vertex losses
APPROACH2_LOSS_OBJECTIVE = "huber_log"


class FitFailed(RuntimeError):
    """A fit that ran but cannot be used (no converged start, no usable optimum at the held-out budget)."""


# ------------------------------------------------------------------------------------------------ splits


@dataclass
class Split:
    """One train/test split: boolean masks over the data's rows and the held-out budget(s)."""

    name: str
    train: np.ndarray
    test: np.ndarray
    budgets: tuple[float, ...]


def _splits(B: np.ndarray, C: np.ndarray, holdout: str, threshold: float | None) -> tuple[Split | None, list[Split]]:
    ub = np.unique(B)
    if len(ub) < 2:
        raise InvalidDataError(f"comparing laws needs runs at two or more compute budgets; the data have {len(ub)}")
    top = None
    if holdout in ("top", "both"):
        if threshold is not None:
            test = C > threshold
            if test.all() or not test.any():
                raise InvalidDataError(f"threshold {threshold:g} leaves {int((~test).sum())} runs to fit and "
                                       f"{int(test.sum())} to predict: both must be non-empty")
            top = Split(f"C > {threshold:.3g}", ~test, test, tuple(float(b) for b in np.unique(B[test])))
        else:
            test = B == ub[-1]
            top = Split(f"top budget {ub[-1]:.3g}", ~test, test, (float(ub[-1]),))
    folds = []
    if holdout in ("lobo", "both"):
        for b in ub[1:]:
            test = B == b
            folds.append(Split(f"budget {b:.3g}", ~test, test, (float(b),)))
    return top, folds


# ------------------------------------------------------------------------------------------------ one fit


def _quiet(fn):
    """Run fn(), collecting the library's warnings (returned as text) instead of printing them."""
    from scalekit.laws.errors import ScalingLawWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    msgs = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, ScalingLawWarning)]
    return out, msgs


def _n_free(fit) -> int:
    tied = set(dict(fit.law.ties)) | set(fit.ties)
    return max(len(fit.law.params) - len(fit.fixed or {}) - len(tied - set(fit.fixed or {})), 1)


def _log_residuals(fit, train: ScalingData) -> np.ndarray:
    """In-sample log residuals log y - log pred, inflated by sqrt(n / (n - p))."""
    pred = fit.predict({k: train[k] for k in fit.law.inputs})
    r = np.log(train.loss) - np.log(pred)
    n, p = len(r), _n_free(fit)
    return r * math.sqrt(n / (n - p)) if n > p else r


def _exponent_a(fit, c_ref: float) -> float | None:
    """N_opt ~ C^a: the law's own exponent when it has one, else the local slope of its numeric optimum."""
    a = (fit.exponents or {}).get("a")
    if a is not None:
        return float(a)
    try:
        al = fit.compute_optimal(np.array([c_ref, 100.0 * c_ref]))
        n = np.asarray(al.N_opt, np.float64)
        return float(np.log(n[1] / n[0]) / np.log(100.0))
    except Exception:       # a law without an allocation (no optimum in range): no exponent to show
        return None


def law_of(form: str) -> str:
    """The law name of a form label ("chinchilla (E = floor)" -> "chinchilla")."""
    return form[: -len(FLOOR_SUFFIX)] if form.endswith(FLOOR_SUFFIX) else form


def _default_forms(d: ScalingData, floor: float | None) -> tuple[str, ...]:
    """The default forms, the data-constrained law when the data have U, and, when the floor of the loss is known,
    every form with an irreducible term E fitted again with E fixed to it."""
    forms = DEFAULT_FORMS + (("data_constrained",) if d.has("U") else ())
    if floor is not None:
        forms += tuple(f + FLOOR_SUFFIX for f in forms if "e" in get_law(f).params)
    return forms


def _fit3(train: ScalingData, form: str, objective: str, fit_kw: dict):
    from scalekit.laws.fit import fit_law

    fit, msgs = _quiet(lambda: fit_law(train, law_of(form), objective=objective, **fit_kw))
    if not fit.converged:
        raise FitFailed(f"none of the {fit.n_starts} starts converged")
    return fit, msgs


def _grid_for(form: str, grid):
    """The caller's starting grid as it applies to `form`: a dict keeps the names that are the law's parameters,
    an array only a law with that many parameters; otherwise the law's own grid (None)."""
    if grid is None or isinstance(grid, str):
        return grid
    params = get_law(law_of(form)).params
    if isinstance(grid, Mapping):
        kept = {k: v for k, v in grid.items() if k in params}
        return kept or None
    g = np.atleast_2d(np.asarray(grid, np.float64))
    return g if g.shape[1] == len(params) else None


def _fit_kw(form: str, grid, floor) -> dict:
    kw: dict = {"floor": floor} if floor is not None else {}
    if form.endswith(FLOOR_SUFFIX):
        if floor is None:
            raise ValueError(f"form {form!r} fixes E to the floor of the loss: pass floor=")
        kw["fixed"] = {"e": float(np.log(floor))}
    g = _grid_for(form, grid)
    if g is not None:
        kw["grid"] = g
    elif form == "data_constrained":      # its default grid has 78,125 starts
        kw["grid"] = "coarse"
    return kw


# ------------------------------------------------------------------------------------------------ the loop


def _row(form: str, objective: str, approach: int, metric: str) -> dict:
    return {"rank": None, "form": form, "objective": objective, "approach": approach, "metric": metric,
            "heldout_mean_abs_rel_err": None, "heldout_max_abs_rel_err": None, "lobo_mean_abs_rel_err": None,
            "lobo_folds": {}, "coverage": None, "n_covered": None, "n_heldout": None, "a": None, "E": None,
            "n_opt_rel_err": None, "error": None, "warnings": [], "seconds": 0.0, "n_train": None,
            "heldout": None}


def _fail(row: dict, err: BaseException, where: str = "") -> None:
    if row["error"] is None:
        row["error"] = f"{where}{type(err).__name__}: {err}"


def _approach3(row, d, form, objective, top, folds, primary_is_top, fit_kw, bootstrap, level, seed, c_ref,
               store, tick):
    from scalekit.laws.fit import bootstrap_fit

    law = get_law(law_of(form))
    missing = [k for k in law.inputs if not d.has(k)]
    if missing:
        raise InvalidDataError(f"law {law.name!r} needs columns {law.inputs}; missing {missing}")

    def evaluate(split: Split, with_intervals: bool):
        train, test = d.subset(split.train), d.subset(split.test)
        fit, msgs = _fit3(train, form, objective, fit_kw)
        row["warnings"] += msgs
        pred = fit.predict({k: test[k] for k in law.inputs})
        rel = (pred - test.loss) / test.loss
        out = {"fit": fit, "rel": rel, "pred": pred, "obs": test.loss, "lo": None, "hi": None, "resid": None}
        if with_intervals and bootstrap:
            _, bmsgs = _quiet(lambda: bootstrap_fit(fit, train, bootstrap, seed=seed, level=level))
            row["warnings"] += bmsgs
            if fit.samples is not None and len(fit.samples):
                resid = _log_residuals(fit, train)
                lo, hi = predictive_interval(fit, {k: test[k] for k in law.inputs}, resid, level,
                                             np.random.default_rng(seed))
                out.update(lo=lo, hi=hi, resid=resid)
        return out

    primary = None
    if top is not None:
        try:
            primary = evaluate(top, True)
            row["n_train"] = int(top.train.sum())
            store[row["_id"]] = (primary["fit"], top.test, top.train, primary["resid"])
        finally:
            tick()
    fold_out = []
    for sp in folds:
        try:
            if row["error"] is None:
                fold_out.append((sp, evaluate(sp, not primary_is_top)))
        except Exception as err:
            _fail(row, err, f"LOBO fold {sp.name}: ")
        finally:
            tick()
    if fold_out:
        row["lobo_folds"] = {float(sp.budgets[0]): float(np.mean(np.abs(o["rel"]))) for sp, o in fold_out}
        if len(fold_out) == len(folds):
            row["lobo_mean_abs_rel_err"] = float(np.mean(list(row["lobo_folds"].values())))
    if not primary_is_top and fold_out:      # lobo only: the folds pooled are the held-out set
        sp_last, last = fold_out[-1]
        store[row["_id"]] = (last["fit"], sp_last.test, sp_last.train, last["resid"])
        primary = {k: np.concatenate([o[k] for _, o in fold_out]) if all(o[k] is not None for _, o in fold_out)
                   else None for k in ("rel", "pred", "obs", "lo", "hi")}
        primary["fit"] = last["fit"]
        row["n_train"] = int(sp_last.train.sum())
    if primary is None:
        return
    rel = primary["rel"]
    row["heldout_mean_abs_rel_err"] = float(np.mean(np.abs(rel)))
    row["heldout_max_abs_rel_err"] = float(np.max(np.abs(rel)))
    row["n_heldout"] = int(len(rel))
    if primary["lo"] is not None:
        inside = (primary["obs"] >= primary["lo"]) & (primary["obs"] <= primary["hi"])
        row["n_covered"] = int(inside.sum())
        row["coverage"] = float(inside.mean())
    fit = primary["fit"]
    row["a"] = _exponent_a(fit, c_ref)
    row["E"] = fit.params.get("E")
    row["heldout"] = {"observed": primary["obs"], "predicted": primary["pred"], "lower": primary["lo"],
                      "upper": primary["hi"]}


def _approach2(row, d, B, optimum, top, folds, primary_is_top, reference, store, tick):
    from scalekit.laws.fit import fit_law
    from scalekit.laws.isoflop import fit_isoflop

    def evaluate(split: Split):
        if len(split.budgets) != 1:
            raise FitFailed("approach 2 predicts one held-out budget at a time (use holdout='top' without a "
                            "threshold spanning several budgets)")
        b = split.budgets[0]
        iso, msgs = _quiet(lambda: fit_isoflop(d.subset(split.train), optimum=optimum))
        row["warnings"] += msgs
        ref_n, ref_l = reference(b)
        n_pred = float(iso.predict(b)["N_opt"])
        curve = ScalingData.from_arrays(C=np.asarray(iso.budgets, np.float64), loss=np.asarray(iso.loss_opt))
        law_c, msgs = _quiet(lambda: fit_law(curve, "kaplan_c", objective=APPROACH2_LOSS_OBJECTIVE))
        row["warnings"] += msgs
        l_pred = float(law_c.predict(C=b))
        return {"iso": iso, "law_c": law_c, "b": b, "n_rel": (n_pred - ref_n) / ref_n,
                "rel": (l_pred - ref_l) / ref_l, "pred": l_pred, "obs": ref_l, "n_pred": n_pred, "n_ref": ref_n}

    primary = None
    if top is not None:
        try:
            primary = evaluate(top)
            row["n_train"] = int(top.train.sum())
        finally:
            tick()
    fold_out = []
    for sp in folds:
        try:
            if row["error"] is None:
                fold_out.append((sp, evaluate(sp)))
        except Exception as err:
            _fail(row, err, f"LOBO fold {sp.name}: ")
        finally:
            tick()
    if fold_out:
        row["lobo_folds"] = {float(o["b"]): float(abs(o["rel"])) for _, o in fold_out}
        if len(fold_out) == len(folds):
            row["lobo_mean_abs_rel_err"] = float(np.mean(list(row["lobo_folds"].values())))
    if not primary_is_top and fold_out:
        primary = fold_out[-1][1]
        row["n_train"] = int(fold_out[-1][0].train.sum())
        rels = np.array([o["rel"] for _, o in fold_out])
        row["heldout_mean_abs_rel_err"] = float(np.mean(np.abs(rels)))
        row["heldout_max_abs_rel_err"] = float(np.max(np.abs(rels)))
        row["n_opt_rel_err"] = float(np.mean([o["n_rel"] for _, o in fold_out]))
        row["n_heldout"] = len(fold_out)
    elif primary is not None:
        row["heldout_mean_abs_rel_err"] = row["heldout_max_abs_rel_err"] = float(abs(primary["rel"]))
        row["n_opt_rel_err"] = float(primary["n_rel"])
        row["n_heldout"] = 1
    if primary is None:
        return
    row["a"] = float(primary["iso"].params["a"])
    row["E"] = primary["law_c"].params.get("E")
    row["heldout"] = {"budget": primary["b"], "observed": primary["obs"], "predicted": primary["pred"],
                      "N_opt_predicted": primary["n_pred"], "N_opt_observed": primary["n_ref"]}
    row["_observed"] = primary["obs"]
    store[row["_id"]] = (primary["iso"], primary["law_c"], (primary["b"],))


class _References:
    """Each budget's own optimum (N_opt, vertex loss) from approach 2 over all budgets, per optimum method: a
    budget's vertex depends on that budget's runs alone, so it is what a held-out budget's prediction is scored on."""

    def __init__(self, data: ScalingData):
        self.data = data
        self.fits: dict[str, object] = {}

    def __call__(self, optimum: str):
        def get(b: float):
            from scalekit.laws.isoflop import fit_isoflop

            if optimum not in self.fits:
                self.fits[optimum] = _quiet(lambda: fit_isoflop(self.data, optimum=optimum))[0]
            full = self.fits[optimum]
            j = np.flatnonzero(np.isclose(full.budgets, b, rtol=1e-6))
            if not len(j):
                raise FitFailed(f"the held-out budget {b:.3g} has no usable IsoFLOP optimum of its own "
                                "(too few runs, or its parabola opens downward)")
            return float(full.n_opt[j[0]]), float(full.loss_opt[j[0]])
        return get


def _evaluate(i, combo, d, B, top, folds, holdout, grid, floor, bootstrap, level, seed, c_ref, store,
              references, bar, n_splits) -> dict:
    """One (approach, form, objective) row of the comparison; a failure is recorded in the row, never raised."""
    approach, form, obj = combo
    t1 = time.time()
    if approach == 3:
        row = _row(form, obj, 3, "runs")
    else:
        row = _row(form, f"{APPROACH2_LOSS_OBJECTIVE} on L_opt(C)", 2, "L_opt")
        row["optimum"] = obj
    row["_id"] = i
    done_before = bar.n
    try:
        if approach == 3:
            _approach3(row, d, form, obj, top, folds, top is not None, _fit_kw(form, grid, floor), bootstrap,
                       level, seed, c_ref, store, bar.update)
        else:
            _approach2(row, d, B, obj, top, folds, top is not None, references(obj), store, bar.update)
    except Exception as err:        # a fit that fails is a row with its reason, ranked last
        _fail(row, err)
    bar.update(max(0, done_before + n_splits - bar.n))
    if row["error"] is None and row["heldout_mean_abs_rel_err"] is None:
        row["error"] = "no held-out prediction"
    if row["error"] is None and holdout == "lobo" and row["lobo_mean_abs_rel_err"] is None:
        row["error"] = "a LOBO fold failed"
    row["warnings"] = list(dict.fromkeys(row["warnings"]))
    row["seconds"] = time.time() - t1
    return row


def compare_laws(data, *, forms: Sequence[str] | None = None, objectives: Sequence[str] | None = None,
                 approaches: Sequence[int] = (3, 2), holdout: str = "top", threshold: float | None = None,
                 bootstrap: int = 100, level: float = 0.9, seed: int = 0, floor: float | None = None,
                 grid=None, optima: Sequence[str] = APPROACH2_OPTIMA, refit: bool = True,
                 progress: bool | None = None, columns=None) -> LawComparison:
    """Rank laws by how well they predict held-out runs (see the module docstring).

    forms: approach-3 law names (default chinchilla, chinchilla_tied, kaplan_nd, gadre; plus data_constrained
    when the data have U; and, when `floor` is given, each of those with an E again with E fixed to the floor,
    labelled "<law> (E = floor)"). objectives: fit objectives (default every one in scalekit.laws.OBJECTIVES).
    approaches: which of 3 (parametric laws) and 2 (IsoFLOP parabolas, `optima`) to run. holdout: "top", "lobo"
    or "both"; threshold: with "top", train on C <= threshold. bootstrap / level / seed: the prediction intervals
    of approach-3 rows and the winner's refit. floor: a known floor of the loss (e.g. a synthetic language's entropy): for the
    fits' diagnostics and the "E = floor" forms. grid: the
    starting grid of every approach-3 fit (default: each law's own). refit: refit the winner on all runs (with
    bootstrap) into `winner_fit`. progress: a tqdm bar (default: when stderr is a terminal).
    """
    t0 = time.time()
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    if threshold is not None and holdout == "lobo":
        raise ValueError("threshold applies to holdout='top' (or 'both'), not to 'lobo'")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    d = as_data(data, **(columns or {}))
    for col in ("N", "D", "C", "loss"):
        d[col]                                        # a named error when a column is missing
    B = budgets_of(d)
    top, folds = _splits(B, d["C"], holdout, threshold)
    forms = tuple(forms) if forms is not None else _default_forms(d, floor)
    objectives = tuple(objectives) if objectives is not None else OBJECTIVES
    approaches = tuple(int(a) for a in approaches)
    unknown = set(approaches) - {2, 3}
    if unknown:
        raise ValueError(f"approaches must be 3 (parametric laws) and/or 2 (IsoFLOP parabolas), got {sorted(unknown)}")
    c_ref = float(np.max(B))

    combos = ([(3, f, o) for f in forms for o in objectives] if 3 in approaches else []) + \
             ([(2, f"isoflop ({opt})", opt) for opt in optima] if 2 in approaches else [])
    n_splits = (1 if top is not None else 0) + len(folds)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=len(combos) * n_splits + (1 if refit else 0), desc="compare laws", disable=not show,
               file=sys.stderr, leave=False)

    references = _References(d)
    rows: list[dict] = []
    store: dict = {}
    for i, combo in enumerate(combos):
        rows.append(_evaluate(i, combo, d, B, top, folds, holdout, grid, floor, bootstrap, level, seed, c_ref,
                              store, references, bar, n_splits))

    score = "lobo_mean_abs_rel_err" if holdout == "lobo" else "heldout_mean_abs_rel_err"
    rows.sort(key=lambda r: (r["error"] is not None, r[score] if r[score] is not None else np.inf))
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    out = LawComparison(rows=rows, holdout=holdout, threshold=threshold,
                        heldout_budgets=top.budgets if top is not None else (), folds=[f.budgets[0] for f in folds],
                        level=level, bootstrap=bootstrap, n_points=len(d), data=d, _fits=store)
    w = out.winner
    if refit and w is not None:
        try:
            out.winner_fit = _refit(w, d, bootstrap, level, seed, grid, floor)
        except Exception as err:
            out.notes.append(f"refitting the winner on all runs failed: {type(err).__name__}: {err}")
        bar.update(1)
    bar.close()
    n_failed = sum(r["error"] is not None for r in rows)
    if n_failed:
        out.notes.append(f"{n_failed} of {len(rows)} fits failed (ranked last, with their reason)")
    out.seconds = time.time() - t0
    return out


def _refit(w: dict, d: ScalingData, bootstrap: int, level: float, seed: int, grid, floor):
    """The winner on every run, with bootstrap intervals (its diagnostics are warned about as usual)."""
    if w["approach"] == 2:
        from scalekit.laws.isoflop import fit_isoflop

        return fit_isoflop(d, optimum=w["optimum"], bootstrap=bootstrap, seed=seed, level=level)
    from scalekit.laws.fit import fit_law

    return fit_law(d, law_of(w["form"]), objective=w["objective"], bootstrap=bootstrap, seed=seed, level=level,
                   **_fit_kw(w["form"], grid, floor))


__all__ = ["DEFAULT_FORMS", "APPROACH2_OPTIMA", "FitFailed", "LawComparison", "Split", "budgets_of", "compare_laws",
           "predictive_interval"]
