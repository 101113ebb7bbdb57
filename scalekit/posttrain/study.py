"""Post-training and test-time studies as sweeps: stage specs, running them through the sweep driver, loading results.

A study is a set of stages (pre-train, SFT, GRPO; `scalekit.posttrain.stage`), each a sweep run keyed by the hash of
its config, so stages shared between studies run once and a re-run resumes. A stage that starts from another names it
by spec (`init_from=<spec name>`); `run_stages` runs the stages in dependency waves (everything a wave needs is done
in the one before), each wave through `scalekit.sweep.executors.run_local` with the stage runner as the command, and
results land in the sweep's results store (`<sweep_dir>/results.db`). Without `scalekit.sweep` the same stages run in
this process, one after another, and results go to `<sweep_dir>/results.jsonl`.

`load_results` returns one row per finished stage with its evaluation and compute chain flattened.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

STAGE_COMMAND = ("{python}", "-m", "scalekit.posttrain.stage", "--config", "{config}", "--workdir", "{workdir}")
REPO = Path(__file__).resolve().parents[2]
MODELS = {"t32": (32, 2, 2)}  # shapes beyond the configs/train.py LADDER: name -> (d_model, n_layers, n_heads)


@dataclass
class StageSpec:
    """One stage: a unique name, the run's config document (with `stage`/`rl`), and the stage it starts from."""

    name: str
    doc: dict[str, Any]
    parent: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _base_config(model: str) -> Any:
    sys.path.insert(0, str(REPO / "configs"))
    try:
        from train import LADDER, get_config  # noqa: PLC0415 - configs/ is not a package
    finally:
        sys.path.pop(0)
    if model in MODELS:
        cfg = get_config("tiny")
        cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = MODELS[model]
    elif model in LADDER:
        cfg = get_config(model)
    else:
        raise ValueError(f"unknown model {model!r}: one of {sorted(LADDER)} or {sorted(MODELS)}")
    return cfg


def stage_spec(name: str, model: str, task: str, difficulty: int, *, label: str, steps: int, lr: float,
               seq_len: int, batch_size: int = 32, parent: str | None = None, seed: int = 0, kind: str = "train",
               rl: dict[str, Any] | None = None, eval_problems: int = 128, eval_samples: int = 64,
               eval_temperature: float = 1.0) -> StageSpec:
    """A stage on `model` (a configs/train.py preset or a MODELS name); pre-training rows are packed (`task:lm`)."""
    cfg = _base_config(model)
    cfg.seed, cfg.steps, cfg.peak_flops, cfg.progress = seed, steps, 1e11, False
    cfg.eval_every, cfg.eval_batches, cfg.log_every = 0, 2, 10
    d = cfg.data
    d.source, d.task, d.difficulty = "task", f"{task}:lm" if label == "pretrain" else task, difficulty
    d.seq_len, d.batch_size = seq_len, batch_size
    cfg.optimizer.lr = lr
    cfg.optimizer.warmup_steps = min(int(cfg.optimizer.warmup_steps), max(steps // 10, 1))
    if kind == "grpo":
        cfg.optimizer.schedule, cfg.optimizer.warmup_steps = "constant", 0
    cfg.checkpoint.keep = 1
    doc = cfg.to_dict()
    doc["stage"] = {"kind": kind, "label": label, "eval_problems": eval_problems, "eval_samples": eval_samples,
                    "eval_temperature": eval_temperature}
    if rl is not None:
        doc["rl"] = dict(rl)
    fields = {"stage_label": label, "model": model, "stage_steps": steps, "parent": parent, "task": task,
              "difficulty": difficulty}
    return StageSpec(name, doc, parent, fields)


def _counts(doc: dict[str, Any]) -> dict[str, Any]:
    import ml_collections  # noqa: PLC0415

    from scalekit.config import resolve  # noqa: PLC0415
    from scalekit.data.tasks import VOCAB_SIZE  # noqa: PLC0415
    from scalekit.model.counting import count_params, flops_per_token  # noqa: PLC0415

    m = resolve(ml_collections.ConfigDict({k: v for k, v in doc.items() if k not in ("stage", "rl")}),
                VOCAB_SIZE).model
    tokens = doc["steps"] * doc["data"]["batch_size"] * doc["data"]["seq_len"]
    n = count_params(m, "total")
    return {"n_params": n, "n_params_nonembed": count_params(m, "non_embedding"), "tokens": tokens,
            "flops": flops_per_token(m, doc["data"]["seq_len"], "palm") * tokens, "flops_6n": 6.0 * n * tokens}


def _waves(specs: list[StageSpec]) -> list[list[StageSpec]]:
    by_name = {s.name: s for s in specs}
    depth: dict[str, int] = {}

    def level(s: StageSpec) -> int:
        if s.name not in depth:
            if s.parent is not None and s.parent not in by_name:
                raise ValueError(f"stage {s.name!r} starts from unknown stage {s.parent!r}")
            depth[s.name] = 0 if s.parent is None else level(by_name[s.parent]) + 1
        return depth[s.name]

    waves: list[list[StageSpec]] = [[] for _ in range(max((level(s) for s in specs), default=-1) + 1)]
    for s in specs:
        waves[level(s)].append(s)
    return waves


def run_stages(sweep_dir: str | Path, specs: list[StageSpec], parallel: int = 1,
               log: Callable[[str], None] = print, in_process: bool = False) -> dict[str, Path]:
    """Run every stage not already done, parents first; return {stage name: its run directory}.

    in_process=True skips the sweep driver (no subprocess per stage: what a notebook on tiny data wants).
    """
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if in_process:
        return _run_in_process(sweep_dir, specs, log)
    try:
        from scalekit.sweep import executors as ex  # noqa: PLC0415
        from scalekit.sweep.plan import run_key  # noqa: PLC0415
        from scalekit.sweep.store import open_store  # noqa: PLC0415
    except ImportError:
        return _run_in_process(sweep_dir, specs, log)
    dirs: dict[str, Path] = {}
    store = open_store(sweep_dir)
    for wave in _waves(specs):
        rows = []
        for s in wave:
            doc = json.loads(json.dumps(s.doc))
            doc["init_from"] = str(dirs[s.parent]) if s.parent else ""
            doc["observe"]["run_name"] = s.name
            key = run_key(doc)
            dirs[s.name] = ex.run_dir(sweep_dir, key)
            rows.append({"key": key, "name": s.name, "config": doc, "fields": {**s.fields, "spec": s.name},
                         **_counts(doc)})
        store.add_runs(rows)
        keys = [r["key"] for r in rows]
        opts = ex.WorkerOptions(command=STAGE_COMMAND, keys=keys, max_attempts=2)
        outcomes = ex.run_local(store, sweep_dir, opts, parallel=parallel, log=log)
        failed = [o for o in outcomes if o.status == "failed"]
        counts = store.counts(keys)
        if failed or counts["done"] != len(keys):
            detail = "\n".join(f"{o.name}: {o.error[-800:]}" for o in failed)
            raise RuntimeError(f"{len(keys) - counts['done']} of {len(keys)} stages not done in {sweep_dir}\n{detail}")
    return dirs


def _run_in_process(sweep_dir: Path, specs: list[StageSpec], log: Callable[[str], None]) -> dict[str, Path]:
    """The fallback without scalekit.sweep: run stages here, results as JSON lines in <sweep_dir>/results.jsonl."""
    import hashlib  # noqa: PLC0415

    from scalekit.posttrain.stage import run_stage  # noqa: PLC0415

    dirs: dict[str, Path] = {}
    path = sweep_dir / "results.jsonl"
    done = {json.loads(line)["key"] for line in path.read_text().splitlines()} if path.exists() else set()
    for wave in _waves(specs):
        for s in wave:
            doc = json.loads(json.dumps(s.doc))
            doc["init_from"] = str(dirs[s.parent]) if s.parent else ""
            key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
            dirs[s.name] = sweep_dir / "runs" / key[:12]
            if key in done:
                continue
            log(f"stage {s.name}")
            summary = run_stage(doc, dirs[s.name])
            with open(path, "a") as f:
                f.write(json.dumps({"key": key, "name": s.name, "status": "done", "fields": {**s.fields,
                                    "spec": s.name}, "summary": summary}) + "\n")
    return dirs


def select(df: pd.DataFrame, dirs: dict[str, Path]) -> pd.DataFrame:
    """The rows of `load_results` that are the stages `run_stages` just returned (a sweep may hold older variants
    of a stage under the same name)."""
    return df[df["run_dir"].isin({str(Path(d)) for d in dirs.values()})].reset_index(drop=True)


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per finished stage: name, spec fields, n_params, flops (own), chain FLOPs, evaluation results."""
    sweep_dir = Path(sweep_dir).resolve()
    if (sweep_dir / "results.db").exists():
        from scalekit.sweep.store import open_store  # noqa: PLC0415
        rows = [r for r in open_store(sweep_dir, create=False).rows() if r["status"] == "done"]
    elif (sweep_dir / "results.jsonl").exists():
        rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    else:
        raise FileNotFoundError(f"no study results in {sweep_dir}")
    records = []
    for r in rows:
        s = r.get("summary") or {}
        if "eval" not in s:
            continue
        ev, chain = s["eval"], s.get("chain_flops") or {}
        rec = {"name": r["name"], "key": r.get("key"), "run_dir": str(sweep_dir / "runs" / str(r.get("key"))[:12]),
               **(r.get("fields") or {}), "n_params": s.get("n_params"),
               "flops": s.get("flops"), "train_flops_total": s.get("train_flops_total"),
               "pretrain_flops": chain.get("pretrain", 0.0), "sft_flops": chain.get("sft", 0.0),
               "grpo_flops": chain.get("grpo", 0.0), "greedy_accuracy": ev.get("greedy_accuracy"),
               "sample_accuracy": ev.get("sample_accuracy"), "flops_per_sample": ev.get("flops_per_sample"),
               "greedy_flops_per_problem": ev.get("greedy_flops_per_problem"), "n": ev.get("n"),
               "correct_counts": ev.get("correct_counts"), "pass_at_k": ev.get("pass_at_k"),
               "majority_at_k": ev.get("majority_at_k"), "malformed": ev.get("malformed"),
               "tokens": s.get("tokens"), "final_loss": s.get("final_loss"), "eval_loss": s.get("eval_loss")}
        records.append(rec)
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class StudyPlan:
    """The stages of the CPU-sized studies (defaults: 20 runs, about 6 minutes on 2 busy cores with --parallel 2)."""

    task: str = "sort"
    difficulty: int = 5
    models: tuple[str, ...] = ("t32", "tiny", "xs")
    pretrain_steps: tuple[int, ...] = (60, 180)
    pretrain_lr: float = 3e-3
    pretrain_seq_len: int = 48
    sft_steps: int = 80  # SFT after every pre-training run
    sft_scaling_base: tuple[str, int] = ("tiny", 60)  # (model, pre-training steps) of the SFT-scaling study
    sft_scaling_steps: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 640)
    sft_lr: float = 1e-3
    grpo_bases: tuple[tuple[str, int], ...] = (("tiny", 180), ("xs", 180))
    grpo: tuple[tuple[str, Any], ...] = (("steps", 40), ("prompts_per_step", 32), ("group_size", 8),
                                         ("eval_every", 0), ("eval_samples", 8))
    grpo_lr: float = 1e-4
    eval_problems: int = 128
    eval_samples: int = 64

    def _sft_seq_len(self) -> int:
        from scalekit.data import tasks  # noqa: PLC0415
        return tasks.max_prompt_len(self.task, self.difficulty) + tasks.max_answer_len(self.task, self.difficulty) - 1

    def pretrain(self) -> list[StageSpec]:
        """Every model x pre-training budget, packed rows, evaluated with eval_samples samples per problem."""
        return [stage_spec(f"pre_{m}_{s}", m, self.task, self.difficulty, label="pretrain", steps=s,
                           lr=self.pretrain_lr, seq_len=self.pretrain_seq_len, eval_problems=self.eval_problems,
                           eval_samples=self.eval_samples) for m in self.models for s in self.pretrain_steps]

    def _sft(self, model: str, pre: int, steps: int) -> StageSpec:
        return stage_spec(f"sft_{model}_{pre}_{steps}", model, self.task, self.difficulty, label="sft", steps=steps,
                          lr=self.sft_lr, seq_len=self._sft_seq_len(), parent=f"pre_{model}_{pre}",
                          eval_problems=self.eval_problems, eval_samples=self.eval_samples)

    def sft(self) -> list[StageSpec]:
        """SFT for `sft_steps` after every pre-training run."""
        return [self._sft(m, s, self.sft_steps) for m in self.models for s in self.pretrain_steps]

    def sft_scaling(self) -> list[StageSpec]:
        """One base, SFT for each of sft_scaling_steps: accuracy against fine-tuning data and compute."""
        model, pre = self.sft_scaling_base
        return [self._sft(model, pre, s) for s in self.sft_scaling_steps]

    def grpo_stages(self) -> list[StageSpec]:
        """GRPO from the chosen pre-trained bases."""
        rl = dict(self.grpo)
        return [stage_spec(f"grpo_{m}_{pre}", m, self.task, self.difficulty, label="grpo", kind="grpo",
                           steps=int(rl["steps"]), lr=self.grpo_lr, seq_len=self._sft_seq_len(), rl=rl,
                           parent=f"pre_{m}_{pre}", eval_problems=self.eval_problems,
                           eval_samples=self.eval_samples) for m, pre in self.grpo_bases]

    def all(self) -> list[StageSpec]:
        """Every stage once (SFT runs shared between groups are deduplicated by name)."""
        out: dict[str, StageSpec] = {}
        for s in self.pretrain() + self.sft() + self.sft_scaling() + self.grpo_stages():
            out.setdefault(s.name, s)
        return list(out.values())

    @classmethod
    def quick(cls) -> "StudyPlan":
        """A miniature of the studies (about 8 short runs) for notebooks and smoke tests."""
        return cls(task="sort", difficulty=3, models=("t32", "tiny"), pretrain_steps=(30,), sft_steps=20,
                   sft_scaling_base=("t32", 30), sft_scaling_steps=(5, 10, 20), grpo_bases=(("tiny", 30),),
                   grpo=(("steps", 4), ("prompts_per_step", 8), ("group_size", 4), ("eval_every", 0),
                         ("eval_samples", 4), ("eval_problems", 16)),
                   eval_problems=32, eval_samples=16)
