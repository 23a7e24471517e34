"""Rewind's end-to-end demo on the local control plane (`make demo`).

It brings up the cluster (building it the first time), installs the Rollback CRD, deploys the
booking app's good release and then its bad one, starts the operator, applies the on-call
engineer's Rollback, shows its progress live, and ends with `kubectl get rollbacks` and the
Rollback's conditions. `--keep` leaves everything running afterwards for a look around.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rewind_testbed.cluster import ControlPlane, build_binaries

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NS = "booking"
NAME = "booking-oauth-outage"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n\033[1m==> {text}\033[0m")


class Demo:
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def kubectl(self, *args: str, show: bool = True, input: str | None = None) -> str:
        if show:
            say(f"$ kubectl {' '.join(args)}")
        out = self.cp.kubectl(*args, check=False, input=input)
        if out.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        if show and out.stdout.strip():
            say(out.stdout.rstrip())
        return out.stdout

    def rollback(self) -> dict:
        return json.loads(self.kubectl("get", "rollback", NAME, "-n", NS, "-o", "json", show=False))


def watch(demo: Demo, timeout: float = 300) -> dict:
    """Prints each change of the Rollback's phase, step and step message as it happens."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        rb = demo.rollback()
        st = rb.get("status", {})
        steps = st.get("steps") or [{}]
        current = next((s for s in steps if s.get("state") not in ("Succeeded", "Skipped")), steps[-1])
        line = (st.get("phase", "Pending"), st.get("progress", "-"), current.get("name", "-"),
                current.get("state", "-"), current.get("message", ""))
        if line != last:
            say(f"  [{time.monotonic() - t0:5.1f}s] phase={line[0]:<9} step={line[1]} "
                f"{line[2]} {line[3]}: {line[4]}")
            last = line
        if st.get("phase") in ("Succeeded", "Failed", "Interrupted", "Planned"):
            return rb
        time.sleep(0.3)
    raise SystemExit("the rollback did not finish in time")


def run(args) -> int:
    step("Building (first time only: about 11 minutes on 2 cores) and starting the local control plane")
    bin_dir = build_binaries()
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-demo-"))
    cp = ControlPlane.start(run_dir / "cluster", bin_dir)
    operator = None
    demo = Demo(cp)
    try:
        say(f"API server {cp.server} up in {cp.started_in:.1f}s; logs in {cp.log_dir}")
        demo.kubectl("get", "nodes")

        step("Installing the Rollback CRD")
        demo.kubectl("apply", "-f", str(REPO / "crds" / "rollbacks.rewind.dev.yaml"))
        demo.kubectl("wait", "--for=condition=Established", "crd/rollbacks.rewind.dev")

        step("Deploying the booking app: release 2.3.0 (good)")
        demo.kubectl("apply", "-f", str(HERE / "namespace.yaml"))
        # A generated credential: never a value from the repository, never printed.
        demo.kubectl("create", "secret", "generic", "google-oauth", "-n", NS,
                     f"--from-literal=client-secret={secrets.token_urlsafe(24)}")
        demo.kubectl("apply", "-f", str(HERE / "app-v2.3.0.yaml"))
        demo.kubectl("rollout", "status", "deployment/appointmentbooking", "-n", NS, "--timeout=120s")

        step("Release 2.4.0 goes out and breaks OAuth sign-in")
        demo.kubectl("apply", "-f", str(HERE / "app-v2.4.0-bad.yaml"))
        demo.kubectl("rollout", "status", "deployment/appointmentbooking", "-n", NS, "--timeout=120s")
        demo.kubectl("rollout", "history", "deployment/appointmentbooking", "-n", NS)

        step("Starting the Rewind operator (rewind run)")
        log = run_dir / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "rewind.cli", "run", "--namespace", NS,
             "--kubeconfig", str(cp.kubeconfig)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        say(f"operator log: {log}")

        step("The on-call engineer applies the Rollback")
        say((HERE / "rollback.yaml").read_text().rstrip())
        demo.kubectl("apply", "-f", str(HERE / "rollback.yaml"))

        step("Progress, live")
        rb = watch(demo)

        step("Result")
        demo.kubectl("get", "rollbacks", "-n", NS)
        demo.kubectl("get", "rollbacks", "-n", NS, "-o", "wide")
        say("\nConditions:")
        for c in rb["status"]["conditions"]:
            say(f"  {c['type']:<20} {c['status']:<6} {c['reason']:<22} {c['message']}")
        say("\nWhat changed (status.plan[0].diff):")
        say(rb["status"]["plan"][0].get("diff") or "  (nothing)")
        demo.kubectl("get", "deployment", "appointmentbooking", "-n", NS, "-o",
                     "jsonpath={.spec.template.spec.containers[0].image}{'\\n'}")
        demo.kubectl("rollout", "history", "deployment/appointmentbooking", "-n", NS)
        demo.kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.kind=Rollback",
                     "--sort-by=.metadata.resourceVersion",
                     "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message")
        ok = rb["status"]["phase"] == "Succeeded"
        say(f"\nRollback {rb['status']['phase']} in {rb['status'].get('duration')} "
            f"(target for {rb['spec']['severity']}: 15m; within target: {rb['status'].get('withinTarget')}).")
        if args.keep:
            say(f"\nStill running. export KUBECONFIG={cp.kubeconfig}; export PATH={bin_dir}:$PATH")
            say("Press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        if operator:
            operator.terminate()
            operator.wait(timeout=15)
        cp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
