"""JobSet manifests for `scalekit train` on Kubernetes: an Indexed Job behind a headless service, GPUs, the env.

`render_manifest(job, train_args)` returns YAML for `kubectl apply -f`. One ReplicatedJob "workers" runs P pods as
an Indexed Job (completionMode Indexed, parallelism = completions = P): P = nodes with one process per node
(mode "per_node", the default here: each pod gets all the node's GPUs), or nodes * gpus_per_node pods of one GPU
each (mode "per_gpu"). JobSet's `network` section creates the headless service (subdomain = the JobSet's name,
publishNotReadyAddresses so that pod 0's name resolves before it is ready), giving pod i of job j the hostname
`<name>-workers-<j>-<i>.<name>`. Each pod learns its process id from JOB_COMPLETION_INDEX (set by Kubernetes) and
its job index from the JobSet annotation; the process count and the subdomain come from env vars written here.
scalekit.parallel.distributed turns them into jax.distributed settings with pod 0 as the coordinator.

On any pod failure the JobSet restarts all its jobs (failurePolicy.maxRestarts) and training resumes from the
checkpoint in its workdir, which must therefore be on shared storage (--pvc, or a gs:// / s3:// checkpoint dir).
`--queue` adds Kueue's queue-name label, so Kueue admits the whole JobSet at once (gang scheduling).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from scalekit.launch import checks
from scalekit.launch.slurm import preset_path

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
DEFAULT_IMAGE = "scalekit:latest"
DEFAULT_PORT = 8476
REPLICATED_JOB = "workers"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass
class K8sJob:
    """What to run: the pod count and shape, the image, the queue, and the environment."""

    name: str = "scalekit"
    nodes: int = 1
    gpus_per_node: int = 8
    mode: str = "per_node"  # "per_node": one pod per node | "per_gpu": one pod per GPU
    image: str = DEFAULT_IMAGE
    queue: str = ""  # Kueue LocalQueue
    namespace: str = ""
    port: int = DEFAULT_PORT
    max_restarts: int = 3
    pvc: str = ""  # "claim" or "claim:/mount/path"
    cpu: str = ""
    memory: str = ""
    preset: str = ""  # a deploy/slurm/*.env preset, evaluated by bash into plain values
    preflight: bool = False
    preflight_args: Sequence[str] = ()
    python: str = "python"
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def pods(self) -> int:
        """Number of pods (= JAX processes)."""
        return self.nodes * self.gpus_per_node if self.mode == "per_gpu" else self.nodes

    def gpus_per_pod(self) -> int:
        """GPUs requested by each pod."""
        return 1 if self.mode == "per_gpu" else self.gpus_per_node

    def validate(self) -> None:
        """Raise ValueError (naming the flag) for values Kubernetes would reject and for impossible shapes."""
        checks.no_control("--name", self.name)
        if not _DNS_LABEL.match(self.name):
            raise ValueError(f"--name {self.name!r} must be a DNS label: lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit")
        if self.mode not in ("per_gpu", "per_node"):
            raise ValueError(f"--mode {self.mode!r} must be 'per_gpu' or 'per_node'")
        checks.int_range("--nodes", self.nodes, 1, 100_000)
        checks.int_range("--gpus-per-node", self.gpus_per_node, 0, 1024)
        checks.port("--port", self.port)
        checks.int_range("--max-restarts", self.max_restarts, 0, 10_000)
        hostname = f"{self.name}-{REPLICATED_JOB}-0-{self.pods() - 1}"
        if len(hostname) > 63:
            raise ValueError(f"--name {self.name!r} is too long: pod hostnames like {hostname!r} exceed 63 "
                             "characters; give a shorter name")
        if self.mode == "per_gpu" and self.gpus_per_node < 1:
            raise ValueError("per_gpu mode needs --gpus-per-node >= 1 (or use --mode per_node)")
        checks.no_control("--image", self.image)
        if not self.image or re.search(r"\s", self.image):
            raise ValueError(f"--image {self.image!r} must be an image reference without white space")
        if self.queue:
            checks.matches("--queue", self.queue, checks.LABEL_VALUE, "a label value: up to 63 letters, digits, "
                           "'-', '_' or '.', starting and ending with a letter or digit")
            if len(self.queue) > 63:
                raise ValueError(f"--queue {self.queue!r} is longer than a label value's 63 characters")
        if self.namespace:
            checks.matches("--namespace", self.namespace, checks.DNS_LABEL,
                           "a DNS label: lower-case letters, digits and '-', at most 63 characters")
            if len(self.namespace) > 63:
                raise ValueError(f"--namespace {self.namespace!r} is longer than 63 characters")
        if self.pvc:
            claim, _, path = self.pvc.partition(":")
            checks.matches("--pvc", claim, checks.DNS_SUBDOMAIN,
                           "the claim name is lower-case letters, digits, '-' and '.' (CLAIM or CLAIM:/mount/path)")
            if path:
                checks.no_control("--pvc", path)
                if not path.startswith("/"):
                    raise ValueError(f"--pvc mount path {path!r} must be absolute, e.g. runs:/mnt/runs")
        for flag, value in (("--cpu", self.cpu), ("--memory", self.memory)):
            if value:
                checks.matches(flag, value, checks.QUANTITY, "a Kubernetes quantity, e.g. 32, 500m, 512Gi")
        checks.no_control("--python", self.python)
        checks.no_control("--preset", self.preset)
        checks.no_control_all("--preflight-args", self.preflight_args)
        checks.env_vars("--env", self.env)


def preset_env(preset: str) -> dict[str, str]:
    """The variables a deploy/slurm preset exports, evaluated by bash in an empty environment (defaults applied)."""
    if not preset:
        return {}
    script = "set -a; source \"$1\" >/dev/null; env -0"
    base = subprocess.run(["bash", "-c", "env -0"], env={}, capture_output=True, check=True).stdout
    out = subprocess.run(["bash", "-c", script, "bash", str(preset_path(preset))], env={}, capture_output=True,
                         check=True).stdout
    before = {kv.split(b"=", 1)[0] for kv in base.split(b"\0") if b"=" in kv}
    env = {}
    for kv in out.split(b"\0"):
        if b"=" in kv:
            k, v = kv.decode().split("=", 1)
            if k.encode() not in before and k not in ("_", "SHLVL", "PWD", "OLDPWD"):
                env[k] = " ".join(v.split()) if k == "XLA_FLAGS" else v.rstrip(":")
    return env


def _field_env(name: str, annotation: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{annotation}']"}}}


def pod_env(job: K8sJob) -> list[dict]:
    """The environment every pod gets: its place in the JobSet, the process count, the coordinator port."""
    env = [
        _field_env("JOBSET_NAME", "jobset.sigs.k8s.io/jobset-name"),
        _field_env("REPLICATED_JOB_NAME", "jobset.sigs.k8s.io/replicatedjob-name"),
        _field_env("JOB_INDEX", "jobset.sigs.k8s.io/job-index"),
        {"name": "SCALEKIT_K8S_PARALLELISM", "value": str(job.pods())},
        {"name": "SCALEKIT_K8S_REPLICAS", "value": "1"},
        {"name": "SCALEKIT_K8S_SUBDOMAIN", "value": job.name},
        {"name": "SCALEKIT_COORDINATOR_PORT", "value": str(job.port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # the metrics' host label: the node's name, as DCGM and node exporter label their series
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    extra = {**preset_env(job.preset), **job.env}
    env += [{"name": k, "value": v} for k, v in sorted(extra.items())]
    return env


def container_command(job: K8sJob, train_args: Sequence[str]) -> list[str]:
    """`python -m scalekit train <args>` (after a preflight when asked), with the job's process mode."""
    train = [job.python, "-m", "scalekit", "train", *train_args]
    if not any(a.startswith("--config.distributed.mode") for a in train_args):
        train.append(f"--config.distributed.mode={job.mode}")
    if not job.preflight:
        return train
    pre = [job.python, "-m", "scalekit", "preflight", *job.preflight_args]
    return ["bash", "-c", f"{shlex.join(pre)} || echo 'scalekit: preflight failed'; exec {shlex.join(train)}"]


def manifest(job: K8sJob, train_args: Sequence[str]) -> dict:
    """The JobSet as a dict (see the module docstring for its shape)."""
    job.validate()
    checks.no_control_all("a training argument after --", train_args)
    labels = {"app.kubernetes.io/name": "scalekit", "app.kubernetes.io/component": "train"}
    meta: dict = {"name": job.name}
    if job.namespace:
        meta["namespace"] = job.namespace
    meta["labels"] = dict(labels, **({"kueue.x-k8s.io/queue-name": job.queue} if job.queue else {}))
    resources: dict = {}
    if job.gpus_per_pod():
        resources["limits"] = {"nvidia.com/gpu": job.gpus_per_pod()}
    requests = {k: v for k, v in (("cpu", job.cpu), ("memory", job.memory)) if v}
    if requests:
        resources["requests"] = requests
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]  # NCCL and data loaders need more than the 64 MiB default
    volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if job.pvc:
        claim, _, path = job.pvc.partition(":")
        mounts.append({"name": "workdir", "mountPath": path or "/workdir"})
        volumes.append({"name": "workdir", "persistentVolumeClaim": {"claimName": claim}})
    container = {"name": "trainer", "image": job.image, "command": container_command(job, train_args),
                 "ports": [{"name": "coordinator", "containerPort": job.port}], "env": pod_env(job),
                 "resources": resources, "volumeMounts": mounts}
    pods = job.pods()
    pod_spec = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if job.gpus_per_pod():
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": meta,
        "spec": {
            "failurePolicy": {"maxRestarts": job.max_restarts},
            "network": {"enableDNSHostnames": True, "subdomain": job.name, "publishNotReadyAddresses": True},
            "replicatedJobs": [{
                "name": REPLICATED_JOB,
                "replicas": 1,
                "template": {"spec": {
                    "completionMode": "Indexed", "parallelism": pods, "completions": pods, "backoffLimit": 0,
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                }},
            }],
        },
    }


def render_manifest(job: K8sJob, train_args: Sequence[str]) -> str:
    """The JobSet YAML with a header saying what it runs and how to submit it."""
    doc = manifest(job, train_args)
    shape = (f"{job.nodes} node(s) x {job.gpus_per_node} GPU(s), {job.pods()} pod(s) = JAX processes "
             f"({job.mode}); coordinator {job.name}-{REPLICATED_JOB}-0-0.{job.name}:{job.port}")
    head = ["# Written by `scalekit launch k8s`: " + shape + ".",
            f"# Submit with `kubectl apply -f <this file>`{' (Kueue queue ' + job.queue + ')' if job.queue else ''}; "
            "needs the JobSet controller (jobset.x-k8s.io).",
            "# The JobSet's network section creates the headless service that gives pods stable hostnames."]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, width=120)


def write_manifest(job: K8sJob, train_args: Sequence[str], path: str | os.PathLike | None = None) -> Path:
    """Write the manifest (default deploy/k8s/<name>.yaml) and return its path."""
    out = Path(path) if path else DEPLOY_DIR / f"{job.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_manifest(job, train_args))
    return out
