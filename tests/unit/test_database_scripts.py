"""The database Jobs' shell scripts pass shellcheck, as shipped (each file) and as the Job runs
them (common.sh, then the step's script, as one `sh -c` argument), for POSIX sh: the image's
/bin/sh is dash or busybox, not bash."""

import shutil
import subprocess
from importlib import resources

import pytest

from rewind.steps.database import job

SHELLCHECK = shutil.which("shellcheck")
pytestmark = pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed "
                                "(scripts/bootstrap.sh installs it: Debian package shellcheck)")

FILES = sorted(p.name for p in (resources.files("rewind.steps.database") / "scripts").iterdir()
               if p.name.endswith(".sh"))
RUN = {"check": job.CHECK_SCRIPT, "backup": job.BACKUP_SCRIPT, "restore": job.RESTORE_SCRIPT}


def _shellcheck(text: str) -> str:
    proc = subprocess.run([SHELLCHECK, "--norc", "--shell=sh", "--severity=style", "-"],
                          input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def test_every_script_is_shipped():
    assert FILES == ["backup.sh", "check.sh", "common.sh", "restore.sh"]


@pytest.mark.parametrize("name", FILES)
def test_each_file_passes_shellcheck(name):
    text = (resources.files("rewind.steps.database") / "scripts" / name).read_text(encoding="utf-8")
    assert _shellcheck(text) == ""


@pytest.mark.parametrize("step", sorted(RUN))
def test_the_script_a_job_runs_passes_shellcheck(step):
    assert RUN[step].startswith("# shellcheck shell=sh\n")
    assert _shellcheck(RUN[step]) == ""
