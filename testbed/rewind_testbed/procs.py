"""Child processes of the test bed: started with their output in a log file, stopped in order,
and killed by the kernel if the process that started them dies (so no orphans outlive a test run)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A free TCP port on loopback (bind to port 0, read it, close), as envtest does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    user: str | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                user=self.user,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise RuntimeError(f"{self.name} exited with code {code}; see its log: {self.log}\n"
                               + tail(self.log))

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """`sig` (SIGTERM; SIGKILL: no shutdown at all), then SIGKILL to the whole process group
        if it has not ended after `timeout` seconds."""
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(what: str, check, timeout: float, procs: list[Proc] = (), interval: float = 0.2):
    """Polls `check` until it returns something truthy; fails early if a watched process died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - readiness probes fail in many ways while starting
            last_error = e
        time.sleep(interval)
    logs = "; ".join(f"{p.name}: {p.log}" for p in procs)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} "
                       f"(last error: {last_error!r}; logs: {logs})")
