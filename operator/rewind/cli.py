"""The `rewind` command line (also installed as `kubectl-rewind`, so `kubectl rewind` works).

    rewind run [--namespace NS ...] [--kubeconfig PATH]   run the operator
    rewind crd [--write]                                  render the CRDs from the models
    rewind history secret/NAME [-n NS]                    a tracked Secret's recorded versions
                                                          (key names, sizes, hashes; never values)
    rewind report NAME [-n NS]                            a Rollback's incident report
    rewind get|describe|watch|plan|abort ...              the incident commands (rewind/commands/);
                                                          `kubectl rewind COMMAND --help` for each
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from rewind import __version__

REPO_CRD = Path(__file__).resolve().parents[2] / "crds" / "rollbacks.rewind.dev.yaml"
REPO_POLICY_CRDS = REPO_CRD.with_name("policies.rewind.dev.yaml")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for log collectors): time, level, logger, message; kopf's
    per-object context, when present, as `object`."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        k8s = getattr(record, "k8s_ref", None)
        if k8s:
            out["object"] = {k: k8s.get(k) for k in ("namespace", "name", "uid") if k8s.get(k)}
        if record.exc_info:
            out["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(out)


def _run(args) -> int:
    import kopf

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        os.environ["REWIND_KUBECONFIG"] = args.kubeconfig
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.log_format == "json":
        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter())
    # httpx logs every request's URL at INFO (and httpcore more at DEBUG); webhook and hook URLs
    # are secrets, so neither may log below WARNING, even with --verbose.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from rewind import authz
    authz.SETTINGS.job_image = args.job_image
    authz.SETTINGS.tool_image = args.tool_image
    from rewind.steps import gitops
    gitops.SETTINGS = gitops.Settings(argocd_namespace=args.argocd_namespace)
    import rewind.handlers  # noqa: F401 - registers the handlers

    if args.metrics_address:
        from rewind import metrics
        metrics.serve(args.metrics_address)

    peering = {}
    if args.peering:
        # Leader election through kopf's peering: the replica with the highest priority drives
        # rollbacks, the others stand by. Older replicas rank higher, so a restarted replica
        # (the newest) never preempts a running leader; it only takes over when the leader's
        # keep-alive lapses (--peering-lifetime seconds).
        priority = -time.time_ns() // 1000
        os.environ.update(REWIND_PEERING=args.peering, REWIND_PEERING_LIFETIME=str(args.peering_lifetime),
                          REWIND_PEERING_PRIORITY=str(priority),
                          REWIND_PEERING_NAMESPACE=(args.namespace or [""])[0])
        peering = {"standalone": False, "peering_name": args.peering, "priority": priority}
    kopf.run(
        standalone=not args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
        **{k: v for k, v in peering.items() if k != "standalone"},
    )
    return 0


def _crd(args) -> int:
    from rewind.api.crd import render_policy_yaml, render_yaml

    texts = {REPO_CRD: render_yaml(), REPO_POLICY_CRDS: render_policy_yaml()}
    for path, text in texts.items():
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        else:
            sys.stdout.write(text if path == REPO_CRD else "---\n" + text)
    return 0


def _history(args) -> int:
    from rewind import history
    from rewind.adapters.kube import Kube, load_api_client

    kind, _, name = args.target.partition("/")
    if kind not in ("secret", "secrets") or not name:
        print("usage: rewind history secret/NAME [-n NAMESPACE]", file=sys.stderr)
        return 2
    kube = Kube(load_api_client(args.kubeconfig))
    namespace = args.namespace or _current_namespace(args.kubeconfig)
    entries = history.history(kube, namespace, name)
    if not entries:
        print(f"no history for Secret {namespace}/{name} (label it {history.TRACK_LABEL}=true)")
        return 1
    print(f"{'REVISION':<9} {'RECORDED':<21} {'HASH':<20} KEYS")
    for e in entries:
        ann = e["metadata"].get("annotations") or {}
        print(f"{history.revision_of(e):<9} {ann.get('rewind.dev/recorded-at', '-'):<21} "
              f"{ann.get(history.HASH_ANNOTATION, '-')[:19]:<20} {', '.join(history.key_summary(e))}")
    return 0


def _report(args) -> int:
    from rewind import incident
    from rewind.adapters.kube import ROLLBACKS, Kube, KubeError, load_api_client
    from rewind.adapters.kube import CONFIG_MAPS
    from rewind.steps.report import KEY

    kube = Kube(load_api_client(args.kubeconfig))
    namespace = args.namespace or _current_namespace(args.kubeconfig)
    try:
        rb = kube.get(ROLLBACKS, namespace, args.name)
    except KubeError as e:
        print(f"error: Rollback {namespace}/{args.name}: {'not found' if e.not_found else e.reason or e.status}",
              file=sys.stderr)
        return 1
    ref = (rb.get("status") or {}).get("report", {}).get("configMapRef")
    if ref:
        try:
            sys.stdout.write(kube.get(CONFIG_MAPS, namespace, ref)["data"][KEY])
            undone_by = (rb["metadata"].get("annotations") or {}).get(incident.UNDONE_BY)
            if undone_by:   # noted on the object after this report was written
                sys.stdout.write(f"\n**Undone by:** {namespace}/{undone_by} (noted after this report was written)\n")
            return 0
        except (KubeError, KeyError):
            print(f"note: the report ConfigMap {ref} cannot be read; rendering it from the "
                  "Rollback's status instead", file=sys.stderr)
    else:
        print("note: the rollback is not over yet; this is its report so far, rendered from its "
              "status", file=sys.stderr)
    sys.stdout.write(incident.render(rb))
    return 0


def _current_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        return active.get("context", {}).get("namespace") or "default"
    except config.ConfigException:
        return "default"


def build_parser() -> argparse.ArgumentParser:
    from rewind.commands import EXIT_CODES_HELP, register

    parser = argparse.ArgumentParser(
        prog="rewind",
        description="Rewind: roll a broken production system back to a known-good state.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"rewind {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append",
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--peering", metavar="NAME",
                     help="run with other replicas: leader election through the kopf peering object "
                          "NAME (ClusterKopfPeering when cluster-wide, KopfPeering in each watched "
                          "namespace); default: standalone, a single replica")
    run.add_argument("--peering-lifetime", type=int, default=10, metavar="SECONDS",
                     help="how long a replica's keep-alive counts; a standby takes over this long "
                          "after the leader stops (default 10)")
    run.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. :8081")
    run.add_argument("--job-image", default="postgres:16", metavar="IMAGE",
                     help="the PostgreSQL client image of database Jobs when a Rollback names none, and "
                          "the only one allowed when the policy lists no jobImages (default postgres:16)")
    run.add_argument("--tool-image", default=os.environ.get("REWIND_TOOL_IMAGE", f"rewind:{__version__}"),
                     metavar="IMAGE",
                     help="the image that fetches backups from object storage and uploads the "
                          "pre-rollback dump there (`rewind s3`): the operator's own image "
                          f"(default $REWIND_TOOL_IMAGE, else rewind:{__version__})")
    run.add_argument("--argocd-namespace", metavar="NS",
                     default=os.environ.get("REWIND_ARGOCD_NAMESPACE", "argocd"),
                     help="where Argo CD's Applications live, for targets it tracks by label or by a "
                          "tracking id without a namespace (default argocd, or $REWIND_ARGOCD_NAMESPACE)")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="log lines as text (default) or one JSON object per line")
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=_run)
    crd = sub.add_parser("crd", help="render the Rollback CRD from the models")
    crd.add_argument("--write", action="store_true", help=f"write it to {REPO_CRD.relative_to(REPO_CRD.parents[1])}")
    crd.set_defaults(func=_crd)
    hist = sub.add_parser("history", help="a tracked Secret's recorded versions (never values)")
    hist.add_argument("target", help="secret/NAME")
    hist.add_argument("--namespace", "-n")
    hist.add_argument("--kubeconfig")
    hist.set_defaults(func=_history)
    rep = sub.add_parser("report", help="a Rollback's incident report")
    rep.add_argument("name", help="the Rollback's name")
    rep.add_argument("--namespace", "-n")
    rep.add_argument("--kubeconfig")
    rep.set_defaults(func=_report)
    s3 = sub.add_parser("s3", help="(in a database Job) fetch a backup from object storage, or upload one")
    s3.add_argument("action", choices=("get", "put"))
    s3.add_argument("file")
    s3.set_defaults(func=_s3)
    register(sub)
    return parser


def _s3(args) -> int:
    from rewind.adapters import s3
    return s3.main([args.action, args.file])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
