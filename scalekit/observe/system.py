"""What the host and the devices say about themselves: memory in use, the host's name, this process's local index.

Read at scrape time, not per step, so that they cost the training loop nothing. Device memory comes from each
device's `memory_stats()` (GPUs and TPUs give it; the CPU backend returns None, and then nothing is exported).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Environment variables that launchers set to this process's index among the processes on its host.
LOCAL_INDEX_ENV = ("SCALEKIT_LOCAL_PROCESS_INDEX", "SLURM_LOCALID", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "JAX_LOCAL_PROCESS_ID")
# Environment variables naming the machine (in Kubernetes the pod's hostname is not the node's: set NODE_NAME from
# the downward API, spec.nodeName, so that scalekit's `host` label matches DCGM's and node exporter's).
HOST_ENV = ("SCALEKIT_HOST", "NODE_NAME")


def host_name() -> str:
    """The machine's name for the `host` label: $SCALEKIT_HOST, else $NODE_NAME, else the short hostname."""
    for var in HOST_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return socket.gethostname().split(".")[0]


def local_process_index() -> int:
    """This process's index among the processes on its host, from the launcher's environment (0 if none says)."""
    for var in LOCAL_INDEX_ENV:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def host_memory() -> dict[str, float]:
    """Resident and peak-resident bytes of this process, and the host's available bytes (Linux /proc)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = float(int(f.read().split()[1]) * _PAGE)
    except (OSError, IndexError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out["peak_rss_bytes"] = max(float(peak if sys.platform == "darwin" else peak * 1024), out.get("rss_bytes", 0.0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    out["available_bytes"] = float(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    return out


def local_devices_if_ready() -> list[Any]:
    """This process's JAX devices, or [] when JAX's backends are not up yet (asking would initialise them, which
    must not happen before jax.distributed.initialize)."""
    if "jax" not in sys.modules:
        return []
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        return []
    import jax

    return list(jax.local_devices())


def device_memory(devices: list[Any]) -> dict[str, dict[str, float]]:
    """{local device index: {"in_use_bytes", "peak_bytes", "limit_bytes"}} for devices that report memory stats."""
    out: dict[str, dict[str, float]] = {}
    for i, dev in enumerate(devices):
        try:
            stats = dev.memory_stats()
        except Exception:  # a backend without the call, or a device in a bad state: export nothing for it
            stats = None
        if not stats:
            continue
        entry = {}
        for key, name in (("bytes_in_use", "in_use_bytes"), ("peak_bytes_in_use", "peak_bytes"),
                          ("bytes_limit", "limit_bytes")):
            if key in stats:
                entry[name] = float(stats[key])
        if entry:
            out[str(i)] = entry
    return out


def process_start_time() -> float:
    """Unix time this process started (from /proc; falls back to now), so startup counts the imports too."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat; we split after the command name (fields 1-2)
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        start = btime + start_ticks / os.sysconf("SC_CLK_TCK")
        now = time.time()
        return start if now - 7 * 86400 < start <= now else now
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
