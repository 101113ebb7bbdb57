"""Rendezvous and liveness for multi-process runs: no silent hangs when a peer never arrives or dies.

JAX's coordination service aborts the whole process (a C++ fatal error with a stack trace) when a peer is missing
at start-up, and a process blocked in a collective waits for a dead peer until the heartbeat timeout. So before
`jax.distributed.initialize`, process 0 listens on the coordinator port and every other process connects and says
hello (its id, the process count, host and pid). Process 0 answers "go" once all have arrived, or, at the
timeout, "fail" with the ids that never arrived; every process then raises DistributedInitError naming them.
Process 0 listens on the coordinator host's own address (the host part of the coordinator address, resolved), never
on every interface unless told (SCALEKIT_COORDINATOR_BIND=0.0.0.0), and on 127.0.0.1 when every process is on this
machine; JAX's service is told to bind the same address. Process 0 then closes the listener (JAX's service binds
the same port) but keeps the connections as a liveness
channel: a peer whose connection closes without a clean "bye" has died, and every other process prints which one
and exits with EXIT_PEER_FAILED (75, EX_TEMPFAIL: a scheduler may retry) instead of waiting in a collective.

Wire format: one JSON object per line. hello {"id", "n", "host", "pid"}; reply {"status": "go"|"fail", "error"};
then {"bye": "ok"|"error", "message"} and, from process 0, {"peer_failed": id, "why"}.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import json
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable

EXIT_PEER_FAILED = 75


class DistributedInitError(RuntimeError):
    """The processes could not form a cluster; the message names the coordinator and the missing processes."""


class _State:
    def __init__(self) -> None:
        self.conns: dict[int, socket.socket] = {}  # process 0: peer id -> connection; others: {0: conn}
        self.who: dict[int, str] = {}  # id -> "host h, pid p"
        self.done: set[int] = set()  # ids that said a clean bye
        self.me = 0
        self.n = 1
        self.coordinator = ""
        self.leaving = False
        self.error: str | None = None
        self.lock = threading.Lock()


_STATE: _State | None = None


def _send(conn: socket.socket, obj: dict) -> None:
    try:
        conn.sendall((json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _recv_line(conn: socket.socket, deadline: float) -> dict | None:
    buf = b""
    while not buf.endswith(b"\n"):
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = conn.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
    try:
        return json.loads(buf.decode())
    except ValueError:
        return None


def _keepalive(conn: socket.socket, timeout: int) -> None:
    """Let the kernel notice a lost node (no FIN ever comes) within about two thirds of the timeout."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", max(1, timeout // 3)), ("TCP_KEEPINTVL", max(1, timeout // 9)),
                       ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


LOOPBACK = "127.0.0.1"


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _ip_literal(host: str) -> str:
    """`host` as an IP address when it is one (brackets dropped), else ""."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return ""


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback literals (127.0.0.0/8, ::1): only processes on this machine reach them."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    ip = _ip_literal(host)
    return bool(ip) and ipaddress.ip_address(ip).is_loopback


def _listen(ip: str, port: int, host: str) -> socket.socket:
    """Listen on ip:port only (not every interface); ip '0.0.0.0' or '::' when asked for all of them."""
    try:
        if ip == "::" and socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return socket.create_server((ip, port), family=family)
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            raise DistributedInitError(
                f"process 0 cannot listen on {_hostport(ip, port)} ({e}): the coordinator host {host!r} resolves to "
                f"{ip}, which is not an address of this machine. Process 0 must run on the coordinator host; or set "
                "SCALEKIT_COORDINATOR_BIND to an address of this machine") from e
        raise DistributedInitError(
            f"process 0 cannot listen on coordinator port {port} at {ip} ({e}): another job uses it; pick another "
            "with SCALEKIT_COORDINATOR_PORT or the port in the coordinator address") from e


def _serve(ip: str, port: int, n: int, timeout: int, address: str,
           remote_peers: bool = True) -> dict[int, tuple[socket.socket, dict]]:
    deadline = time.monotonic() + timeout
    srv = _listen(ip, port, address.rpartition(":")[0])
    srv.settimeout(0.2)
    peers: dict[int, tuple[socket.socket, dict]] = {}
    problem = ""
    try:
        while len(peers) < n - 1 and time.monotonic() < deadline and not problem:
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            hello = _recv_line(conn, min(deadline, time.monotonic() + 10))
            if not isinstance(hello, dict) or "id" not in hello:
                conn.close()  # a port scanner or health probe: not one of ours
                continue
            pid, their_n = int(hello["id"]), int(hello.get("n", -1))
            if their_n != n:
                problem = (f"process {pid} (host {hello.get('host')}) was started with num_processes={their_n} "
                           f"but process 0 with {n}: every process must be given the same count")
            elif not 0 < pid < n or pid in peers:
                kind = "duplicated" if pid in peers else "out of range"
                problem = (f"process id {pid} (host {hello.get('host')}) is {kind} for {n} processes: every "
                           f"process needs a distinct id in [0, {n}), and 0 is the coordinator's")
            if problem:
                _send(conn, {"status": "fail", "error": problem})
                conn.close()
            else:
                peers[pid] = (conn, hello)
    finally:
        srv.close()
    missing = sorted(set(range(1, n)) - set(peers))
    if missing and not problem:
        arrived = ", ".join(f"{i} ({h.get('host')})" for i, (_, h) in sorted(peers.items())) or "none"
        problem = (f"process(es) {missing} of {n} never reached the coordinator {address} within {timeout} s "
                   f"(arrived besides process 0: {arrived}). Check that they were started, that their "
                   "num_processes/process_id are right, and that they can reach this host and port")
        if remote_peers and is_loopback(ip):
            problem += (f". Process 0 listened on {_hostport(ip, port)}, a loopback address, which processes on other "
                        f"machines cannot reach: make {address.rpartition(':')[0]!r} resolve to this machine's "
                        "network address, or set SCALEKIT_COORDINATOR_BIND to it")
    if problem:
        for conn, _ in peers.values():
            _send(conn, {"status": "fail", "error": problem})
            conn.close()
        raise DistributedInitError(problem)
    for conn, _ in peers.values():
        _send(conn, {"status": "go"})
    return peers


def _join(ip: str, port: int, me: int, n: int, timeout: int, address: str) -> socket.socket:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            conn = socket.create_connection((ip, port), timeout=2)
            break
        except OSError as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise DistributedInitError(
                f"process {me} of {n} could not reach the coordinator (process 0) at {address} [{ip}] within "
                f"{timeout} s ({last}): process 0 never started, crashed, or the port is blocked")
        time.sleep(0.25)
    _send(conn, {"id": me, "n": n, "host": socket.gethostname(), "pid": os.getpid()})
    reply = _recv_line(conn, time.monotonic() + timeout + 10)
    if reply is None:
        raise DistributedInitError(f"process {me} of {n}: the coordinator at {address} accepted the connection "
                                   "but never answered: process 0 died during start-up")
    if reply.get("status") != "go":
        raise DistributedInitError(f"process {me} of {n}: {reply.get('error', reply)}")
    return conn


def meet(host: str, port: int, me: int, n: int, timeout: int,
         resolve: Callable[[str, float], str], local: bool = False,
         bind: str | None = None) -> tuple[str, str]:
    """Gather all n processes at host:port within timeout; return (the address JAX should connect to, the address
    process 0's JAX service should bind; "" on the other processes).

    Process 0 listens on the coordinator host's own address (what `resolve(host)` gives), not on every interface;
    on 127.0.0.1 when `local` (every process runs on this machine: then all connect to 127.0.0.1); on `bind` when
    given ('0.0.0.0' or '::' for every interface).
    """
    global _STATE
    address = f"{host}:{port}"
    st = _State()
    st.me, st.n, st.coordinator = me, n, address
    deadline = time.monotonic() + timeout
    if local:
        ip = LOOPBACK
    elif is_loopback(host):  # a loopback literal is its own address; 'localhost' means 127.0.0.1 here
        ip = _ip_literal(host) or LOOPBACK
    else:
        ip = ""
    bind_ip = ""
    if me == 0:
        bind_ip = bind or ip or resolve(host, deadline)
        peers = _serve(bind_ip, port, n, timeout, address, remote_peers=not (local or is_loopback(host)))
        for pid, (conn, hello) in peers.items():
            st.conns[pid] = conn
            st.who[pid] = f"host {hello.get('host')}, pid {hello.get('pid')}"
        ip = LOOPBACK if bind_ip in ("0.0.0.0", "::") else bind_ip
    else:
        ip = ip or resolve(host, deadline)
        st.conns[0] = _join(ip, port, me, n, timeout, address)
        st.who[0] = f"coordinator at {address}"
    for conn in st.conns.values():
        _keepalive(conn, timeout)
        conn.settimeout(None)
    _STATE = st
    _install_hooks()
    threading.Thread(target=_watch, args=(st,), name="scalekit-liveness", daemon=True).start()
    return _hostport(ip, port), (_hostport(bind_ip, port) if bind_ip else "")


def _die(st: _State, failed: int, why: str) -> None:
    with st.lock:
        if st.leaving:
            return
        st.leaving = True
    if st.me == 0:
        for pid, conn in st.conns.items():
            if pid != failed:
                _send(conn, {"peer_failed": failed, "why": why})
    who = st.who.get(failed, "")
    msg = (f"scalekit.distributed: process {failed} of {st.n}{f' ({who})' if who else ''} {why}. "
           f"Process {st.me} stops now (exit code {EXIT_PEER_FAILED}) instead of waiting for it in a collective. "
           f"Coordinator: {st.coordinator}.")
    sys.stdout.flush()
    print(msg, file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_FAILED)


def _on_message(st: _State, sender: int, msg: dict | None) -> None:
    if msg is None:
        if sender not in st.done:
            _die(st, sender, "died: its connection closed without a clean shutdown (crash, kill, OOM or lost node;"
                             " see its log)")
        return
    if msg.get("bye") == "ok":
        st.done.add(sender)
    elif msg.get("bye") == "error":
        _die(st, sender, f"failed: {msg.get('message', 'an error')}")
    elif "peer_failed" in msg:
        _die(st, int(msg["peer_failed"]), str(msg.get("why", "failed")))


def _watch(st: _State) -> None:
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    for pid, conn in st.conns.items():
        sel.register(conn, selectors.EVENT_READ, pid)
        buffers[pid] = b""
    while sel.get_map():
        for key, _ in sel.select():
            pid = key.data
            try:
                chunk = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(key.fileobj)
                _on_message(st, pid, None)
                continue
            buffers[pid] += chunk
            while b"\n" in buffers[pid]:
                line, buffers[pid] = buffers[pid].split(b"\n", 1)
                try:
                    _on_message(st, pid, json.loads(line))
                except ValueError:
                    pass


def say_bye(ok: bool = True, message: str = "") -> None:
    """Tell the peers this process is leaving: cleanly (ok) or because of an error (they stop too)."""
    st = _STATE
    if st is None:
        return
    with st.lock:
        if st.leaving:
            return
        st.leaving = True
    for conn in st.conns.values():
        _send(conn, {"bye": "ok" if ok else "error", "message": message[:2000]})


def _install_hooks() -> None:
    import jax  # noqa: F401  (jax registers its atexit shutdown on import; ours, registered later, runs first)

    previous = sys.excepthook

    def hook(kind, value, tb):  # record an uncaught exception so the exit says "error" to the peers
        if _STATE is not None:
            _STATE.error = f"{kind.__name__}: {value}"
        previous(kind, value, tb)

    sys.excepthook = hook
    atexit.register(_at_exit)


def _at_exit() -> None:
    """Say bye; after an uncaught exception skip JAX's shutdown barrier, which would wait for peers that stop."""
    st = _STATE
    if st is None:
        return
    if st.error is None:
        say_bye(ok=True)
        return
    say_bye(ok=False, message=st.error)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
