"""scalekit.sweep.pg_local: a real throwaway PostgreSQL server (skipped where PostgreSQL or psycopg is absent)."""

import socket

import pytest

psycopg = pytest.importorskip("psycopg")
pg_local = pytest.importorskip("scalekit.sweep.pg_local")

pytestmark = pytest.mark.skipif(pg_local.find_pg_bin() is None, reason="PostgreSQL server binaries not installed")


@pytest.fixture
def own_server():
    """A server of the test's own, for tests that stop or crash it (the session's `pg_server` must stay up)."""
    server = pg_local.LocalPostgres(settings={"synchronous_commit": "on"})  # every acknowledged commit survives kill
    try:
        yield server.start()
    finally:
        server.cleanup()


def test_password_url_accepted_and_wrong_password_refused(pg_server, pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg_server.user,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_url.replace(pg_server.password, "wrong" + pg_server.password), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.url(password=False), connect_timeout=5)


def test_listens_on_127_0_0_1_only(pg_server):
    with psycopg.connect(pg_server.url()) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    with socket.create_connection(("127.0.0.1", pg_server.port), timeout=5):
        pass
    # 127.0.0.2 is the loopback interface too: a server bound to 0.0.0.0 would accept there
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", pg_server.port), timeout=5):
        pass
    if socket.has_ipv6:
        with pytest.raises(OSError), socket.create_connection(("::1", pg_server.port), timeout=5):
            pass


def test_restart_keeps_rows_and_port(own_server):
    url = own_server.create_database("keep")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
    port, data_dir = own_server.port, own_server.data_dir
    own_server.restart()
    assert (own_server.port, own_server.data_dir) == (port, data_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), sum(i) FROM t").fetchone() == (100, 5050)


def test_kill_then_start_recovers(own_server):
    url = own_server.create_database("crash")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t VALUES (1), (2), (3)")
    victim = psycopg.connect(url)  # an open session the crash cuts off
    pid = own_server.postmaster_pid()
    own_server.kill()
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    victim.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    own_server.start()
    assert own_server.postmaster_pid() != pid
    assert "automatic recovery in progress" in own_server.log_path.read_text()  # WAL replay, not a clean start
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT array_agg(i ORDER BY i) FROM t").fetchone() == ([1, 2, 3],)
        conn.execute("INSERT INTO t VALUES (4)")  # and it takes writes again


def test_create_database_gives_isolated_databases(pg_server):
    a, b = pg_server.create_database("iso_a"), pg_server.create_database("iso_b")
    try:
        assert a.endswith("/iso_a") and b.endswith("/iso_b")
        with psycopg.connect(a) as conn:
            conn.execute("CREATE TABLE t (v text)")
            conn.execute("INSERT INTO t VALUES ('a')")
        with psycopg.connect(b) as conn:
            assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)
            conn.execute("CREATE TABLE t (v text)")
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        with psycopg.connect(a) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [("a",)]
    finally:
        pg_server.drop_database("iso_a")
        pg_server.drop_database("iso_b")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(a, connect_timeout=5)


def test_cleanup_removes_the_temp_dir_and_stops_the_server():
    server = pg_local.LocalPostgres().start()
    root, port = server.root, server.port
    server.cleanup()
    assert not root.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
