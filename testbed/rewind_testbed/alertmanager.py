"""A real Alertmanager on loopback for the tests, built from its Go module by
testbed/build-alertmanager.sh. Every alert goes to a receiver with no integrations (nothing is
sent anywhere), silences are kept in the run directory, and there is no gossip.

    with Alertmanager.start(run_dir) as am:
        print(am.url)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rewind_testbed.procs import Proc, free_port, wait_until

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build-alertmanager.sh"
CONFIG = """\
route:
  receiver: nowhere
receivers:
  - name: nowhere
"""


def find_binary() -> Path:
    """$REWIND_ALERTMANAGER, else the binary the build script keeps in the cache (the script
    returns at once when it is there, and builds it when it is not)."""
    override = os.environ.get("REWIND_ALERTMANAGER")
    if override:
        return Path(override)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1]) / "alertmanager"


@dataclass
class Alertmanager:
    run_dir: Path
    port: int
    proc: Proc | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.run_dir / "alertmanager.log"

    @classmethod
    def start(cls, run_dir: Path, binary: Path | None = None,
              basic_auth: tuple[str, str] | None = None) -> "Alertmanager":
        """With `basic_auth` (user, password), its API (and /-/ready) wants those credentials, as
        with Alertmanager's own `--web.config.file` `basic_auth_users`."""
        binary = binary or find_binary()
        run_dir.mkdir(parents=True, exist_ok=True)
        config = run_dir / "alertmanager.yml"
        config.write_text(CONFIG)
        am = cls(run_dir=run_dir, port=free_port())
        args = [str(binary), f"--config.file={config}", f"--storage.path={run_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{am.port}", "--cluster.listen-address="]
        if basic_auth:
            import bcrypt

            web = run_dir / "web.yml"
            hashed = bcrypt.hashpw(basic_auth[1].encode(), bcrypt.gensalt(rounds=4)).decode()
            web.write_text(f"basic_auth_users:\n  {basic_auth[0]}: '{hashed}'\n")
            args.append(f"--web.config.file={web}")
        am.proc = Proc("alertmanager", args, am.log)
        am.proc.start()
        try:
            wait_until("Alertmanager /-/ready", lambda: httpx.get(
                f"{am.url}/-/ready", timeout=2, auth=basic_auth).status_code == 200, 60, [am.proc])
        except BaseException:
            am.stop()
            raise
        return am

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.run_dir / "data", ignore_errors=True)

    def __enter__(self) -> "Alertmanager":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
