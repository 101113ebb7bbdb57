"""Hostile command lines and files for every subcommand: each is refused with exit code 2 and one clear line.

Table-driven: each case is (subcommand, argv, words the message must contain). Every case asserts
  - the exit code is 2 (bad input; never 0, which would be a silent acceptance),
  - stderr has no traceback,
  - stderr is one line (or, for argparse's own errors, a short usage block and one `error:` line),
  - the message names the problem (the flag or config field).
They run in-process through `scalekit.cli.main` (the bad inputs are all refused before anything trains), except a
few that go through `python -m scalekit` to check the real entry point. Placeholders in argv: {d} is a scratch
directory holding the hostile files made by `hostile` below, {repo} the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = "{repo}/configs/train.py:tiny"
TRAIN = ["train", "--config", TINY, "--workdir", "{d}/w"]


def train(*overrides: str) -> list[str]:
    return TRAIN + list(overrides)


def train_with(config: str, *extra: str) -> list[str]:
    return ["train", "--config", config, "--workdir", "{d}/w", *extra]


RL_OK = ["--config.data.source=task", "--config.init_from={d}/empty"]  # with an empty dir as init_from


def rl(*extra: str, init_from: bool = True) -> list[str]:
    base = ["rl", "--config", TINY, "--workdir", "{d}/rlw", "--config.data.source=task"]
    return base + (["--config.init_from={d}/empty"] if init_from else []) + list(extra)


FIT = ["fit", "{d}/points.csv"]
LAUNCH_TAIL = ["--", "--config", TINY, "--workdir", "{d}/lw"]
PLAN_OK = "{repo}/experiments/sweep_tiny.py"

# (id, argv, words the error must contain, run as a subprocess)
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---------------------------------------------------------------- top level
    ("top-unknown-command", ["trian"], ["unknown command", "'train'"]),
    ("top-unknown-command-flag", ["--verbose"], ["unknown command", "--verbose"]),
    # ---------------------------------------------------------------- train: the config file
    ("train-config-syntax-error", train_with("{d}/syntax.py"), ["syntax error", "syntax.py", "line"]),
    ("train-get-config-raises", train_with("{d}/raises.py"), ["get_config", "RuntimeError", "boom"]),
    ("train-get-config-keyerror", train_with("{d}/raises_key.py:x"), ["get_config", "KeyError"]),
    ("train-config-import-error", train_with("{d}/import_error.py"), ["importing", "ModuleNotFoundError"]),
    ("train-config-no-get-config", train_with("{d}/no_get.py"), ["no get_config"]),
    ("train-config-returns-none", train_with("{d}/returns_none.py"), ["NoneType", "default_config"]),
    ("train-config-partial", train_with("{d}/partial.py"), ["without", "default_config"]),
    ("train-unknown-preset", train_with("{repo}/configs/train.py:huge"), ["unknown preset", "'huge'", "tiny"]),
    ("train-config-missing-file", train_with("{d}/nope.py"), ["does not exist", "nope.py"]),
    ("train-config-is-dir", train_with("{d}/empty"), ["is a directory"]),
    ("train-config-no-value", ["train", "--workdir", "{d}/w", "--config"], ["--config needs a value"]),
    ("train-no-config", ["train", "--workdir", "{d}/w"], ["missing --config"]),
    ("train-json-syntax", train_with("{d}/bad.json"), ["not valid JSON"]),
    ("train-json-list", train_with("{d}/list.json"), ["must be an object", "list"]),
    ("train-json-unknown-field", train_with("{d}/unknown.json"), ["unknown field", "nope"]),
    ("train-json-group-not-object", train_with("{d}/group.json"), ["optimizer", "object of fields"]),
    ("train-json-wrong-type", train_with("{d}/wrongtype.json"), ["steps", "expected an integer"]),
    ("train-json-lr-1e400", train_with("{d}/big.json"), ["optimizer.lr", "finite"]),
    ("train-json-lr-nan", train_with("{d}/nan.json"), ["optimizer.lr", "finite"]),
    ("train-json-prometheus-70000", train_with("{d}/port.json"), ["observe.prometheus_port", "65535"]),
    # ---------------------------------------------------------------- train: overrides
    ("train-unknown-field-did-you-mean", train("--config.optimizer.lrr=0.1"), ["optimizer.lrr", "did you mean 'lr'"]),
    ("train-unknown-group-did-you-mean", train("--config.optimiser.lr=0.1"),
     ["unknown field 'optimiser'", "did you mean 'optimizer'"]),
    ("train-unknown-top-field", train("--config.stpes=10"), ["stpes", "did you mean 'steps'"]),
    ("train-override-a-group", train("--config.optimizer=3"), ["--config.optimizer is a group", "lr"]),
    ("train-override-past-a-leaf", train("--config.steps.x=3"), ["steps.x", "unknown field 'x'"]),
    ("train-wrong-type-int", train("--config.steps=abc"), ["--config.steps", "expected an integer"]),
    ("train-wrong-type-fraction", train("--config.steps=1.5"), ["--config.steps", "expected an integer"]),
    ("train-wrong-type-bool", train("--config.progress=maybe"), ["--config.progress", "true or false"]),
    ("train-wrong-type-float", train("--config.optimizer.lr=fast"), ["--config.optimizer.lr", "expected a number"]),
    ("train-wrong-type-list", train("--config.optimizer.lr=[1]"), ["--config.optimizer.lr", "number"]),
    ("train-override-no-value", train("--config.steps"), ["--config.steps needs a value"]),
    ("train-lr-nan", train("--config.optimizer.lr=nan"), ["optimizer.lr", "finite"]),
    ("train-lr-inf", train("--config.optimizer.lr=inf"), ["optimizer.lr", "finite"]),
    ("train-lr-minus-inf", train("--config.optimizer.lr=-inf"), ["optimizer.lr", "finite"]),
    ("train-lr-1e999", train("--config.optimizer.lr=1e999"), ["optimizer.lr", "finite"]),
    ("train-lr-huge-int", train("--config.optimizer.lr=1" + "0" * 400), ["optimizer.lr", "finite"]),
    ("train-b2-nan", train("--config.optimizer.b2=NaN"), ["optimizer.b2", "finite"]),
    ("train-rope-inf", train("--config.model.rope_theta=Infinity"), ["model.rope_theta", "finite"]),
    ("train-steps-1e999", train("--config.steps=1e999"), ["--config.steps", "integer"]),
    ("train-eval-every-nan", train("--config.eval_every=nan"), ["eval_every", "finite"]),
    ("train-steps-zero", train("--config.steps=0"), ["steps=0", "> 0"]),
    ("train-steps-negative", train("--config.steps=-5"), ["steps=-5", "> 0"]),
    ("train-batch-zero", train("--config.data.batch_size=0"), ["data.batch_size=0", "> 0"]),
    ("train-batch-negative", train("--config.data.batch_size=-8"), ["data.batch_size=-8", "> 0"]),
    ("train-eval-every-negative", train("--config.eval_every=-1"), ["eval_every=-1", ">= 0"]),
    ("train-seq-len-zero", train("--config.data.seq_len=0"), ["data.seq_len=0"]),
    ("train-lr-zero", train("--config.optimizer.lr=0"), ["optimizer.lr=0.0", "> 0"]),
    ("train-lr-negative", train("--config.optimizer.lr=-1e-3"), ["optimizer.lr=-0.001", "> 0"]),
    ("train-warmup-exceeds-steps", train("--config.steps=10", "--config.optimizer.warmup_steps=20"),
     ["optimizer.warmup_steps=20", "steps=10"]),
    ("train-microbatches", train("--config.optimizer.microbatches=3"), ["data.batch_size", "optimizer.microbatches"]),
    ("train-heads-divide", train("--config.model.d_model=65"), ["model.d_model=65", "model.n_heads"]),
    ("train-schedule-choice", train("--config.optimizer.schedule=linear"), ["optimizer.schedule", "cosine"]),
    ("train-tokens-no-path", train("--config.data.source=tokens"), ["data.path"]),
    ("train-profile-steps", train("--config.profile_steps=abc"), ["profile_steps", "A:B"]),
    ("train-min-lr-ratio", train("--config.optimizer.min_lr_ratio=2"), ["optimizer.min_lr_ratio", "[0, 1]"]),
    ("train-prometheus-70000", train("--config.observe.prometheus_port=70000"), ["observe.prometheus_port", "65535"]),
    ("train-prometheus-negative", train("--config.observe.prometheus_port=-1"), ["observe.prometheus_port", ">= 0"]),
    ("train-mesh-zero", train("--config.mesh.data=0"), ["mesh.data=0"]),
    ("train-mesh-two-minus-one", train("--config.mesh.fsdp=-1"), ["only one of mesh.data"]),
    ("train-mesh-not-dividing", train("--config.mesh.data=3"), ["mesh", "8 devices"]),
    ("train-mesh-too-big", train("--config.mesh.data=1", "--config.mesh.tensor=16"), ["mesh", "16"]),
    ("train-mesh-fsdp-3", train("--config.mesh.fsdp=3"), ["mesh", "8 devices"]),
    # ---------------------------------------------------------------- train: the workdir and other flags
    ("train-workdir-is-file", ["train", "--config", TINY, "--workdir", "{d}/a_file"], ["--workdir", "is a file"]),
    ("train-workdir-under-file", ["train", "--config", TINY, "--workdir", "/etc/passwd/x"],
     ["--workdir", "/etc/passwd", "is a file"]),
    ("train-workdir-deep-under-file", ["train", "--config", TINY, "--workdir", "{d}/a_file/x/y"],
     ["--workdir", "a_file is a file"]),
    ("train-workdir-empty", ["train", "--config", TINY, "--workdir", ""], ["--workdir is empty"]),
    ("train-no-workdir", ["train", "--config", TINY], ["--workdir"]),
    ("train-unknown-flag", train("--bogus"), ["--bogus"]),
    # ---------------------------------------------------------------- report
    ("report-missing-dir", ["report", "{d}/no_such_sweep"], ["no sweep results", "no_such_sweep", "no such directory"]),
    ("report-a-file", ["report", "{d}/a_file"], ["a_file is a file", "sweep directory"]),
    ("report-not-a-sweep", ["report", "{d}/empty"], ["empty"]),
    ("report-out-under-file", ["report", "{d}/empty", "--out", "/etc/passwd/x"], ["--out", "/etc/passwd"]),
    ("report-out-is-file", ["report", "{d}/empty", "--out", "{d}/a_file"], ["--out", "is a file"]),
    ("report-bootstrap-negative", ["report", "{d}/empty", "--bootstrap", "-1"], ["--bootstrap", ">= 0"]),
    ("report-level-2", ["report", "{d}/empty", "--level", "2"], ["--level", "between 0 and 1"]),
    ("report-level-nan", ["report", "{d}/empty", "--level", "nan"], ["--level", "between 0 and 1"]),
    ("report-bootstrap-not-int", ["report", "{d}/empty", "--bootstrap", "abc"], ["--bootstrap", "invalid int"]),
    # ---------------------------------------------------------------- rl
    ("rl-missing-init-from", rl(init_from=False), ["init_from"]),
    ("rl-init-from-missing-dir", rl("--config.init_from={d}/no_such_run"), ["init_from", "does not exist"]),
    ("rl-init-from-not-checkpoint", rl(), ["init_from", "no checkpoint steps"]),
    ("rl-init-from-a-file", rl("--config.init_from={d}/a_file"), ["init_from", "not a directory"]),
    ("rl-not-a-task", ["rl", "--config", TINY, "--workdir", "{d}/rlw", "--config.init_from={d}/empty"],
     ["data.source=task"]),
    ("rl-steps-zero", rl("--config.rl.steps=0"), ["rl.steps=0"]),
    ("rl-unknown-setting", rl("--config.rl.stepz=3"), ["rl.stepz", "did you mean 'steps'"]),
    ("rl-temperature-nan", rl("--config.rl.temperature=nan"), ["rl.temperature", "finite"]),
    ("rl-lr-1e999", rl("--config.optimizer.lr=1e999"), ["optimizer.lr", "finite"]),
    ("rl-json-rl-not-object", ["rl", "--config", "{d}/rl_bad.json", "--workdir", "{d}/rlw"], ["'rl' must be"]),
    ("rl-json-bad-value", ["rl", "--config", "{d}/rl_value.json", "--workdir", "{d}/rlw"], ["rl.group_size"]),
    ("rl-json-missing", ["rl", "--config", "{d}/nope.json", "--workdir", "{d}/rlw"], ["nope.json", "does not exist"]),
    ("rl-workdir-is-file", ["rl", "--config", TINY, "--workdir", "{d}/a_file", *RL_OK], ["--workdir", "is a file"]),
    ("rl-no-workdir", ["rl", "--config", TINY, *RL_OK], ["--workdir"]),
    # ---------------------------------------------------------------- fit (its own checks; cases only)
    ("fit-delta-zero", FIT + ["--delta", "0"], ["--delta"]),
    ("fit-level-one", FIT + ["--level", "1"], ["--level"]),
    ("fit-at-zero", FIT + ["--at", "0"], ["--at"]),
    ("fit-bootstrap-negative", FIT + ["--bootstrap", "-1"], ["--bootstrap"]),
    ("fit-tie-garbage", FIT + ["--tie", "garbage"], ["--tie"]),
    ("fit-bound-garbage", FIT + ["--bound", "E=abc"], ["--bound"]),
    ("fit-bound-reversed", FIT + ["--bound", "E=2:1"], ["--bound"]),
    ("fit-fix-garbage", FIT + ["--fix", "alpha"], ["--fix"]),
    ("fit-fix-unknown-param", FIT + ["--fix", "zeta=1"], ["--fix", "zeta"]),
    ("fit-fix-nan", FIT + ["--fix", "alpha=nan"], ["--fix"]),
    ("fit-seed-negative", FIT + ["--seed", "-1"], ["--seed"]),
    ("fit-missing-data", ["fit", "{d}/no_such.csv"], ["no_such.csv"]),
    ("fit-unknown-law", FIT + ["--law", "moore"], ["--law"]),
    # ---------------------------------------------------------------- sweep (its own checks; cases only)
    ("sweep-missing-plan", ["sweep", "run", "{d}/no_plan.py", "--workdir", "{d}/sw"], ["no_plan.py"]),
    ("sweep-plan-syntax-error", ["sweep", "run", "{d}/syntax_plan.py", "--workdir", "{d}/sw"], ["syntax_plan.py"]),
    ("sweep-plan-raises", ["sweep", "plan", "{d}/raises_plan.py"], ["get_plan", "boom"]),
    ("sweep-plan-neither", ["sweep", "plan", "{d}/no_get.py"], ["neither get_plan() nor PLAN"]),
    ("sweep-workdir-is-file", ["sweep", "run", PLAN_OK, "--workdir", "{d}/a_file", "--dry-run"], ["a_file"]),
    ("sweep-status-missing", ["sweep", "status", "{d}/no_such_sweep"], ["no_such_sweep"]),
    # ---------------------------------------------------------------- launch (its own checks; cases only)
    ("launch-newline-name", ["launch", "slurm", "--nodes", "1", "--gpus-per-node", "1", "--name", "a\nb", "--dry-run",
                             *LAUNCH_TAIL],
     ["--name"]),
    ("launch-k8s-newline-name", ["launch", "k8s", "--nodes", "1", "--gpus-per-node", "1", "--name", "a\nb",
                                 "--dry-run", *LAUNCH_TAIL],
     ["--name"]),
    ("launch-nodes-zero", ["launch", "slurm", "--nodes", "0", "--gpus-per-node", "1", "--dry-run", *LAUNCH_TAIL],
     ["--nodes"]),
    # ---------------------------------------------------------------- preflight (its own checks; cases only)
    ("preflight-port-70000", ["preflight", "--prometheus-port", "70000"], ["--prometheus-port"]),
    ("preflight-port-negative", ["preflight", "--prometheus-port", "-1"], ["--prometheus-port"]),
    ("preflight-size-zero", ["preflight", "--size", "0"], ["--size"]),
    ("preflight-iters-zero", ["preflight", "--iters", "0"], ["--iters"]),
]

# the few that also go through the real entry point, `python -m scalekit`
SUBPROCESS = {"top-unknown-command", "train-config-syntax-error", "train-lr-1e999", "report-missing-dir",
              "rl-init-from-not-checkpoint", "fit-delta-zero"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """A scratch directory with the hostile files the cases point at."""
    d = tmp_path_factory.mktemp("hostile")
    files = {
        "syntax.py": "def get_config(:\n    return 1\n",
        "raises.py": "def get_config(arg=None):\n    raise RuntimeError('boom')\n",
        "raises_key.py": "def get_config(arg=None):\n    return {}[arg]\n",
        "import_error.py": "import scalekit_no_such_module_xyz\n",
        "no_get.py": "X = 1\n",
        "returns_none.py": "def get_config(arg=None):\n    return None\n",
        "partial.py": textwrap.dedent("""\
            import ml_collections
            def get_config(arg=None):
                return ml_collections.ConfigDict({"steps": 5})
            """),
        "bad.json": "{",
        "list.json": "[1, 2]",
        "unknown.json": json.dumps({"nope": 1}),
        "group.json": json.dumps({"optimizer": 3}),
        "wrongtype.json": json.dumps({"steps": "many"}),
        "big.json": '{"optimizer": {"lr": 1e400}}',
        "nan.json": '{"optimizer": {"lr": NaN}}',
        "port.json": json.dumps({"observe": {"prometheus_port": 70000}}),
        "rl_bad.json": json.dumps({"rl": 3}),
        "rl_value.json": json.dumps({"rl": {"group_size": "many"}}),
        "a_file": "not a directory\n",
        "points.csv": "N,D,loss\n" + "".join(f"{n},{20 * n},{2 + 400 / n ** 0.3 + 400 / (20 * n) ** 0.3}\n"
                                             for n in (1e6, 3e6, 1e7, 3e7, 1e8, 3e8)),
        "syntax_plan.py": "def get_plan(:\n",
        "raises_plan.py": "def get_plan(arg=None):\n    raise RuntimeError('boom')\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "empty").mkdir()
    return d


def _argv(template: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)).replace("{repo}", str(REPO)) for a in template]


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    from scalekit.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


def _run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "scalekit", *argv], capture_output=True, text=True, timeout=120,
                         env=env, cwd=REPO)
    return res.returncode, res.stdout, res.stderr


def _check(case_id: str, code: int, err: str, words: list[str]) -> None:
    assert code != 0, f"{case_id}: bad input accepted silently (exit 0); stderr: {err!r}"
    assert "Traceback" not in err, f"{case_id}: traceback on stderr:\n{err}"
    assert code == 2, f"{case_id}: exit {code}, expected 2; stderr: {err!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, f"{case_id}: exit 2 but nothing on stderr"
    if len(lines) > 1:  # argparse: a short usage block, then one `prog: error: ...` line
        assert lines[0].startswith("usage:") and "error:" in lines[-1] and len(lines) <= 12, \
            f"{case_id}: stderr is not one line:\n{err}"
        assert sum("error" in ln for ln in lines) == 1, f"{case_id}: more than one error line:\n{err}"
    message = lines[-1]
    assert "error" in message, f"{case_id}: the line does not say error: {message!r}"
    for word in words:
        assert word in message, f"{case_id}: message does not name {word!r}: {message!r}"


@pytest.mark.parametrize("case_id, template, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(case_id, template, words, hostile, capsys):
    code, _, err = _run_in_process(_argv(template, hostile), capsys)
    _check(case_id, code, err, words)


SUB_CASES = [c for c in CASES if c[0] in SUBPROCESS]


@pytest.mark.parametrize("case_id, template, words", SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_bad_input_subprocess(case_id, template, words, hostile):
    code, _, err = _run_subprocess(_argv(template, hostile))
    _check(case_id, code, err, words)


def test_nothing_written_for_a_refused_config(hostile, capsys):
    """A config refused at validation leaves no workdir behind (it is refused before the workdir is touched)."""
    workdir = hostile / "untouched"
    code, _, _ = _run_in_process(_argv(["train", "--config", TINY, "--workdir", str(workdir),
                                        "--config.optimizer.lr=1e999"], hostile), capsys)
    assert code == 2 and not workdir.exists()


def test_case_table_is_large_and_covers_every_command():
    assert len(CASES) >= 80
    assert len(SUB_CASES) <= 10
    commands = {argv[0] for _, argv, _ in CASES}
    assert {"train", "fit", "sweep", "report", "launch", "rl", "preflight"} <= commands
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
