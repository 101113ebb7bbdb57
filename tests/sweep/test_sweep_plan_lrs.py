"""Learning-rate grids in plans: one list, a list per model size, or a callable per (size, budget); lr_grid; clear
errors; unchanged keys for single-lr plans; and `sweep plan` showing what the grid costs."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from scalekit.cli.sweep import main as sweep_main
from scalekit.sweep.plan import (PlanError, describe, grid_plan, isoflop_plan, load_base, lr_grid, lr_grid_summary,
                                 run_key)

ROOT = Path(__file__).resolve().parents[2]
W32 = {"name": "w32", "d_model": 32, "n_layers": 1, "n_heads": 2}
KW = {"overrides": {"eval_every": 0}, "warmup_fraction": 0.1}


def test_lr_grid_is_geometric_and_centred() -> None:
    assert lr_grid(1e-3) == pytest.approx([2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3], rel=1e-12)
    assert lr_grid(1.0, factor=3.0, n=2) == pytest.approx([3 ** -0.5, 3 ** 0.5], rel=1e-12)
    assert lr_grid(2e-3, n=1) == [2e-3]
    g = lr_grid(5e-4, factor=1.5, n=7)
    assert g[3] == pytest.approx(5e-4) and all(b / a == pytest.approx(1.5) for a, b in zip(g, g[1:]))


@pytest.mark.parametrize("kw, message", [
    ({"center": 0.0}, "center"), ({"center": float("nan")}, "center"), ({"center": 1e-3, "factor": 1.0}, "factor"),
    ({"center": 1e-3, "n": 0}, "n=0"), ({"center": 1e-3, "n": 2.5}, "n=2.5"),
])
def test_lr_grid_rejects_bad_arguments(kw, message) -> None:
    with pytest.raises(PlanError, match=message):
        lr_grid(**kw)


def _by_hand_key(preset: str, model: dict, steps: int, lr: float | None, seed: int) -> str:
    """The run key of one run, its config built here field by field (not by expand)."""
    cfg, ladder = load_base("configs/train.py:tiny")
    cfg.eval_every = 0
    if isinstance(model, str):
        d, layers, heads = ladder[model]
        model = {"d_model": d, "n_layers": layers, "n_heads": heads}
    for k, v in model.items():
        if k != "name":
            cfg.model[k] = v
    if lr is not None:
        cfg.optimizer.lr = float(lr)
    cfg.seed = seed
    cfg.steps = steps
    cfg.optimizer.warmup_steps = round(0.1 * steps)
    return run_key(cfg.to_dict())


def test_single_lr_plans_keep_their_keys_and_names() -> None:
    runs = grid_plan("g", ["tiny", W32], steps=[20, 30], **KW).expand()
    assert [r.name for r in runs] == ["tiny_S20", "w32_S20", "tiny_S30", "w32_S30"]
    for r in runs:
        assert r.key == _by_hand_key("tiny", "tiny" if r.model == "tiny" else W32, r.steps, None, 0)
    one = grid_plan("g", ["tiny"], steps=[20], lrs=[2e-3], seeds=[0, 1], **KW).expand()
    assert [r.name for r in one] == ["tiny_S20_s0", "tiny_S20_s1"]
    assert [r.key for r in one] == [_by_hand_key("tiny", "tiny", 20, 2e-3, s) for s in (0, 1)]


def test_per_size_mapping_gives_each_model_its_grid() -> None:
    plan = grid_plan("g", ["tiny", W32], steps=[20], lrs={"tiny": [1e-3, 2e-3], "w32": (5e-3,)}, **KW)
    runs = plan.expand()
    assert [(r.model, r.lr) for r in runs] == [("tiny", 1e-3), ("tiny", 2e-3), ("w32", 5e-3)]
    assert [r.name for r in runs] == ["tiny_S20_lr0.001", "tiny_S20_lr0.002", "w32_S20"]
    assert [r.config["optimizer"]["lr"] for r in runs] == [1e-3, 2e-3, 5e-3]
    assert [r.key for r in runs] == [_by_hand_key("tiny", "tiny", 20, 1e-3, 0),
                                     _by_hand_key("tiny", "tiny", 20, 2e-3, 0), _by_hand_key("tiny", W32, 20, 5e-3, 0)]
    # the same runs as one list for the one model: a mapping changes no key
    same = grid_plan("g", ["tiny"], steps=[20], lrs=[1e-3, 2e-3], **KW).expand()
    assert [r.key for r in same] == [r.key for r in runs[:2]] and [r.name for r in same] == [r.name for r in runs[:2]]


def test_callable_grid_follows_size_and_budget() -> None:
    calls = []

    def lrs(name, fields, amount):
        calls.append((name, fields["d_model"], amount))
        centre = 1e-3 * (64 / fields["d_model"]) * (20480 / amount) ** 0.5
        return lr_grid(centre, factor=2.0, n=3)

    plan = grid_plan("g", ["tiny", W32], tokens=[20480, 40960], lrs=lrs, seeds=[0, 1], **KW)
    runs = plan.expand()
    assert calls == [("tiny", 64, 20480.0), ("w32", 32, 20480.0), ("tiny", 64, 40960.0), ("w32", 32, 40960.0)]
    assert len(runs) == 4 * 3 * 2
    w32_big = sorted({r.lr for r in runs if r.model == "w32" and r.tokens == 40960})
    centre = 1e-3 * 2 * (0.5 ** 0.5)
    assert w32_big == pytest.approx([centre / 2, centre, centre * 2], rel=1e-12)
    assert len({r.name for r in runs}) == len(runs) and all("_lr" in r.name and "_s" in r.name for r in runs)
    iso = isoflop_plan("i", ["tiny"], [1e10], min_steps=10, lrs=lambda n, f, c: [c * 3e-13, c * 6e-13], **KW)
    assert sorted(r.lr for r in iso.expand()) == pytest.approx([3e-3, 6e-3])


def test_names_stay_unique_when_three_digits_would_collide() -> None:
    runs = grid_plan("g", ["tiny"], steps=[20], lrs=[1e-3, 1.0001e-3], **KW).expand()
    assert len({r.name for r in runs}) == 2


@pytest.mark.parametrize("lrs, message", [
    ([], r"lrs: the learning-rate grid is empty; give a non-empty list"),
    ({"tiny": []}, r"lrs\['tiny'\]: the learning-rate grid is empty"),
    ([1e-3, -1e-3], r"lrs: learning rate -0.001 is not a positive finite number"),
    ([0.0], "not a positive finite number"),
    ([float("nan")], "not a positive finite number"),
    ({"tiny": [float("inf")]}, r"lrs\['tiny'\]: learning rate inf"),
    (["fast"], "'fast' is not a number"),
    ({"tiny": [1e-3], "huge": [1e-3]}, r"lrs names model\(s\) \['huge'\] that the plan lacks.*add the model"),
    ({"w32": [1e-3]}, r"no learning-rate grid for model\(s\) \['tiny'\]; add 'tiny'"),
    (lambda n, f, a: [], r"lrs\('tiny', \.\.\., 20\): the learning-rate grid is empty"),
    (lambda n, f, a: 1e-3, "is not a list of learning rates"),
    (lambda n, f, a: 1 / 0, r"lrs\('tiny', \.\.\., 20\) failed: ZeroDivisionError"),
])
def test_bad_grids_raise_plan_errors_naming_the_field(lrs, message: str) -> None:
    models = ["tiny", W32] if isinstance(lrs, dict) and "w32" in lrs else ["tiny"]
    with pytest.raises(PlanError, match=message):
        grid_plan("g", models, steps=[20], lrs=lrs, **KW).expand()


def test_describe_shows_the_grid_and_its_cost() -> None:
    runs = grid_plan("g", ["tiny", W32], steps=[20], lrs=lr_grid(1e-3), **KW).expand()
    text = describe(runs)
    assert "lr grid: 5 per size, 5.0x the FLOPs of one lr" in text
    assert "0.00025, 0.0005, 0.001, 0.002, 0.004" in text
    single = grid_plan("g", ["tiny", W32], steps=[20], **KW).expand()
    assert "lr grid" not in describe(single) and lr_grid_summary(single) is None

    mixed = grid_plan("g", ["tiny", W32], steps=[20], lrs={"tiny": [1e-3, 2e-3, 4e-3], "w32": [1e-3]}, **KW).expand()
    f_tiny = next(r.flops_plan for r in mixed if r.model == "tiny")
    f_w32 = next(r.flops_plan for r in mixed if r.model == "w32")
    s = lr_grid_summary(mixed)
    assert s["total"]["flops_ratio"] == pytest.approx((3 * f_tiny + f_w32) / (f_tiny + f_w32), rel=1e-12)
    assert [(m["model"], m["runs"]) for m in s["models"]] == [("tiny", 3), ("w32", 1)]
    assert f"lr grid: 1-3 per size and budget, {s['total']['flops_ratio']:.1f}x" in describe(mixed)


def test_sweep_plan_cli_prints_the_grid_cost(tmp_path: Path, capsys) -> None:
    path = tmp_path / "grid.py"
    path.write_text(textwrap.dedent("""
        from scalekit.sweep.plan import grid_plan, lr_grid
        PLAN = grid_plan("lrgrid", ["tiny", {"name": "w32", "d_model": 32, "n_layers": 1, "n_heads": 2}],
                         steps=[20], lrs={"tiny": lr_grid(1e-3, n=5), "w32": lr_grid(2e-3, n=5)}, seeds=[0, 1],
                         overrides={"eval_every": 0}, warmup_fraction=0.1)
        """))
    assert sweep_main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "20 runs" in out
    assert "lr grid: 5 per size, 5.0x the FLOPs of one lr" in out
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["w32"])
    assert "0.001, 0.002, 0.004, 0.008" in line and " 10 " in line and "5.0x" in line   # 5 lrs x 2 seeds
    assert not math.isnan(lr_grid_summary(load_runs(path))["total"]["time_ratio"])


def load_runs(path: Path):
    from scalekit.sweep.plan import load_plan

    return load_plan(str(path)).expand()
