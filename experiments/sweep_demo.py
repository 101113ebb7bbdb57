"""The demo's IsoFLOP plan: 5 compute budgets over two decades (1e10 to 1e12 FLOPs) x 6 model sizes each, 30 runs on
the synthetic language, a few minutes on 2 CPU cores.

The model window moves up with the budget (as in Chinchilla's IsoFLOP profiles): each budget trains the six sizes
of the ladder that bracket its expected optimum, so every parabola has points on both sides of its minimum and no
run is a 20,000-step tiny model. C = 6 N D; a model gets the whole steps of batch_size x seq_len tokens that spend C.

The data is the default synthetic source, a hierarchical order-2 Markov language, here with a 32-symbol alphabet:
its entropy floor (1.849 nats/token) is known exactly, so the report can compare the fitted irreducible loss E with
the truth. Small enough to approach its floor on a laptop, rich enough (1,024 contexts) that model size matters.

    scalekit sweep plan experiments/sweep_demo.py
    scalekit sweep run experiments/sweep_demo.py --workdir runs/demo --parallel 2
    scalekit report runs/demo
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scalekit.sweep.plan import Plan, RunSpec, expand, isoflop_plan

# name: model fields; all two layers of two heads (so every size can attend to both tokens of the order-2 context),
# widths 4 to 128 (d6 gets head_dim 4: rotary embeddings need an even head size). Total parameters with the
# 32-symbol vocabulary in comments.
MODELS: dict[str, dict[str, Any]] = {
    f"d{d}": {"name": f"d{d}", "d_model": d, "n_layers": 2, "n_heads": 2, **({"head_dim": 4} if d == 6 else {})}
    for d in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
}  # 1.7k, 3.1k, 4.1k, 6.6k, 9.3k, 15.5k, 35k, 58.6k, 111k, 228k, 388k
# compute budget C (FLOPs, 6ND) -> the six sizes trained at it: two decades of compute
WINDOWS: dict[float, tuple[str, ...]] = {
    1e10: ("d4", "d6", "d8", "d12", "d16", "d24"),
    3e10: ("d8", "d12", "d16", "d24", "d32", "d48"),
    1e11: ("d12", "d16", "d24", "d32", "d48", "d64"),
    3e11: ("d16", "d24", "d32", "d48", "d64", "d96"),
    1e12: ("d24", "d32", "d48", "d64", "d96", "d128"),
}
OVERRIDES: dict[str, Any] = {
    "data.source": "synthetic", "data.vocab_size": 32, "data.markov_order": 2, "data.concentration": 0.3,
    "optimizer.lr": 1e-2, "optimizer.warmup_steps": 20,   # fixed warmup: every run of a size shares one compile
    "eval_every": 100, "eval_batches": 16, "log_every": 50,
    "progress": False, "checkpoint.every": 0, "peak_flops": 1e11,   # skip the start-up matmul measurement
}


class ShiftedIsoFLOPPlan(Plan):
    """An IsoFLOP plan whose models change with the budget: `windows` maps each budget to its model names.

    (A plain subclass, not a dataclass: plan files are loaded without a sys.modules entry, which @dataclass needs.)
    """

    windows: dict[float, tuple[str, ...]] = {}
    catalogue: dict[str, dict[str, Any]] = {}

    def expand(self) -> list[RunSpec]:
        """The runs of every budget's own IsoFLOP plan, deduplicated by key, longest first (the largest budget's
        smallest model first): workers claim in this order, so the long runs start early and the short ones fill
        the end, and no worker idles while another finishes a long run."""
        runs: dict[str, RunSpec] = {}
        skipped: list[str] = []
        for budget, names in sorted(self.windows.items()):
            sub = Plan(name=self.name, kind="isoflop", models=[self.catalogue[n] for n in names], base=self.base,
                       overrides=self.overrides, lrs=self.lrs, seeds=self.seeds, budgets=[budget], flops=self.flops,
                       min_steps=self.min_steps, warmup_fraction=self.warmup_fraction, throughput=self.throughput,
                       overhead_s=self.overhead_s)
            if hasattr(self, "_origin"):
                sub._origin = self._origin  # type: ignore[attr-defined]
            for r in expand(sub):
                runs.setdefault(r.key, r)
            skipped += sub.skipped
        self.skipped = skipped
        return sorted(runs.values(), key=lambda r: (-r.budget, -r.steps))


def get_plan(arg: str | None = None) -> Plan:
    """The demo plan; `:quick` is a smoke run of 8 short runs (two budgets), for tests."""
    windows = dict(WINDOWS)
    if arg == "quick":  # two budgets x four sizes, none over 2,500 steps
        windows = {3e10: ("d8", "d12", "d16", "d24"), 1e11: ("d12", "d16", "d24", "d32")}
    elif arg not in (None, ""):
        raise ValueError(f"unknown demo plan variant {arg!r}; use experiments/sweep_demo.py or :quick")
    base = isoflop_plan("demo", [], sorted(windows), flops="6N", min_steps=50, base="configs/train.py:tiny",
                        overrides=OVERRIDES, throughput=2.5e10, overhead_s=2.0)
    plan = ShiftedIsoFLOPPlan(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Plan)})
    plan.windows, plan.catalogue = windows, MODELS
    return plan
