"""A throwaway local PostgreSQL server: for tests, benchmarks, and trying the PostgreSQL results-store backend on one
machine without a shared database.

    with LocalPostgres() as pg:                 # initdb in a temp dir, then pg_ctl start on a free port
        url = pg.create_database("sweep")       # postgresql://scalekit:<pw>@127.0.0.1:<port>/sweep

Why a real server and not a mock: the backend's correctness rests on PostgreSQL's locking (`FOR UPDATE SKIP
LOCKED`), transactions and crash recovery, which only the real thing has. The server is PostgreSQL's own binaries
(`find_pg_bin`: Debian's /usr/lib/postgresql/<version>/bin, or PG_BIN, `pg_config --bindir`, PATH).

The cluster lives in a `tempfile.mkdtemp` directory (not pytest's tmp dirs: those are 0700 and root-owned, and
under root the server runs as another user who could not enter them). initdb refuses to run as root, so under root
the directory is chowned to the unprivileged `postgres` system user and initdb, pg_ctl and postgres run as that
user; otherwise they run as the current user. The bootstrap superuser is `user` with a random password, SCRAM
authentication for every connection (TCP and the Unix socket), listening on 127.0.0.1 only, the Unix socket inside
the temp dir.

For tests only: `fsync`, `synchronous_commit` and `full_page_writes` are off (fast, and nothing here is worth
keeping). So a crash of the machine can lose or corrupt committed data, and a crash of the server (`kill`) can lose
the transactions committed in its last ~0.6 s (3 x wal_writer_delay: their WAL was still in shared memory). A crash
test that needs every acknowledged commit to survive `kill` passes `settings={"synchronous_commit": "on"}`. Never
point this at data you want to keep.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

SERVER_OS_USER = "postgres"  # who runs the server when we are root (initdb refuses root)
_BINARIES = ("initdb", "pg_ctl", "postgres")


def _has_binaries(d: Path) -> bool:
    return all((d / b).is_file() and os.access(d / b, os.X_OK) for b in _BINARIES)


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when PostgreSQL's server is not installed.

    Looked for in order: $PG_BIN, `pg_config --bindir`, the newest /usr/lib/postgresql/<version>/bin (Debian),
    then PATH.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    return next((d for d in candidates if _has_binaries(d)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (bind to port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Raise if `uid` cannot enter every directory above `path` (the server would fail with a cryptic log line)."""
    for d in path.resolve().parents:
        st = d.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise RuntimeError(f"the {SERVER_OS_USER!r} user cannot enter {d} (mode {stat.filemode(st.st_mode)}, "
                               f"owner uid {st.st_uid}); put the server's root in a directory it can reach, "
                               f"e.g. the default (tempfile.gettempdir())")


class LocalPostgres:
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1:`port`, superuser `user`/`password` (SCRAM).

    `start()` runs initdb the first time, then starts the server and waits until it accepts connections; `stop()`,
    `restart()` and `kill()` (SIGKILL, for crash tests) keep the data directory and port; `cleanup()` stops the
    server and deletes the temp dir. As a context manager it starts on entry and cleans up on exit.
    """

    host = "127.0.0.1"

    def __init__(self, root: str | Path | None = None, *, port: int | None = None, user: str = "scalekit",
                 password: str | None = None, settings: dict[str, str] | None = None):
        """`root`: the directory to make the temp dir in (default: tempfile.gettempdir()); `port`: None picks a free
        one at the first start; `password`: None makes a random hex one; `settings`: postgresql.conf settings added
        to or overriding the defaults below (values as written in the file, e.g. {"work_mem": "'64MB'"})."""
        self.bin_dir = find_pg_bin()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's "
                               "`postgresql` package, or set PG_BIN to the directory that holds them")
        self.port: int | None = port
        self._port_given = port is not None
        self.user = user
        self.password = password if password is not None else secrets.token_hex(16)
        self.settings = dict(settings or {})
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                pw = pwd.getpwnam(SERVER_OS_USER)
            except KeyError:
                raise RuntimeError(f"running as root, and initdb refuses root, but there is no {SERVER_OS_USER!r} "
                                   f"system user to run the server as (Debian's postgresql package creates it)"
                                   ) from None
            self._uid, self._gid, self._home = pw.pw_uid, pw.pw_gid, pw.pw_dir
        else:
            self._uid, self._gid, self._home = os.getuid(), os.getgid(), os.environ.get("HOME", "/")
        self.root = Path(tempfile.mkdtemp(prefix="scalekit-pg-", dir=root)).resolve()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self._initialized = False
        if self._as_root:
            _check_traversable(self.root, self._uid, self._gid)
            os.chown(self.root, self._uid, self._gid)

    # --- running PostgreSQL's binaries -------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120.0, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGDATA/PGPORT/... from outside
        env.update(HOME=self._home if self._as_root else env.get("HOME", "/"), LC_ALL="C", LANG="C")
        kwargs: dict[str, Any] = {}
        if self._as_root:
            kwargs = {"user": self._uid, "group": self._gid, "extra_groups": []}
        proc = subprocess.run([str(self.bin_dir / tool), *args], capture_output=True, text=True, env=env,
                              cwd=self.root, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                               f"{self._log_tail()}")
        return proc

    def _log_tail(self, lines: int = 40) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(tail)

    def _chown(self, path: Path) -> None:
        if self._as_root:
            os.chown(path, self._uid, self._gid)

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink(missing_ok=True)
        self.socket_dir.mkdir()
        self._chown(self.socket_dir)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n# scalekit.sweep.pg_local: a throwaway test server (fsync off: not crash-safe)\n"
                    "include 'scalekit.conf'\n")
        self._initialized = True

    def _write_conf(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **self.settings,
        }
        path = self.data_dir / "scalekit.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._chown(path)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """initdb (first time only), start the server, and wait until it accepts a password login; return self.

        Raises RuntimeError, with the tail of the server log, when it is not up within `timeout` seconds.
        """
        if not self._initialized:
            self._initdb()
        attempts = 1 if (self._port_given or self.port is not None) else 3  # a picked port can be taken meanwhile
        for attempt in range(attempts):
            if self.port is None or (attempt and not self._port_given):
                self.port = free_port(self.host)
            self._write_conf()
            proc = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                             "-t", str(int(max(timeout, 1))), "start", timeout=timeout + 30, check=False)
            if proc.returncode == 0:
                break
            if attempt + 1 == attempts or "could not bind" not in self._log_tail(10):
                raise RuntimeError(f"PostgreSQL did not start (pg_ctl exit {proc.returncode}):\n"
                                   f"{proc.stdout}{proc.stderr}{self._log_tail()}")
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on {self.host}:{self.port} does not accept connections after "
                                       f"{timeout:.0f} s: {e}{self._log_tail()}") from e
                time.sleep(0.1)

    def postmaster_pid(self) -> int | None:
        """The server's pid from postmaster.pid, or None when there is no such file."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (`pg_ctl stop -m fast`: roll back open transactions, disconnect, checkpoint)."""
        if self._initialized and self.postmaster_pid() is not None:
            proc = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
            if proc.returncode != 0 and self.postmaster_pid() is not None and _alive(self.postmaster_pid()):
                raise RuntimeError(f"pg_ctl stop failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                                   f"{self._log_tail()}")

    def restart(self, timeout: float = 60.0) -> None:
        """Stop, then start again on the same data directory and port."""
        self.stop()
        self.start(timeout)

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster (a crash: no checkpoint, no shutdown), then wait until it and its backends are gone.

        Backends exit on their own when the postmaster dies; any still there after a moment are SIGKILLed too, so
        that the next `start()` can take the shared memory and do crash recovery.
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        soft_deadline = time.monotonic() + 5
        while _alive(pid) or any(_alive(c) for c in children):
            if time.monotonic() > soft_deadline:
                for c in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL processes {[pid, *children]} still alive {timeout:.0f} s after SIGKILL")
            time.sleep(0.05)
        if _is_zombie(pid):
            # Dead but not reaped (PID 1 does not reap orphans here): the next postgres would take the pid in its
            # lock files for a live server and refuse to start, so remove them as a crash would have left them.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
                lock.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Stop the server (kill it if stopping fails) and delete the temp dir."""
        try:
            self.stop()
        except Exception:  # noqa: BLE001 -- cleanup must not fail; the server is killed instead
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start() if self.postmaster_pid() is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    # --- URLs and databases ------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, password: bool = True) -> str:
        """`postgresql://user:password@127.0.0.1:port/dbname` (without `:password` when password=False)."""
        auth = quote(self.user, safe="") + (":" + quote(self.password, safe="") if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; return its URL (with the password)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, disconnecting its sessions first (WITH (FORCE))."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __repr__(self) -> str:
        return f"LocalPostgres({self.host}:{self.port}, data_dir={str(self.data_dir)!r})"


def _proc_state(pid: int) -> str | None:
    """The process state letter from /proc/<pid>/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    state = _proc_state(pid)
    if state is None and not Path("/proc/self/stat").exists():  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state is not None and state not in ("Z", "X")


def _is_zombie(pid: int) -> bool:
    return _proc_state(pid) == "Z"


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc; empty where there is no /proc)."""
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(p.name))
    return out
