"""The muP coordinate check (scalekit/analysis/coord_check.py, `scalekit mup-check`): the module walk reproduces the
model's forward exactly; under muP every layer group's activation size is flat in width after a few Adam steps,
under standard parametrization the hidden and output activations grow with width; the CLI writes its PNG and JSON
and refuses bad arguments with one-line messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scalekit.analysis.coord_check import (CoordCheck, coord_check, forward_with_activations, layer_names,
                                           width_config)
from scalekit.cli import main as cli_main
from scalekit.model.functional import apply, define, init_params

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "configs"))
from train import get_config  # noqa: E402

# Small and fast: one block, 2 sequences of 16 tokens, widths 64 and 256 (a 4x range: two points fit the slope as
# well as three at this cost, each width is one XLA compile of ~4 s). lr 3e-2 rather than the CLI's 1e-2: at these
# widths muP's logits start at 1/sqrt(m) of standard's (Table 3's readout initialisation: the 1/m output multiplier
# on a readout initialised sqrt(m) larger), and a larger rate lets the readout's width-independent updates outgrow
# that shrinking initial part within 5 steps.
WIDTHS, STEPS, LR = [64, 256], 5, 3e-2
OVERRIDES = {"model.n_layers": 1, "data.batch_size": 2, "data.seq_len": 16}


def small_config():
    cfg = get_config("tiny")  # n_heads 2: head_dim = width / 2
    for dotted, value in OVERRIDES.items():
        group, field = dotted.split(".")
        cfg[group][field] = value
    return cfg


@pytest.fixture(scope="module")
def checks() -> dict[str, CoordCheck]:
    cfg = small_config()
    return {p: coord_check(cfg, WIDTHS, parametrization=p, steps=STEPS, lr=LR) for p in ("standard", "mup")}


def test_the_walk_reproduces_apply_exactly():
    cfg = small_config()
    cfg.model.n_layers = 2
    mcfg = width_config(cfg, 128, "mup", 32, 64).model  # output multiplier 1/4, attention scale 1/head_dim
    params = init_params(mcfg, 0)
    model_def = define(mcfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)), jnp.int32)
    walk = jax.jit(lambda p, t: forward_with_activations(nnx.merge(model_def.graphdef, p), t))
    logits, acts = walk(params, tokens)
    reference = jax.jit(lambda p, t: apply(model_def, p, t))(params, tokens)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(reference))  # the same ops: bit for bit
    assert sorted(acts) == sorted(layer_names(2))  # (jit returns the dict with sorted keys)
    assert acts["block1.resid"].shape == (2, 16, 128) and acts["logits"].shape == (2, 16, 64)


def test_mup_is_flat_in_width_and_standard_grows(checks):
    std, mup = checks["standard"], checks["mup"]
    assert std.widths == mup.widths == WIDTHS and std.rms.shape == (len(layer_names(1)), 2, STEPS + 1)
    np.testing.assert_array_equal(std.rms[:, 0], mup.rms[:, 0])  # the base width: the same model, the same run
    # At initialisation only the logits differ: muP's start at 1/sqrt(m) of standard's (slope -1/2).
    assert abs(mup.group_slopes["logits"][0] + 0.5) < 0.1
    # Tolerance 0.3 in log-log slope: over the 4x width range an activation may change by at most 4^0.3 = 1.5x.
    # Finite-width effects (few gradient directions in a 32-token batch against 64..256 coordinates, attention
    # logits 1/head_dim that start more uniform at larger head_dim) move muP's slopes by up to ~0.2 here, while a
    # width-dependent update under standard parametrization moves them by ~1 per update-dominated layer (an Adam
    # step of size lr on every entry of a fan-in-n matrix moves its output ~ n lr).
    final = {p: {g: v[-1] for g, v in cc.group_slopes.items()} for p, cc in checks.items()}
    change = {p: {g: v[-1] for g, v in cc.group_delta_slopes.items()} for p, cc in checks.items()}
    for g in ("embedding", "attention out", "MLP out", "residual", "logits"):
        assert abs(final["mup"][g]) < 0.3, (g, final["mup"])
        assert abs(change["mup"][g]) < 0.3, (g, change["mup"])
    for g in ("attention out", "MLP out", "residual"):  # hidden: clearly growing under standard
        assert final["standard"][g] > 0.7 and change["standard"][g] > 0.7, (g, final["standard"])
    assert final["standard"]["logits"] > 0.3 and change["standard"]["logits"] > 0.3, final["standard"]
    assert final["standard"]["logits"] > final["mup"]["logits"] + 0.3
    assert abs(final["standard"]["embedding"]) < 0.1  # the input layer is the same under both
    assert np.all(np.isfinite(mup.losses)) and mup.losses.shape == (2, STEPS)
    again = CoordCheck.from_dict(json.loads(json.dumps(mup.to_dict())))
    assert again.group_slopes == mup.group_slopes and again.group_delta_slopes == mup.group_delta_slopes


def _cli(tmp_path, *extra, out=None):
    args = ["mup-check", "--config", str(REPO / "configs" / "train.py") + ":tiny",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), "--out", str(out or tmp_path / "coord"), *extra]
    return cli_main(args)


def test_cli_writes_the_plot_and_json_and_prints_slopes(tmp_path, capsys, checks):
    # the same settings as the fixture: the persistent compilation cache serves the compiles
    rc = _cli(tmp_path, "--widths", ",".join(map(str, WIDTHS)), "--steps", str(STEPS), "--lr", str(LR))
    out = capsys.readouterr().out
    assert rc == 0
    png = (tmp_path / "coord" / "coord_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    doc = json.loads((tmp_path / "coord" / "coord_check.json").read_text())
    assert set(doc["results"]) == {"standard", "mup"} and doc["widths"] == WIDTHS
    assert doc["results"]["mup"]["final_group_slopes"]["MLP out"] == pytest.approx(
        checks["mup"].group_slopes["MLP out"][-1], abs=1e-5)
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    for g in ("embedding", "attention out", "MLP out", "residual", "logits"):
        numbers = [float(x) for x in lines[g][len(g):].split()]
        assert len(numbers) == 4, lines[g]  # size and change, for standard and muP
    assert "standard" in out and "mup" in out


@pytest.mark.parametrize("extra, message", [
    (["--widths", "64,abc"], "--widths '64,abc': 'abc' is not a positive integer"),
    (["--widths", "64,-128"], "--widths '64,-128': -128 is not a positive integer"),
    (["--widths", "64"], "--widths '64': a slope needs at least 2 distinct widths"),
    (["--widths", "64,64"], "a slope needs at least 2 distinct widths"),
    (["--widths", "64,129"], "width 129 is not divisible by model.n_heads=2"),
    (["--widths", "64,130"], "width 130 gives head_dim 65, odd"),
    (["--steps", "0"], "--steps '0': must be a positive integer"),
    (["--steps", "two"], "--steps 'two': must be a positive integer"),
    (["--lr", "-1"], "--lr '-1': must be a positive finite number"),
    (["--lr", "nan"], "--lr 'nan': must be a positive finite number"),
    (["--seed", "x"], "--seed 'x': must be an integer"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    rc = _cli(tmp_path, *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("scalekit mup-check: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "coord").exists()


def test_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = _cli(tmp_path, "--widths", "64,128", out=blocker / "sub")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--out" in err and "is a file" in err, err


def test_cli_usage_lists_the_command(capsys):
    assert cli_main(["--help"]) == 0
    assert "mup-check" in capsys.readouterr().out
    assert cli_main(["mup-check", "--help"]) == 0
    assert "--widths" in capsys.readouterr().out
