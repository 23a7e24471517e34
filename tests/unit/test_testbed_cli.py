"""`rewind-testbed up --dir DIR` with a DIR that does not exist yet creates it (it used to crash
on the chmod before anything started)."""

import stat

import pytest

from rewind_testbed import cli


class _Stop(Exception):
    pass


def test_up_creates_a_missing_run_dir(tmp_path, monkeypatch):
    run_dir = tmp_path / "not" / "there" / "yet"

    def build_binaries():  # the first thing `up` does after preparing the run directory
        raise _Stop

    monkeypatch.setattr(cli, "build_binaries", build_binaries)
    with pytest.raises(_Stop):
        cli.main(["up", "--dir", str(run_dir), "--no-postgres"])
    assert run_dir.is_dir()
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o755
