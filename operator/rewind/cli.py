"""The `rewind` command line (also installed as `kubectl-rewind`, so `kubectl rewind` works).

    rewind run [--namespace NS ...] [--kubeconfig PATH]   run the operator
    rewind crd [--write]                                  render the Rollback CRD from the models
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rewind import __version__

REPO_CRD = Path(__file__).resolve().parents[2] / "crds" / "rollbacks.rewind.dev.yaml"


class _QuietWaiting(logging.Filter):
    """kopf logs every `TemporaryError` at ERROR; waiting for a rollout is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily: waiting" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def _run(args) -> int:
    import kopf

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        os.environ["REWIND_KUBECONFIG"] = args.kubeconfig
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:
        h.addFilter(_QuietWaiting())
    import rewind.handlers  # noqa: F401 - registers the handlers

    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or None,
        liveness_endpoint=args.liveness,
    )
    return 0


def _crd(args) -> int:
    from rewind.api.crd import render_yaml

    text = render_yaml()
    if args.write:
        REPO_CRD.parent.mkdir(parents=True, exist_ok=True)
        REPO_CRD.write_text(text)
        print(f"wrote {REPO_CRD}")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewind",
        description="Rewind: roll a broken production system back to a known-good state.",
    )
    parser.add_argument("--version", action="version", version=f"rewind {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append",
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=_run)
    crd = sub.add_parser("crd", help="render the Rollback CRD from the models")
    crd.add_argument("--write", action="store_true", help=f"write it to {REPO_CRD.relative_to(REPO_CRD.parents[1])}")
    crd.set_defaults(func=_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
