"""The CPU demo sweep: a 7-run IsoFLOP study of tiny models that finishes in a minute or two on a laptop CPU.

Three models (37k, 115k and 345k parameters) at three compute budgets, C = 6ND; a model gets the steps of
batch_size x seq_len tokens that spend C, and combinations under 8 steps are skipped (xs at the two smaller budgets).

    scalekit sweep plan experiments/sweep_tiny.py
    scalekit sweep run experiments/sweep_tiny.py --workdir /tmp/sweep_tiny
    scalekit sweep status /tmp/sweep_tiny
    scalekit fit /tmp/sweep_tiny
"""

from scalekit.sweep.plan import Plan, isoflop_plan

MODELS = [
    {"name": "t32", "d_model": 32, "n_layers": 2, "n_heads": 2},  # ~37k parameters
    "tiny",  # (64, 2, 2) ~115k
    "xs",  # (96, 3, 3) ~345k
]
BUDGETS = [6e9, 1.2e10, 2.4e10]  # FLOPs, 6ND


def get_plan() -> Plan:
    """The demo IsoFLOP plan on the synthetic language (its entropy floor is known)."""
    return isoflop_plan(
        "tiny", MODELS, BUDGETS, flops="6N", min_steps=8,
        base="configs/train.py:tiny",
        overrides={
            # An easy synthetic language (16 symbols, order-2 chain with peaked rows, entropy floor ~0.67
            # nats/token) so that models this small learn visibly within a hundred steps.
            "data.vocab_size": 16, "data.concentration": 0.1, "optimizer.lr": 1e-2,
            "eval_every": 10, "eval_batches": 2, "log_every": 10, "progress": False, "checkpoint.every": 0,
        },
        warmup_fraction=0.1,
    )
