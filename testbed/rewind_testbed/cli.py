"""`rewind-testbed`: build the local control plane, or run it in the foreground for a person.

    rewind-testbed build     build (or find in the cache) the binaries; print their directory
    rewind-testbed up        start the control plane, PostgreSQL and the job runner (it runs the
                             database Job pods); print how to use them; Ctrl-C stops
    rewind-testbed up --real-node
                             the control plane with one real node (kubelet, containerd, runc;
                             node.py) instead of kwok's, which runs pods for real; writes
                             DIR/existing-cluster.env, what the suite needs to run against it
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
    images = None
    if args.real_node:
        from rewind_testbed import nodeimage
        images = nodeimage.build()
    from rewind_testbed import node as nodemod
    cp = ControlPlane.start(run_dir / "cluster", bin_dir, fake_nodes=not args.real_node,
                            pod_address=nodemod.HOST_ADDRESS if args.real_node else None)
    pg = runner = node = None
    try:
        if args.real_node:
            node = nodemod.RealNode.start(cp, run_dir / "node", images)
            env = run_dir / "existing-cluster.env"
            shared = run_dir / "shared"
            shared.mkdir(exist_ok=True)
            shared.chmod(0o1777)
            env.write_text("".join(f"export {k}={v}\n" for k, v in {
                "KUBECONFIG": cp.kubeconfig, "PATH": f"{bin_dir}:$PATH",
                "REWIND_TEST_EXISTING_CLUSTER": 1, "REWIND_TEST_HOST_ADDRESS": nodemod.HOST_ADDRESS,
                "REWIND_TEST_SHARED_DIR": shared, "REWIND_TEST_AUDIT_LOG": cp.audit_log,
                "REWIND_TEST_PKI_DIR": cp.pki.dir}.items()))
        if not args.no_postgres:
            pg = PostgresServer.start(run_dir / "postgres", host=nodemod.HOST_ADDRESS if node else "127.0.0.1")
            if not node:
                runner = JobRunner(cp.kubeconfig, run_dir / "jobs", find_bindir()).start()
        nodes = f"1 real node, {nodemod.NODE_NAME}, its logs in {node.run_dir / 'logs'}" if node else "2 kwok nodes"
        print(f"Local control plane up in {time.monotonic() - t0:.1f}s (API server {cp.server}, {nodes}).")
        print("Point kubectl at it:\n")
        print(f"  export KUBECONFIG={cp.kubeconfig}")
        print(f"  export PATH={bin_dir}:$PATH")
        print("  kubectl get nodes\n")
        if node:
            print(f"The suite against it: source {env} && make test\n")
        if pg:
            print(f"PostgreSQL: {pg.host}:{pg.port}, superuser postgres, "
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
                for p in cp.procs + (node.procs if node else []):
                    p.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    finally:
        if runner:
            runner.stop()
        if pg:
            pg.stop()
        if node:
            node.stop()
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
    up.add_argument("--real-node", action="store_true",
                    help="one real node (kubelet on containerd; needs root) instead of kwok's")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries())
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
