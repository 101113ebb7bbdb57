"""A real single-node Slurm cluster for the launch tests (munged, slurmctld, slurmd from Debian's packages).

Config, state, logs and sockets live in a temp dir; everything binds to 127.0.0.1 on free ports; the node fakes
CPUs=8 (`SlurmdParameters=config_overrides`) so a 2-task job and a 2-task array run at once on a 2-core machine.
Tests using `slurm_cluster` skip with a reason when the binaries are absent (CI installs them: see .ci/run).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
# Variables that would make a child process think it is part of some other cluster (CI inside Slurm, say).
_CLUSTER_ENV = ("SLURM_", "JOB_COMPLETION_INDEX", "JOBSET_", "SCALEKIT_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "OMPI_", "PMI_")
APT_HINT = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: int = 4, **extra: str) -> dict[str, str]:
    """A clean environment for a JAX child process: CPU, `devices` fake devices, no inherited cluster variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_ENV)}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class ProcessGroup:
    """Start several processes at once and collect (returncode, output) for each; kills leftovers on close."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], envs: list[dict[str, str]], cwd: Path = REPO) -> list[subprocess.Popen]:
        """One process per env, all running argv."""
        new = [subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True) for env in envs]
        self.procs += new
        return new

    def run(self, argv: list[str], envs: list[dict[str, str]], timeout: float = 120) -> list[tuple[int, str]]:
        """Start and wait for all; returns [(returncode, output)] in env order."""
        procs = self.start(argv, envs)
        out = []
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.close()
                text, _ = p.communicate()
                raise AssertionError(f"process group did not finish within {timeout} s; output:\n{text[-4000:]}")
            out.append((p.returncode, text))
        return out

    def close(self) -> None:
        """Kill the processes this group started that are still running."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def group():
    """A ProcessGroup whose leftover processes are killed after the test."""
    g = ProcessGroup()
    yield g
    g.close()


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return _free_port()


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


SLURM_CONF = """\
ClusterName=scalekit-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.socket
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
PlugStackConfig={dir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """munged + slurmctld + slurmd in the foreground, owned by this object; `env` points clients at it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sk-slurm-"))  # short: unix socket paths are limited to 108 bytes
        self.procs: list[subprocess.Popen] = []
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, timeout: float = 30.0) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        (d / "plugstack.conf").write_text("")
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chmod(d, 0o755)
        self.conf.write_text(SLURM_CONF.format(dir=d, ctld_port=_free_port(), slurmd_port=_free_port()))
        self._spawn([_which("munged"), "-F", "--force", f"--socket={d}/munge.socket", f"--key-file={key}",
                     f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"])
        self._wait(lambda: (d / "munge.socket").exists(), timeout, "munged socket")
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn([_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "node localhost idle")

    def _spawn(self, argv: list) -> None:
        log = open(self.dir / f"{Path(argv[0]).name}.stdout", "w")
        self.procs.append(subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def _node_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; logs in {self.dir}:\n" + self.logs())
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "idle~")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm test cluster: {what} not ready after {timeout} s; logs:\n" + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for f in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.stdout")):
            parts.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` fields of a job (JobState, ExitCode, ...)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True,
                             text=True).stdout
        fields: dict[str, str] = {}
        for line in out.splitlines():
            for item in line.split():
                k, _, v = item.partition("=")
                fields.setdefault(k, v)
        return fields

    def stop(self) -> None:
        """Cancel jobs, kill the daemons (slurmd, slurmctld, munged) and remove the temp dir."""
        subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=self.env, capture_output=True,
                       timeout=20)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm; skips when the Debian packages are not installed."""
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        pytest.skip(f"Slurm test cluster needs {', '.join(missing)}: {APT_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster runs slurmd as root (it starts job steps as any user)")
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def clean_env():
    """The child_env function: a clean CPU environment for JAX child processes."""
    return child_env
