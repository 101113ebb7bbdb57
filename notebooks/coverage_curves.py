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
# # Test-time compute: coverage against the number of samples
#
# Repeated sampling: draw k answers per problem and count a problem solved if any is correct. Coverage(k) is the
# mean over problems of the unbiased pass@k (Chen et al. 2021), computed from n samples with c correct per problem.
# Brown et al. (2024) found coverage(k) = exp(a k^b), with a < 0 and b < 0, over four decades of k.
#
# Data: the Large Language Monkeys MATH results for 7 Pythia models (`../shared/data/llmonkeys_coverage`, when
# present), else synthetic problems whose solve rates follow a Beta distribution. A CSV of your own with columns
# model, n_samples, n_correct (one row per problem) works the same: set `SCALEKIT_COVERAGE_CSV`.

# %%
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scalekit.analysis import plots, synthetic_coverage
from scalekit.laws import coverage_curve, fit_coverage, log_spaced_ks

REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").exists())
SMALL = os.environ.get("SCALEKIT_NOTEBOOK_SMALL") == "1"
candidates = [os.environ.get("SCALEKIT_COVERAGE_CSV", ""),
              REPO.parent / "shared" / "data" / "llmonkeys_coverage" / "math_pythia_per_problem_n_c.csv"]
path = next((Path(p) for p in candidates if p and Path(p).exists()), None)
if path is not None:
    per_problem = pd.read_csv(path)
    source = str(path)
else:
    per_problem = synthetic_coverage(n_samples=1000)
    source = "synthetic problems (Beta-distributed solve rates)"
if SMALL:  # three models are enough to check the notebook runs
    keep = sorted(per_problem["model"].unique())[:3]
    per_problem = per_problem[per_problem["model"].isin(keep)]
print(f"{len(per_problem)} (model, problem) rows from {source}")
per_problem.groupby("model").agg(problems=("n_correct", "size"), samples=("n_samples", "min"),
                                 solved_at_least_once=("n_correct", lambda c: float((c > 0).mean())))

# %% [markdown]
# ## Coverage curves, and the law fitted to each

# %%
curves, fits = {}, {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # points with coverage 1 are dropped from the fit, with a warning
    for model, g in per_problem.groupby("model", sort=False):
        n, c = g["n_samples"].to_numpy(), g["n_correct"].to_numpy()
        ks = log_spaced_ks(int(n.min()), num=20 if SMALL else 37)
        cov = coverage_curve(n, c, ks)
        curves[model] = (ks, cov)
        fits[model] = fit_coverage(ks, cov, bootstrap=0 if SMALL else 200)
plots.plot_coverage(curves, fits);

# %%
plots.plot_coverage(curves, fits, log_y=True);

# %%
rows = []
for model, f in fits.items():
    row = {"model": model, "a": f.params["a"], "b": f.params["b"], "coverage@1": curves[model][1][0],
           f"coverage@{curves[model][0][-1]}": curves[model][1][-1]}
    if f.intervals:
        row["b interval"] = tuple(round(-x, 4) for x in f.intervals["neg_b"][::-1])
    rows.append(row)
pd.DataFrame(rows)

# %% [markdown]
# ## How many samples for a target coverage?
#
# Inverting the law: k = (log(coverage) / a)^(1/b). Beyond the sampled k this is an extrapolation; the fraction of
# problems never solved in n samples bounds how far it can be trusted.

# %%
target = 0.5
rows = []
for model, f in fits.items():
    a, b = f.params["a"], f.params["b"]
    k_needed = (np.log(target) / a) ** (1.0 / b)
    rows.append({"model": model, f"k for coverage {target}": k_needed,
                 "within sampled range": bool(k_needed <= curves[model][0][-1])})
pd.DataFrame(rows)
