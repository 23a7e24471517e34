"""The PostgreSQL server of the test bed is real: a server, password auth, fresh databases."""

import psycopg
import pytest

pytestmark = pytest.mark.postgres


def test_postgres_is_real_and_databases_are_fresh(postgres, database):
    with postgres.connect(database) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        assert int(version) >= 130000
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
        conn.execute("CREATE TABLE t (id int primary key)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        conn.commit()
    with postgres.connect(database) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM t").fetchone() == (100, 5050)
    # Password authentication is enforced over TCP.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(database, password="wrong")).close()
