"""Synthetic results with a known answer, for trying the analysis without training and for fast tests:

- `synthetic_sweep`: an IsoFLOP sweep whose losses follow a chosen Chinchilla law (plus noise), written into a real
  sweep store (`scalekit.sweep.store`) as ingested 'done' runs, with training curves, so `load_sweep`,
  `scalekit fit DIR` and `scalekit report DIR` read it exactly like a trained sweep.
- `synthetic_coverage`: per-problem sample counts (n, c) from problems whose solve rates follow a Beta distribution,
  for coverage curves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from scalekit.laws import chinchilla_loss, chinchilla_optimal

# Chinchilla's published fit (Hoffmann et al. 2022): the default truth of a synthetic sweep.
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DEFAULT_BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
DEFAULT_SPREAD = (0.25, 0.5, 1.0, 2.0, 4.0)   # model sizes as multiples of each budget's true N_opt


def synthetic_sweep(sweep_dir: str | Path, *, law: Mapping[str, float] | None = None,
                    budgets: Sequence[float] = DEFAULT_BUDGETS, spread: Sequence[float] = DEFAULT_SPREAD,
                    noise: float = 0.003, curve_points: int = 8, seed: int = 0,
                    entropy_floor: float | None = None) -> Path:
    """Write an IsoFLOP sweep with losses L(N, D) (x (1 + noise x standard normal)) into `sweep_dir`'s store.

    Each budget C trains the sizes spread x N_opt(C) under the true law, with D = C / 6N. Each run gets a training
    curve of `curve_points` eval points (the law at a fraction of its tokens). `entropy_floor` is stored with the runs
    (default: the law's E), as a trained sweep on the synthetic language stores its known floor. Returns the
    directory; writing the same sweep twice adds nothing (keys are content hashes).
    """
    from scalekit.sweep.store import open_store

    p = dict(CHINCHILLA_PUBLISHED if law is None else law)
    rng = np.random.default_rng(seed)
    floor = p["E"] if entropy_floor is None else entropy_floor
    rows = []
    for C in budgets:
        n_opt, _ = chinchilla_optimal(C, p["A"], p["B"], p["alpha"], p["beta"])
        for s in spread:
            N = float(n_opt) * s
            D = C / (6.0 * N)
            steps = max(int(round(D / 1024)), 10)
            loss = float(chinchilla_loss(N, D, **p)) * (1 + noise * rng.standard_normal())
            fr = np.linspace(1.0 / curve_points, 1.0, curve_points)
            curve_loss = chinchilla_loss(N, fr * D, **p) * (1 + noise * rng.standard_normal(curve_points))
            curve_loss[-1] = loss
            curve = [[int(round(f * steps)), float(v)] for f, v in zip(fr, curve_loss)]
            name = f"N{N:.3g}_C{C:.0e}".replace("+", "")
            key = hashlib.sha256(f"synthetic:{seed}:{name}:{p}:{noise}".encode()).hexdigest()
            rows.append({"key": key, "name": name, "n_params": int(round(N)), "n_params_nonembed": int(round(N)),
                         "tokens": int(round(D)), "flops": 6.0 * N * D, "flops_6n": 6.0 * round(N) * round(D),
                         "final_loss": loss, "eval_loss": loss, "eval_curve": curve, "wall_time_s": 0.0,
                         "host": "synthetic",
                         "fields": {"budget": float(C), "model": name, "steps": steps, "entropy_floor": floor,
                                    "synthetic_law": p, "noise": noise}})
    store = open_store(sweep_dir)
    store.add_done(rows, source=f"synthetic (law {p}, noise {noise:g}, seed {seed})")
    return Path(sweep_dir)


def synthetic_coverage(models: Mapping[str, tuple[float, float]] | None = None, *, n_problems: int = 128,
                       n_samples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per-problem results of repeated sampling: columns model, problem_idx, n_samples, n_correct.

    `models` maps a name to the (a, b) of the Beta distribution its per-problem solve rates are drawn from;
    heavy mass near 0 (small a) makes the coverage curve rise slowly over many decades of k, as on MATH.
    """
    models = models or {"small": (0.08, 3.0), "medium": (0.12, 2.0), "large": (0.2, 1.5)}
    rng = np.random.default_rng(seed)
    rows = []
    for name, (a, b) in models.items():
        p = rng.beta(a, b, size=n_problems)
        c = rng.binomial(n_samples, p)
        rows += [{"model": name, "problem_idx": i, "n_samples": n_samples, "n_correct": int(ci)}
                 for i, ci in enumerate(c)]
    return pd.DataFrame(rows)
