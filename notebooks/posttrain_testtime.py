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
# # Post-training and test-time compute: where does the next FLOP do the most good?
#
# This notebook analyses a post-training / test-time study made by `experiments/testtime_coverage.py`,
# `experiments/posttrain_sft_scaling.py` and `experiments/testtime_total_compute.py` (one sweep directory, default
# `/tmp/scalekit_posttrain`). Set `SCALEKIT_POSTTRAIN_SWEEP` to that directory to analyse the full study; without
# it, the notebook runs a miniature of the study here (two tiny models, a few dozen steps each, in-process) so that
# it executes top to bottom in under a minute.
#
# Every number is in the trainer's units: FLOPs in the PaLM convention (matmuls + attention), training = 3 x
# forward; inference = the KV-cache decoder's forward FLOPs per generated token.

# %%
import os
import tempfile
from pathlib import Path

import jax
# A persistent compilation cache: the miniature study compiles the same few shapes in every stage.
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR")
                  or str(Path(tempfile.gettempdir()) / "scalekit-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import matplotlib.pyplot as plt
import pandas as pd

from scalekit.posttrain import analysis, plots
from scalekit.posttrain.study import StudyPlan, load_results, run_stages, select

full = os.environ.get("SCALEKIT_POSTTRAIN_SWEEP", "")
if full and (Path(full) / "results.db").exists():
    sweep_dir, plan = Path(full), StudyPlan()
    df = load_results(sweep_dir).drop_duplicates("name", keep="last").reset_index(drop=True)  # newest variant
else:
    sweep_dir, plan = Path(tempfile.mkdtemp(prefix="posttrain_nb_")), StudyPlan.quick()
    dirs = run_stages(sweep_dir, plan.all(), in_process=True, log=lambda msg: None)
    df = select(load_results(sweep_dir), dirs)
pd.set_option("display.width", 160)
df[["name", "stage_label", "model", "n_params", "train_flops_total", "greedy_accuracy", "sample_accuracy",
    "flops_per_sample"]]

# %% [markdown]
# ## 1. Test-time scaling: coverage against the number of samples
#
# For each run, pass@k (the unbiased estimator from n samples per problem) is the share of problems a verifier
# could solve by drawing k samples and keeping a correct one. Brown et al. (2024) found coverage(k) = exp(a k^b);
# b sets how fast extra samples pay off (closer to 0: slower).

# %%
fits = analysis.coverage_fits(df)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, label in zip(axes, ("pretrain", "sft")):
    plots.plot_coverage(fits[fits["stage_label"] == label], ax)
    ax.set_title(label)
fits[["name", "n_params", "pass@1", "a", "b", "unsolved"]]

# %% [markdown]
# ## 2. Post-training scaling: accuracy after SFT against fine-tuning data
#
# The same base fine-tuned for more and more steps on answer-masked rows. The held-out answer loss and the test
# error are fitted with y(X) = E + A / X^alpha in the number of fine-tuning examples X; accuracy is a thresholded
# measure (sigmoid in log X while the loss is high), so the error fit uses only the runs past the transition.

# %%
model, pre = plan.sft_scaling_base
table, fits = analysis.sft_scaling(df, f"pre_{model}_{pre}")
plots.plot_sft_scaling(table, fits)
for what, fit in fits.items():
    print(what, fit.params if fit is not None else "too few points to fit")
table

# %% [markdown]
# ## 3. Total compute: pre-training + post-training + inference
#
# Each run (a model with its training chain) combined with each inference strategy is one option; serving Q queries
# costs Q x k x (FLOPs per sample). The frontier is the most accurate option at each total budget, and the lines
# below say which mix it is and where its compute goes.

# %%
queries = 1e4
options = analysis.total_compute_options(df, queries=queries)
front = analysis.frontier(options)
plots.plot_total_compute(options, front, queries=queries)
print("\n".join(analysis.describe_frontier(front)))

# %% [markdown]
# How the answer moves with the number of queries served: a larger Q makes inference compute dearer, and the
# frontier shifts toward training (bigger or post-trained models, fewer samples).

# %%
rows = []
for q in (1e2, 1e4, 1e6):
    f = analysis.frontier(analysis.total_compute_options(df, queries=q))
    best = f.iloc[-1]
    rows.append({"queries": q, "best_accuracy": best["accuracy"], "choice": best["name"], "method": best["method"],
                 "k": best["k"], "inference_share": best["inference_share"],
                 "posttrain_share": best["posttrain_share"]})
pd.DataFrame(rows)

# %% [markdown]
# ## 4. A look at the samples
#
# The decoder samples completions with a KV cache; the verifier accepts only well-formed, exactly correct answers.

# %%
from scalekit.data import tasks  # noqa: E402
from scalekit.infer.evaluate import load_model, sample_problems, task_sampling  # noqa: E402

best_run = df.sort_values("greedy_accuracy").iloc[-1]
print(f"samples of {best_run['name']} (greedy accuracy {best_run['greedy_accuracy']:.2f})")
_, _, decoder, params = load_model(best_run["run_dir"])
probs = tasks.test_problems(plan.task, plan.difficulty, 4)
res = sample_problems(decoder, params, probs, 4, task_sampling(probs[0], 1.0), seed=0)
pd.DataFrame([{"prompt": p.prompt, "answer": p.answer,
               "samples": [tasks.decode(t).split("$")[0] for t in res.tokens[i]],
               "correct": res.correct[i].tolist()} for i, p in enumerate(probs)])
