"""Fixtures of the operator tests that need the database."""

import pytest

from dbhelpers import add_rows


@pytest.fixture
def booking_db(postgres, database):
    """The live booking database, with rows written before the backup point."""
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL)")
        conn.execute("CREATE TABLE appointments (id int PRIMARY KEY, user_id int REFERENCES users, at timestamptz)")
        conn.execute("CREATE TABLE calendar_connections (id int PRIMARY KEY, user_id int REFERENCES users, "
                     "provider text, access_token text)")
        conn.commit()
    add_rows(postgres, database, 1, 50)
    return database


@pytest.fixture
def restricted(cluster, namespace):
    """The namespace enforces Pod Security `restricted`: the Job pods must meet it."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace
