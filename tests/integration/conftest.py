"""The adapters' tests run in this process, as the operator does, and reach every server on
loopback, whatever cluster the suite runs against: on an existing cluster the session's
PostgreSQL listens where pods reach this machine as well (rewind_testbed/external.py), and these
tests use its loopback address."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(scope="session")
def postgres(postgres):
    return dataclasses.replace(postgres, host="127.0.0.1") if postgres.host != "127.0.0.1" else postgres
