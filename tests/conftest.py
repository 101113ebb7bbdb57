"""Test-wide setup: 8 fake CPU devices and a persistent compilation cache, before JAX is imported.

Environment variables (not jax.config) so that subprocesses started by tests inherit the same settings.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "scalekit-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, read in place; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (a user's clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_server():
    """A real local PostgreSQL server (scalekit.sweep.pg_local.LocalPostgres) shared by the session; skips with a
    reason when the PostgreSQL server binaries or psycopg are not installed. Deleted at the end of the session."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    from scalekit.sweep import pg_local  # lazily: the rest of the suite needs neither psycopg nor PostgreSQL

    if pg_local.find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's `postgresql` "
                    "package (.ci/run does) or set PG_BIN")
    server = pg_local.LocalPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server):
    """The URL (with the password) of a fresh database t_<12 hex> on `pg_server`, dropped after the test."""
    import contextlib
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        pg_server.drop_database(name)
