"""Warm sweep workers: one long-lived training process per worker, which trains many runs one after another.

A fresh `scalekit train` process per run pays for importing JAX, tracing and compiling every time (most of a tiny
run's wall time). A warm child imports JAX once and trains each run in-process through `scalekit.cli.train.main`
(the same function `scalekit train` runs, with the same exit codes), so compiled steps are reused across runs whose
shapes match. The driver side (`WarmWorker`, `WarmChild`) lives in the worker thread of `scalekit sweep run|work`;
the child side is `python -m scalekit.sweep.warm FD`, started through the executor's launcher (pinned to the
worker's cores, killed by the kernel when its driver dies).

Protocol, over a Unix SOCK_SEQPACKET socketpair (one JSON object per message):
  child -> driver  {"ready": PID}                  once, after the imports
  driver -> child  {"config": PATH, "workdir": DIR}  with three descriptors (socket.send_fds): the run directory's
                                                    locked `.lock` (the child holds the lock while it trains), and
                                                    the run's stdout.log and stderr.log, dup2'ed onto fds 1 and 2
  child -> driver  {"rc": CODE, "exit": BOOL}       the run's `scalekit train` exit code (1 with the traceback on the
                                                    run's stderr.log for any other exception); exit: it stops now
The child exits when the driver closes the socket, and after a run that a SIGTERM/SIGINT stopped (the trainer's
PreemptionGuard saves and returns; the signal between runs exits at once). Between runs it puts back what a run may
have changed: cwd, environment, jax config (except the compilation cache, set once per process), signal handlers,
sys.stdout/sys.stderr. A worker is recycled after `max_runs` runs, or when its resident memory passes
`max_rss_mb`, to bound what leaks anyway.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

START_FAILURE = "warm worker failed to start"  # how the error of a child that died before it was ready begins
START_TIMEOUT_S = 600.0  # a child that has not said "ready" by then is taken for hung
_MAX_MSG = 1 << 16


class WarmError(RuntimeError):
    """A warm child that failed to start or answered something other than the protocol; the message is one line."""


def kill_group(proc: subprocess.Popen) -> None:
    """Stop a child's process group: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB (0 where /proc does not say)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def read_tail(path: Path, start: int, limit: int = 4000) -> str:
    """The last `limit` characters of a log file after byte `start` ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(start, os.path.getsize(path) - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


# --- driver side -----------------------------------------------------------------------------------------------------

class WarmChild:
    """The driver's handle on one warm child process (its Popen, its end of the socket, its log)."""

    def __init__(self, launcher: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.log_start = log_path.stat().st_size if log_path.exists() else 0
        argv = [*launcher, sys.executable, "-m", "scalekit.sweep.warm", str(theirs.fileno())]
        try:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                             cwd=os.getcwd(), start_new_session=True, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.proc.pid
        self.started = time.time()
        self.ready = False
        self.exiting = False  # it said it exits after this run (a SIGTERM/SIGINT reached it)
        self.runs = 0  # runs it has answered
        self.failure = ""  # why it is no use any more (set when it died or broke the protocol)

    def start_run(self, config: str, workdir: str, fds: Sequence[int]) -> None:
        """Send one run (its lock, stdout and stderr descriptors with it); a dead child shows up in `wait`."""
        msg = json.dumps({"config": config, "workdir": workdir}).encode()
        with contextlib.suppress(OSError):  # it died: wait() reports how
            socket.send_fds(self.sock, [msg], list(fds))

    def wait(self, timeout: float) -> int | None:
        """The run's exit code once the child answered or died (negative: killed by that signal); None meanwhile."""
        deadline = time.time() + timeout
        while True:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.time()))
            if ready:
                rc = self._read()
                if rc is not None:
                    return rc
                continue
            if self.proc.poll() is not None:  # died, and nothing left to read
                return self._died()
            if not self.ready and time.time() - self.started > START_TIMEOUT_S:
                kill_group(self.proc)
                self.failure = (f"warm worker PID {self.pid} did not start within {START_TIMEOUT_S:g} s; its log "
                                f"{self.log_path}")
                return self.proc.returncode if self.proc.returncode is not None else -signal.SIGKILL
            if time.time() >= deadline:
                return None

    def _read(self) -> int | None:
        try:
            data = self.sock.recv(_MAX_MSG)
        except OSError:
            data = b""
        if not data:  # the child closed its end: it is exiting
            try:
                self.proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
            return self._died()
        try:
            msg = json.loads(data)
            if "ready" in msg:
                self.ready = True
                return None
            rc = int(msg["rc"])
            self.exiting = bool(msg.get("exit"))
        except (ValueError, TypeError, KeyError, AttributeError):
            kill_group(self.proc)
            self.failure = f"warm worker PID {self.pid} answered {data[:80]!r}, not the protocol; killed it"
            return 1
        self.runs += 1
        return rc

    def _died(self) -> int:
        """The exit code of a child that died; one that died before it was ready is a start failure."""
        rc = self.proc.returncode if self.proc.returncode is not None else self.proc.wait()
        if not self.ready and not self.failure:
            head = f"exit code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
            last = read_tail(self.log_path, self.log_start).splitlines()
            self.failure = (f"{START_FAILURE}: {head}; its log {self.log_path}"
                            + (f": {last[-1].strip()}" if last else ""))
        return rc  # died mid-run: the run failed with this exit code, as a fresh process's would

    def startup_log(self) -> str:
        """What the child wrote to its own log since it started (where an import error lands)."""
        return read_tail(self.log_path, self.log_start)

    def alive(self) -> bool:
        """Whether it can take another run."""
        return not self.failure and not self.exiting and self.proc.poll() is None

    def close(self) -> None:
        """Let the child exit (it does when its socket closes); kill it if it has not within 10 s."""
        self.sock.close()
        try:
            self.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)


class WarmWorker:
    """One worker thread's warm child: started on first use, replaced after a crash, recycled after `max_runs` runs
    or when its RSS passes `max_rss_mb` (0 = no limit)."""

    def __init__(self, launcher: Sequence[str], env: dict[str, str], log_path: Path, max_runs: int = 200,
                 max_rss_mb: float = 0.0, log: Callable[[str], None] | None = None) -> None:
        self.launcher, self.env, self.log_path = list(launcher), env, log_path
        self.max_runs, self.max_rss_mb = max_runs, max_rss_mb
        self.log = log or (lambda msg: None)
        self.child: WarmChild | None = None

    def get(self) -> WarmChild:
        """The live child, starting one if there is none."""
        if self.child is None or not self.child.alive():
            self.child = WarmChild(self.launcher, self.env, self.log_path)
            self.log(f"started warm worker PID {self.child.pid} (log {self.log_path})")
        return self.child

    def finished(self, healthy: bool) -> None:
        """After a run: drop a child that died or was killed; recycle one that has done enough or grown too big."""
        child = self.child
        if child is None:
            return
        if not healthy or not child.alive():
            kill_group(child.proc)  # also whatever it started (data workers) if it died
            child.sock.close()  # also drops a request it never read (and the run lock it carried)
            self.child = None
            return
        rss = rss_mb(child.pid) if self.max_rss_mb else 0.0
        if (self.max_runs and child.runs >= self.max_runs) or (self.max_rss_mb and rss > self.max_rss_mb):
            why = f"{child.runs} runs" if child.runs >= self.max_runs > 0 else f"RSS {rss:.0f} MiB"
            self.log(f"recycling warm worker PID {child.pid} after {why}")
            child.close()
            self.child = None

    def close(self) -> None:
        """Let the child exit (end of the worker loop)."""
        if self.child is not None:
            self.child.close()
            self.child = None


# --- child side ------------------------------------------------------------------------------------------------------

class Terminated(BaseException):  # noqa: N818 - a signal, not an error
    """SIGTERM/SIGINT outside a run's PreemptionGuard: stop now (the run, if any, ends as killed by the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


class _ProcessState:
    """What a run may change in this process and the next run must not see: taken before a run, put back after."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    KEEP_JAX = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")  # set once per process on purpose

    def __init__(self) -> None:
        import jax
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.jax = dict(jax.config.values)
        self.handlers = {s: signal.getsignal(s) for s in self.SIGNALS}
        self.streams = (sys.stdout, sys.stderr)

    def restore(self) -> None:
        import jax
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        for name, value in jax.config.values.items():
            if name not in self.KEEP_JAX and name in self.jax and value != self.jax[name]:
                with contextlib.suppress(Exception):  # some options cannot change once a backend exists
                    jax.config.update(name, self.jax[name])
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = self.streams


def _train_one(request: dict[str, Any], out_fd: int, err_fd: int) -> int:
    """Train one run with its stdout/stderr on the run's logs; `scalekit train`'s exit code."""
    import traceback

    from scalekit.cli import train as train_cli

    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    try:
        return train_cli.main(["--config", str(request["config"]), "--workdir", str(request["workdir"])],
                              in_process=True)
    except Terminated as e:
        print(f"[scalekit] warm worker: {signal.Signals(e.signum).name} before the run could save; stopped",
              file=sys.stderr)
        return -e.signum
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1  # as the interpreter would
    except BaseException:  # noqa: BLE001 - what `python -m scalekit train` does with it: traceback, exit 1
        traceback.print_exc()
        return 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, out_fd, err_fd):
            os.close(fd)


def _signalled(wakeup_r: int) -> bool:
    """Whether a SIGTERM/SIGINT arrived since the last look (whoever handled it: the wakeup fd sees them all)."""
    got = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(wakeup_r, 512):
            got += chunk
    return any(b in (signal.SIGTERM, signal.SIGINT) for b in got)


def serve(fd: int) -> int:
    """The child's loop: import once, then train each run the driver sends until it closes the socket."""
    import faulthandler
    import gc

    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)  # grandchildren (data workers) must not keep the driver's socket open
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    for sig in _ProcessState.SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        faulthandler.enable()  # a crash's traceback lands on fd 2: the running run's stderr.log
        for module in ("scalekit.cli.train", "scalekit.train.loop"):  # the imports are what a warm worker saves
            importlib.import_module(module)
        sock.sendall(json.dumps({"ready": os.getpid()}).encode())
        while True:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 3, socket.MSG_CMSG_CLOEXEC)
            if not data:
                return 0
            if len(fds) != 3:
                raise WarmError(f"a request came with {len(fds)} descriptors, not 3 (lock, stdout, stderr)")
            lock_fd, out_fd, err_fd = fds
            state = _ProcessState()
            try:
                rc = _train_one(json.loads(data), out_fd, err_fd)
            finally:
                os.close(lock_fd)  # the run directory is free as soon as its trainer is done
                state.restore()
                gc.collect()
            stop = _signalled(wakeup_r)
            print(f"[warm {os.getpid()}] {json.loads(data).get('workdir')}: exit code {rc}", file=sys.stderr,
                  flush=True)
            stop = stop or rc < 0
            sock.sendall(json.dumps({"rc": rc, "exit": stop}).encode())
            if stop:
                return 0
    except Terminated:
        return 0
    except (BrokenPipeError, ConnectionResetError):  # the driver is gone
        return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m scalekit.sweep.warm FD (started by the sweep executor, not by hand)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(int(sys.argv[1])))
