# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # IsoFLOP analysis and extrapolation with uncertainty
#
# What to train next: from an IsoFLOP sweep, the compute-optimal model size and token count at budgets larger than
# any run, with bootstrap intervals, and a check of how much to trust them: fit only the cheaper budgets and see
# whether the law predicts the largest one.
#
# Input: a sweep directory (`SCALEKIT_SWEEP_DIR`, default `runs/demo`; a synthetic sweep when there is none).

# %%
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scalekit.analysis import fit_sweep, holdout_split, load_sweep, plots, synthetic_sweep
from scalekit.laws import extrapolation_check, fit_isoflop

REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").exists())
SMALL = os.environ.get("SCALEKIT_NOTEBOOK_SMALL") == "1"
BOOTSTRAP = 30 if SMALL else 1000
sweep_dir = Path(os.environ.get("SCALEKIT_SWEEP_DIR", REPO / "runs" / "demo"))
if not (sweep_dir / "results.db").exists():
    print(f"no sweep at {sweep_dir}: using a synthetic one (run `make demo` for a real one)")
    sweep_dir = synthetic_sweep(Path(tempfile.mkdtemp()) / "synthetic_sweep")
results = load_sweep(sweep_dir)
fits = fit_sweep(results, bootstrap=BOOTSTRAP)
budgets = sorted(set(map(float, results.budgets))) if results.budgets is not None else []
print(f"{len(results)} runs; IsoFLOP budgets: {', '.join(f'{b:.3g}' for b in budgets) or 'none'}")

# %% [markdown]
# ## The IsoFLOP profiles
#
# One parabola in log N per budget. A minimum at the edge of the sampled sizes is extrapolated: widen that budget's
# range of model sizes. The library warns about that, and about parabolas that open downward.

# %%
iso = fits.isoflop
plots.plot_isoflop(results, iso)
pd.DataFrame({"C": iso.budgets, "N_opt": iso.n_opt, "D_opt": iso.d_opt, "D/N": iso.d_opt / iso.n_opt,
              "loss at minimum": iso.loss_opt})

# %%
for w in fits.warnings:
    print(w)
iso

# %% [markdown]
# ## Compute-optimal N and D at larger budgets, with intervals
#
# The bootstrap resamples runs within each budget (approach 2) or across the whole sweep (approach 3) and refits.
# The band widens as the budget moves away from the sweep: at 1000x it is the exponent's uncertainty, amplified
# by three decades.

# %%
plots.plot_optimal_allocation(fits)
rows = []
for k in (2, 3):
    if k not in fits.approaches:
        continue
    for C in fits.targets:
        al = fits.approaches[k].compute_optimal(float(C))
        lo, hi = al.intervals.get("N_opt", (np.nan, np.nan))
        rows.append({"approach": k, "C": C, "N_opt": al.N_opt, "N_opt low": lo, "N_opt high": hi,
                     "interval width (x)": hi / lo, "D_opt": al.D_opt, "D/N": al.tokens_per_param})
pd.DataFrame(rows)

# %% [markdown]
# ## The extrapolation check
#
# Hold out the largest budget, fit on the rest, predict the held-out runs. The loss law (approach 3) predicts their
# losses; approach 2 predicts where their IsoFLOP minimum lies.

# %%
split = holdout_split(results)
if split is None:
    print("too few budgets to hold one out")
else:
    threshold, above = split
    report = fits.extrapolation
    print(report.summary())
    plots.plot_extrapolation(report, pinned=fits.extrapolation_floor, floor=results.floor)
    low = fit_isoflop(results.data(~above))
    held = float(np.unique(results.budgets[above])[-1]) if results.budgets is not None else None
    if held is not None:
        j = int(np.argmin(np.abs(np.log(iso.budgets / held))))
        print(f"approach 2 from the {len(low.budgets)} cheaper budgets: N_opt({held:.3g}) = "
              f"{low.predict(held)['N_opt']:.4g}; that budget's own parabola: {iso.n_opt[j]:.4g}")

# %% [markdown]
# ## How the prediction error grows with the distance extrapolated
#
# Fit on the smallest budgets only, then on more of them, and predict the largest budget each time; where the
# data's floor is known, also with E fixed to it.

# %%
if results.budgets is not None and len(np.unique(results.budgets)) >= 3:
    ub = np.unique(results.budgets)
    grid = {"alpha": (0.0, 0.5, 1.0), "beta": (0.0, 0.5, 1.0)} if SMALL else None
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n_fit in range(2, len(ub)):
            mask = results.budgets <= ub[n_fit - 1]
            rep = extrapolation_check(results.data(), "chinchilla", float(np.sqrt(ub[n_fit - 1] * ub[n_fit])),
                                      grid=grid)
            top = rep.x >= ub[-1] * 0.9
            pinned = np.nan
            if results.floor is not None:
                rf = extrapolation_check(results.data(), "chinchilla", float(np.sqrt(ub[n_fit - 1] * ub[n_fit])),
                                         grid=grid, fixed={"e": float(np.log(results.floor))})
                pinned = float(np.mean(np.abs(rf.rel_error[rf.x >= ub[-1] * 0.9])))
            rows.append({"budgets fitted": n_fit, "largest fitted C": ub[n_fit - 1],
                         "decades to the top budget": np.log10(ub[-1] / ub[n_fit - 1]),
                         "mean |rel. error| at the top budget": float(np.mean(np.abs(rep.rel_error[top]))),
                         "same, E fixed to the floor": pinned,
                         "fitted a": rep.fit.exponents["a"], "runs fitted": int(mask.sum())})
    display(pd.DataFrame(rows))  # noqa: F821

# %% [markdown]
# ## The known floor
#
# On the synthetic language the irreducible loss is known exactly; a fitted E far from it means the law's form (or
# the sweep's range) does not pin E down, and predictions far beyond the sweep inherit that error.

# %%
fc = fits.floor_check()
print(fc["verdict"] if fc else "no known floor for this data")
fig, ax = plt.subplots(figsize=(6.5, 4.3), layout="constrained")
plots.plot_loss_vs_compute(results, fits, ax=ax);
