"""Kubernetes: the JobSet manifest is complete, and pods given its environment find each other and train.

No cluster here: the test plays the JobSet and Job controllers. It resolves each env entry of the manifest the way
the kubelet would (literal values; fieldRefs to the annotations JobSet puts on its pods), adds JOB_COMPLETION_INDEX
as the Job controller does, and runs the container's command as two local processes. Two substitutions, both
documented: SCALEKIT_HOST_ALIASES maps pod 0's headless-service hostname to 127.0.0.1 (what the cluster DNS would
answer; /etc/hosts is left alone), and SCALEKIT_COORDINATOR_PORT takes a free port instead of the fixed 8476.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalekit.launch import k8s
from scalekit.parallel.distributed import detect

TRAIN = ["--config", "configs/train.py:tiny", "--config.steps=3", "--config.optimizer.warmup_steps=1",
         "--config.peak_flops=1e12", "--config.progress=False", "--config.eval_every=0", "--config.eval_batches=1"]


def _launch(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "scalekit", "launch", "k8s", *args], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _pod_env(doc: dict, index: int) -> dict[str, str]:
    """The environment the kubelet would give pod `index` of job 0 of this JobSet."""
    name = doc["metadata"]["name"]
    rjob = doc["spec"]["replicatedJobs"][0]
    annotations = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                   "jobset.sigs.k8s.io/job-index": "0"}
    container = rjob["template"]["spec"]["template"]["spec"]["containers"][0]
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path == "spec.nodeName":  # what the kubelet fills in: the node's name
                env[item["name"]] = f"node-{index}"
                continue
            key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path).group(1)
            env[item["name"]] = annotations[key]
    return env


def test_manifest_is_complete_and_well_formed() -> None:
    text = _launch("--name", "llm-run", "--nodes", "4", "--gpus-per-node", "8", "--image", "ghcr.io/acme/sk:1",
                   "--queue", "team-a", "--preset", "h100", "--pvc", "runs:/mnt/runs", "--memory", "900Gi",
                   "--dry-run", "--", *TRAIN, "--workdir", "/mnt/runs/llm")
    assert text.startswith("# Written by `scalekit launch k8s`")
    doc = yaml.safe_load(text)
    assert (doc["apiVersion"], doc["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert doc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    spec = doc["spec"]
    assert spec["network"] == {"enableDNSHostnames": True, "subdomain": "llm-run", "publishNotReadyAddresses": True}
    assert spec["failurePolicy"]["maxRestarts"] >= 1
    (rjob,) = spec["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert (job["completionMode"], job["parallelism"], job["completions"], job["backoffLimit"]) == ("Indexed", 4, 4, 0)
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/acme/sk:1" and c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert c["resources"]["requests"] == {"memory": "900Gi"}
    assert c["command"][:4] == ["python", "-m", "scalekit", "train"] and "--workdir" in c["command"]
    assert "--config.distributed.mode=per_node" in c["command"]
    assert {"name": "coordinator", "containerPort": 8476} in c["ports"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/dev/shm", "/mnt/runs"}
    assert {"name": "workdir", "persistentVolumeClaim": {"claimName": "runs"}} in pod["volumes"]
    names = {e["name"] for e in c["env"]}
    assert {"JOBSET_NAME", "REPLICATED_JOB_NAME", "JOB_INDEX", "SCALEKIT_K8S_PARALLELISM", "SCALEKIT_K8S_SUBDOMAIN",
            "SCALEKIT_COORDINATOR_PORT", "XLA_FLAGS", "NCCL_SOCKET_IFNAME"} <= names
    # Every pod, given that environment, computes its own process id and the same coordinator.
    specs = [detect({}, _pod_env(doc, i)) for i in range(4)]
    assert [s.process_id for s in specs] == [0, 1, 2, 3] and {s.num_processes for s in specs} == {4}
    assert {s.coordinator_address for s in specs} == {"llm-run-workers-0-0.llm-run:8476"}
    assert {s.source for s in specs} == {"k8s"}


def test_per_gpu_mode_and_invalid_names() -> None:
    doc = yaml.safe_load(_launch("--nodes", "2", "--gpus-per-node", "4", "--mode", "per_gpu", "--dry-run", "--",
                                 *TRAIN, "--workdir", "/w"))
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == 8
    assert job["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "kueue.x-k8s.io/queue-name" not in doc["metadata"]["labels"]
    for bad, why in (("Bad_Name", "DNS label"), ("x" * 60, "too long")):
        with pytest.raises(ValueError, match=why):
            k8s.manifest(k8s.K8sJob(name=bad), TRAIN)
    with pytest.raises(ValueError, match="per_gpu mode needs"):
        k8s.manifest(k8s.K8sJob(mode="per_gpu", gpus_per_node=0), TRAIN)


def test_two_pods_initialise_from_the_jobset_env_and_train(group, clean_env, free_port, tmp_path) -> None:
    manifest = tmp_path / "jobset.yaml"
    _launch("--name", "sk-test", "--nodes", "2", "--gpus-per-node", "0", "--out", str(manifest), "--",
            *TRAIN, "--workdir", str(tmp_path / "run"))
    doc = yaml.safe_load(manifest.read_text())
    command = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    command = [sys.executable if a == "python" else a for a in command]
    coordinator_host = "sk-test-workers-0-0.sk-test"
    overrides = {"SCALEKIT_HOST_ALIASES": f"{coordinator_host}=127.0.0.1", "SCALEKIT_COORDINATOR_PORT": str(free_port)}
    envs = [clean_env(4, **{**_pod_env(doc, i), **overrides}) for i in range(2)]
    results = group.run(command, envs, timeout=150)
    for i, (rc, out) in enumerate(results):
        assert rc == 0, out[-3000:]
        assert f"process {i} of 2 (source k8s, coordinator {coordinator_host}:{free_port}" in out, out[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["steps"] == 3


def test_deploy_example_is_what_the_launcher_writes() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "example-2x8-h100.yaml"
    job = k8s.K8sJob(name="llm-2x8", nodes=2, gpus_per_node=8, image="ghcr.io/your-org/scalekit:latest",
                     queue="default", preset="h100", pvc="scalekit-runs:/runs", preflight=True)
    assert example.read_text() == k8s.render_manifest(job, ["--config", "configs/train.py:125m",
                                                            "--workdir", "/runs/llm-2x8"])
