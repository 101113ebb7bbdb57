"""scalekit.parallel.distributed: where settings come from, process-to-GPU mapping, and no silent hangs.

The detection tests are pure (an env dict in, a ClusterSpec out). The others start real processes with
jax.distributed on 127.0.0.1 (4 CPU devices each, a mesh over all 8).
"""

from __future__ import annotations

import sys

import pytest

from scalekit.parallel.distributed import DistributedInitError, detect, expand_nodelist

EXIT_PEER_FAILED = 75

# A worker: initialise from the environment, all-reduce over a mesh of every device, then misbehave on request.
WORKER = r"""
import os, sys
from scalekit.parallel import distributed
try:
    info = distributed.initialize({"timeout_s": int(os.environ.get("T", "20"))})
except distributed.DistributedInitError as e:
    print("INIT-ERROR:", e, flush=True)
    sys.exit(3)
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")),
                                           np.full((jax.local_device_count(),), info.process_index + 1.0), (8,))
total = float(jax.jit(jnp.sum)(x))
print(f"OK process={info.process_index}/{info.process_count} devices={jax.device_count()} sum={total} "
      f"source={info.source}", flush=True)
what = os.environ.get("MISBEHAVE", "")
if what and info.process_index == 1:
    import time
    time.sleep(1.0)  # let process 0 get into its loop of collectives
    if what == "die":
        os._exit(9)
    raise ValueError("boom in process 1")
if what:
    for _ in range(600):  # keep doing collectives: the failure of process 1 must stop us, not hang us
        float(jax.jit(lambda v: jnp.sum(v * 2))(x))
"""


def _env(clean_env, port: int, pid: int, n: int = 2, **extra: str) -> dict[str, str]:
    return clean_env(4, SCALEKIT_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", SCALEKIT_NUM_PROCESSES=str(n),
                     SCALEKIT_PROCESS_ID=str(pid), **extra)


# --- detection (pure) -----------------------------------------------------------------------------------------------

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
              "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURMD_NODENAME": "gpu008",
              "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_NODEID": "1"}


def test_nodelist_expansion() -> None:
    assert expand_nodelist("gpu[007-009,012],login1") == ["gpu007", "gpu008", "gpu009", "gpu012", "login1"]
    assert expand_nodelist("node1,node2") == ["node1", "node2"]
    assert expand_nodelist("n[08-10]") == ["n08", "n09", "n10"]


def test_precedence_explicit_then_env_then_cluster() -> None:
    env = dict(SLURM_STEP, SCALEKIT_COORDINATOR_ADDRESS="10.0.0.1:1234", CUDA_VISIBLE_DEVICES="0,1,2,3")
    spec = detect({"num_processes": 8, "process_id": 5}, env)
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "explicit", "10.0.0.1:1234", 8, 5)
    spec = detect({}, env)
    assert spec.source == "env" and spec.coordinator_address == "10.0.0.1:1234" and spec.process_id == 5
    spec = detect({}, dict(SLURM_STEP, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert spec.source == "slurm" and spec.coordinator_address == f"gpu007:{61440 + 4242 % 4096}"
    assert spec.local_device_ids == (1,), "local task 1 of a node must drive GPU 1"
    assert detect({"enabled": "off"}, env).source == "single"
    assert detect({}, {}).source == "single" and detect({}, {}).num_processes == 1
    with pytest.raises(DistributedInitError, match="no cluster was found"):
        detect({"enabled": "on"}, {})


def test_slurm_gpu_mapping_and_its_errors() -> None:
    bound = detect({}, dict(SLURM_STEP, CUDA_VISIBLE_DEVICES="5"))  # --gpus-per-task=1: Slurm bound one GPU
    assert bound.local_device_ids is None and "bound one GPU" in bound.detail
    cpu = detect({}, dict(SLURM_STEP, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="0,1"))
    assert cpu.local_device_ids is None
    with pytest.raises(DistributedInitError, match="4 tasks .this is SLURM_LOCALID=1. but 8 GPUs are visible"):
        detect({}, dict(SLURM_STEP, SLURM_GPUS_ON_NODE="8"))  # half the GPUs would sit idle
    with pytest.raises(DistributedInitError, match="4 tasks .this is SLURM_LOCALID=1. but 2 GPUs"):
        detect({}, dict(SLURM_STEP, CUDA_VISIBLE_DEVICES="0,1"))  # two tasks would share a GPU
    with pytest.raises(DistributedInitError, match="per_node expects one task per node"):
        detect({"mode": "per_node"}, dict(SLURM_STEP, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    node = detect({"mode": "per_node"}, dict(SLURM_STEP, SLURM_LOCALID="0", SLURM_PROCID="1",
                                             CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_STEP_TASKS_PER_NODE="1(x2)",
                                             SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2"))
    assert node.local_device_ids is None and "all 4" in node.detail
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}
    with pytest.raises(DistributedInitError, match="start the processes with `srun"):
        detect({}, batch)


def test_kubernetes_jobset_pod() -> None:
    env = {"JOB_COMPLETION_INDEX": "3", "JOBSET_NAME": "llm", "REPLICATED_JOB_NAME": "workers", "JOB_INDEX": "1",
           "SCALEKIT_K8S_PARALLELISM": "4", "SCALEKIT_K8S_REPLICAS": "2", "SCALEKIT_COORDINATOR_PORT": "8476"}
    spec = detect({}, env)
    assert (spec.source, spec.num_processes, spec.process_id) == ("k8s", 8, 7)
    assert spec.coordinator_address == "llm-workers-0-0.llm:8476"
    plain = detect({}, {"JOB_COMPLETION_INDEX": "0", "JOB_NAME": "train", "SCALEKIT_K8S_SUBDOMAIN": "svc",
                        "SCALEKIT_K8S_PARALLELISM": "2"})
    assert plain.coordinator_address == "train-0.svc:8476"
    with pytest.raises(DistributedInitError, match="SCALEKIT_K8S_PARALLELISM"):
        detect({}, {"JOB_COMPLETION_INDEX": "0"})


def test_bad_explicit_settings_are_named() -> None:
    with pytest.raises(DistributedInitError, match="process_id is not set"):
        detect({"num_processes": 2, "coordinator_address": "h:1"}, {})
    with pytest.raises(DistributedInitError, match="outside"):
        detect({"num_processes": 2, "coordinator_address": "h:1", "process_id": 2}, {})
    with pytest.raises(DistributedInitError, match="comma-separated"):
        detect({"local_device_ids": "a,b"}, {})


# --- real processes ---------------------------------------------------------------------------------------------------

def test_two_processes_all_reduce_over_eight_devices(group, clean_env, free_port) -> None:
    results = group.run([sys.executable, "-c", WORKER], [_env(clean_env, free_port, i) for i in range(2)])
    for i, (rc, out) in enumerate(results):
        assert rc == 0, out
        # Process 0 holds four 1.0s and process 1 four 2.0s: 4 + 8 = 12 across the 8-device mesh.
        assert f"OK process={i}/2 devices=8 sum=12.0 source=env" in out, out


def test_peer_that_never_arrives_is_named(group, clean_env, free_port) -> None:
    (rc, out), = group.run([sys.executable, "-c", WORKER], [_env(clean_env, free_port, 0, n=3, T="3")])
    assert rc == 3, out
    assert "INIT-ERROR" in out and "process(es) [1, 2] of 3 never reached the coordinator" in out, out
    assert f"127.0.0.1:{free_port}" in out
    (rc, out), = group.run([sys.executable, "-c", WORKER], [_env(clean_env, free_port, 1, T="3")])
    assert rc == 3 and "could not reach the coordinator (process 0)" in out, out


def test_mismatched_process_count_is_named(group, clean_env, free_port) -> None:
    envs = [_env(clean_env, free_port, 0, n=2, T="10"), _env(clean_env, free_port, 1, n=3, T="10")]
    for rc, out in group.run([sys.executable, "-c", WORKER], envs):
        assert rc == 3 and "num_processes=3 but process 0 with 2" in out, out


@pytest.mark.parametrize("how, why", [("die", "died: its connection closed"),
                                      ("raise", "failed: ValueError: boom in process 1")])
def test_dead_peer_stops_the_others_with_its_name(group, clean_env, free_port, how, why) -> None:
    envs = [_env(clean_env, free_port, i, MISBEHAVE=how, T="30") for i in range(2)]
    (rc0, out0), (rc1, out1) = group.run([sys.executable, "-c", WORKER], envs, timeout=60)
    assert "OK process=0/2" in out0 and "OK process=1/2" in out1, out0 + out1
    assert rc1 == (9 if how == "die" else 1), out1
    assert rc0 == EXIT_PEER_FAILED, out0
    assert "scalekit.distributed: process 1 of 2" in out0 and why in out0, out0
    assert "Process 0 stops now" in out0 and f"127.0.0.1:{free_port}" in out0


def test_explicit_settings_win_over_a_confusing_cluster() -> None:
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}  # a batch script, no step
    env = dict(batch, SCALEKIT_COORDINATOR_ADDRESS="127.0.0.1:9", SCALEKIT_NUM_PROCESSES="2",
               SCALEKIT_PROCESS_ID="0")
    spec = detect({}, env)
    assert (spec.source, spec.process_id, spec.num_processes) == ("env", 0, 2)
    spec = detect({"process_id": 0}, dict(SLURM_STEP, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert spec.source == "explicit" and spec.process_id == 0 and spec.local_device_ids == (1,)
    assert "settings from explicit, slurm; slurm per_gpu: local task 1 drives GPU 1" in spec.detail
