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
# # Which scaling law should you trust? Your own CSV through the law comparison
#
# Bring a CSV of training runs (one row per run: parameters, tokens, final loss, and the IsoFLOP budget when you
# have one) and this notebook
#
# 1. fits every law form (Chinchilla, Chinchilla with tied exponents, Kaplan's L(N, D), Gadre et al.'s
#    over-training form) with every fit objective, and approach 2's IsoFLOP optima, on all budgets but the largest;
# 2. ranks them by how well they predict the held-out largest budget, with prediction intervals and their coverage;
# 3. refits the winner on every run and reads its diagnostics (what the fit itself warns about);
# 4. gives the compute-optimal model size and token count at larger budgets, with bootstrap intervals.
#
# Input: `SCALEKIT_CSV` (your file) with `SCALEKIT_CSV_COLUMNS` (e.g. `N=params,D=tokens,loss=loss,budget=budget`;
# common names are found without it). Without it: one sweep of the Open-Athena IsoFLOP collection in
# `../shared/data` (Epoch AI's digitised Chinchilla IsoFLOP runs) when present, else a synthetic CSV written here.
# `SCALEKIT_NOTEBOOK_SMALL=1` (what the test suite sets) uses fewer objectives and resamples.

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from scalekit.laws import ScalingData, chinchilla_loss, chinchilla_optimal, load_table
from scalekit.laws.compare import compare_laws

REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").exists())
SMALL = os.environ.get("SCALEKIT_NOTEBOOK_SMALL") == "1"
BOOTSTRAP = 20 if SMALL else 200
OPEN_ATHENA = REPO.parent / "shared" / "data" / "open_athena_isoflops" / "isoflops.csv"
EXPERIMENT = "epochai_chinchilla__massivetext__chinchilla"


def synthetic_csv(path: Path, seed: int = 0) -> Path:
    """Runs on Chinchilla's published law with 0.3% noise: 5 budgets x 7 model sizes around each optimum."""
    truth = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    rng = np.random.default_rng(seed)
    rows = []
    for C in (1e18, 3e18, 1e19, 3e19, 1e20):
        n_opt, _ = chinchilla_optimal(C, truth["A"], truth["B"], truth["alpha"], truth["beta"])
        for s in np.geomspace(0.25, 4, 7):
            n = float(n_opt) * s
            d = C / (6 * n)
            rows.append({"params": n, "tokens": d, "budget": C,
                         "loss": float(chinchilla_loss(n, d, **truth)) * (1 + 0.003 * rng.standard_normal())})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


csv = os.environ.get("SCALEKIT_CSV")
columns = dict(kv.split("=", 1) for kv in os.environ.get("SCALEKIT_CSV_COLUMNS", "").split(",") if "=" in kv)
if csv:
    df = load_table(csv)
    source = csv
elif OPEN_ATHENA.exists():
    df = load_table(OPEN_ATHENA)
    df = df[(df["experiment"] == EXPERIMENT) & ~df["outlier"].astype(bool)]
    source = f"{OPEN_ATHENA.name}: {EXPERIMENT}, rows not flagged as outliers"
else:
    path = synthetic_csv(Path(tempfile.mkdtemp()) / "runs.csv")
    df = load_table(path)
    source = f"synthetic (Chinchilla's published law + 0.3% noise), written to {path}"
data = ScalingData.from_frame(df, columns or None)
print(f"{len(data)} runs from {source}")
print("\n".join(data.notes))
df.head()

# %% [markdown]
# ## The comparison
#
# Each row is one law form fitted with one objective (approach 3), or one way of finding IsoFLOP optima
# (approach 2). All of them see only the budgets below the largest; the ranking is by their mean |relative
# error| on the largest budget's runs. The prediction interval of a row combines the parameter uncertainty (the
# bootstrap refits) with the scatter of runs about the law (its in-sample residuals); "coverage" counts the
# held-out runs inside it. Approach 2 predicts the held-out budget's optimal loss (metric `L_opt`), not each run's:
# its rows are ranked alongside, and the winner is the best row on the runs themselves.

# %%
objectives = ("huber_log", "lsq_log") if SMALL else None        # None: every objective in scalekit.laws.OBJECTIVES
cmp = compare_laws(data, objectives=objectives, bootstrap=BOOTSTRAP, level=0.9)
print(cmp.summary())

# %%
cmp          # the table and the winner against the held-out runs

# %%
pd.DataFrame([{k: r[k] for k in ("rank", "form", "objective", "approach", "metric", "heldout_mean_abs_rel_err",
                                  "heldout_max_abs_rel_err", "coverage", "a", "E", "n_opt_rel_err", "error")}
              for r in cmp.rows])

# %% [markdown]
# ## The winner, refitted on every run: its diagnostics
#
# The winner's law is refitted on all runs with bootstrap intervals. The fit checks itself: too few points for its
# parameters, parameters not identified by the data, a parameter at its bound, E below a known floor, an
# implausible exponent, intervals too wide to use. Each is a warning with a fix; none means none was found.

# %%
fit = cmp.winner_fit
display(fit)  # noqa: F821
for d in getattr(fit, "diagnostics", None) or []:
    print(f"[{d.severity}] {d.code}: {d.message}")
if not getattr(fit, "diagnostics", None):
    print("no diagnostics raised")

# %% [markdown]
# ## What to train next
#
# The compute-optimal model size and token count at 10x, 100x and 1000x the largest budget in the data, with the
# winner's bootstrap intervals (C = 6 N D).

# %%
c_max = float(np.max(data["budget"] if data.has("budget") else data["C"]))
Cs = c_max * np.array([10.0, 100.0, 1000.0])
al = fit.compute_optimal(Cs)               # arrays over the budgets, intervals from the bootstrap refits
iv = al.intervals
rows = pd.DataFrame({"C": Cs, "N_opt": al.N_opt, "D_opt": al.D_opt, "tokens/param": al.tokens_per_param})
for name in ("N_opt", "D_opt", "loss"):
    if name in iv:
        rows[f"{name} low"], rows[f"{name} high"] = iv[name]
if al.loss is not None:
    rows["predicted loss"] = al.loss
print(f"{round(fit.level * 100)}% bootstrap intervals; {al.convention}")
rows

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
cmp.plot(ax=axes[0])
from scalekit.analysis import plots

plots.plot_comparison_errors(cmp, ax=axes[1]);
