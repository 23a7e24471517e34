"""`rewind-testbed`: build the local control plane, or run it in the foreground for a person.

    rewind-testbed build     build (or find in the cache) the binaries; print their directory
    rewind-testbed up        start the control plane, PostgreSQL and the job runner (it runs the
                             database Job pods); print how to use them; Ctrl-C stops
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from rewind_testbed.cluster import ControlPlane, build_binaries
from rewind_testbed.jobrunner import LABEL_SELECTOR, JobRunner
from rewind_testbed.postgres import PostgresServer, find_bindir


def _up(args) -> int:
    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="rewind-dev-"))
    run_dir.mkdir(parents=True, exist_ok=True)  # --dir may name a directory that is not there yet
    run_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    t0 = time.monotonic()
    bin_dir = build_binaries()
    cp = ControlPlane.start(run_dir / "cluster", bin_dir)
    pg = runner = None
    try:
        if not args.no_postgres:
            pg = PostgresServer.start(run_dir / "postgres")
            runner = JobRunner(cp.kubeconfig, run_dir / "jobs", find_bindir()).start()
        print(f"Local control plane up in {time.monotonic() - t0:.1f}s "
              f"(API server {cp.server}, 2 kwok nodes).")
        print("Point kubectl at it:\n")
        print(f"  export KUBECONFIG={cp.kubeconfig}")
        print(f"  export PATH={bin_dir}:$PATH")
        print("  kubectl get nodes\n")
        if pg:
            print(f"PostgreSQL: 127.0.0.1:{pg.port}, superuser postgres, "
                  f"password in {run_dir / 'postgres' / 'superuser-password'} (mode 0600)")
            pw = run_dir / "postgres" / "superuser-password"
            pw.write_text(pg.password)
            pw.chmod(0o600)
        if runner:
            print(f"Pods labelled {LABEL_SELECTOR} run locally (the job runner): their output in "
                  f"{runner.root_dir / 'logs'}, PVCs in {runner.root_dir / 'pvc'}/<namespace>/<claim>, "
                  f"the runner's log {runner.log_file}")
        print(f"Component logs: {cp.log_dir}")
        print("Press Ctrl-C to stop.", flush=True)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        try:
            while not stop:
                for p in cp.procs:
                    p.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    finally:
        if runner:
            runner.stop()
        if pg:
            pg.stop()
        cp.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rewind-testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or reuse the control-plane binaries")
    up = sub.add_parser("up", help="run the control plane (and PostgreSQL) in the foreground")
    up.add_argument("--dir", help="run directory (default: a new temporary directory)")
    up.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries())
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
