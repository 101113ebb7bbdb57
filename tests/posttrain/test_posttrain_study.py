"""Study stages run through the sweep driver into its results store, chained by init_from, with compute chains."""

import json

import pytest

from scalekit.posttrain import analysis
from scalekit.posttrain.study import StudyPlan, load_results, run_stages, select, stage_spec


def test_stages_run_through_the_sweep_driver(tmp_path):
    store_mod = pytest.importorskip("scalekit.sweep.store")
    kw = dict(eval_problems=8, eval_samples=4)
    specs = [stage_spec("pre", "t32", "sort", 2, label="pretrain", steps=6, lr=3e-3, seq_len=24, **kw),
             stage_spec("sft", "t32", "sort", 2, label="sft", steps=4, lr=1e-3, seq_len=12, parent="pre", **kw)]
    logs = []
    dirs = run_stages(tmp_path, specs, log=logs.append)
    rows = {r["name"]: r for r in store_mod.open_store(tmp_path, create=False).rows()}
    assert {n: r["status"] for n, r in rows.items()} == {"pre": "done", "sft": "done"}
    assert rows["sft"]["config"]["init_from"] == str(dirs["pre"])
    assert rows["pre"]["config"]["data"]["task"] == "sort:lm" and rows["sft"]["config"]["data"]["task"] == "sort"
    pre, sft = rows["pre"]["summary"], rows["sft"]["summary"]
    assert sft["chain_flops"] == {"pretrain": pytest.approx(pre["flops"]), "sft": pytest.approx(sft["flops"])}
    assert len(sft["eval"]["correct_counts"]) == 8 and sft["eval"]["n"] == 4
    # running again does nothing: every stage is done
    logs.clear()
    assert run_stages(tmp_path, specs, log=logs.append) == dirs
    assert not [m for m in logs if " start " in m]
    df = select(load_results(tmp_path), dirs)
    assert sorted(df["name"]) == ["pre", "sft"]
    options = analysis.total_compute_options(df, queries=100)
    assert set(options["method"]) == {"greedy", "verifier best-of-k", "majority vote"}
    front = analysis.frontier(options)
    assert list(front["total_flops"]) == sorted(front["total_flops"])
    assert list(front["accuracy"]) == sorted(front["accuracy"])
    assert (dirs["sft"] / "summary.json").exists() and "eval" in json.loads((dirs["sft"] / "summary.json").read_text())


def test_study_plan_chains_every_stage_to_an_existing_parent():
    plan = StudyPlan()
    names = {s.name for s in plan.all()}
    assert all(s.parent in names for s in plan.all() if s.parent)
    assert len(plan.pretrain()) == len(plan.models) * len(plan.pretrain_steps)
    assert {s.doc["stage"]["label"] for s in plan.all()} == {"pretrain", "sft", "grpo"}
