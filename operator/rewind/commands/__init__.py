"""`kubectl rewind get | describe | watch | plan | abort | approve | deny | resume-sync | undo`: the incident commands, with kubectl's
habits (-n/--namespace, -A/--all-namespaces, -o yaml|json|wide|name, --kubeconfig, --context) and
exit codes a script can use (see common.EXIT_CODES). They act with the caller's own credentials.
"""

from __future__ import annotations

import argparse
import sys

from rewind.commands import common

COMMANDS = ("get", "describe", "watch", "plan", "abort", "approve", "deny", "leftovers", "cleanup",
            "resume-sync", "undo")


def _guarded(func):
    """Runs a command; prints errors the way kubectl does and maps them to exit codes."""
    def run(args) -> int:
        from rewind.adapters.kube import KubeError

        try:
            return func(args)
        except common.CommandError as e:
            print(e.message, file=sys.stderr)
            return e.code
        except KubeError as e:
            print(common.server_error(e), file=sys.stderr)
            return common.NOT_FOUND if e.not_found else common.FAILED
        except KeyboardInterrupt:
            return 130
        except Exception as e:  # noqa: BLE001 - urllib3/socket errors: the server is not reachable
            import urllib3

            if isinstance(e, (urllib3.exceptions.HTTPError, OSError)):
                print(f"error: cannot reach the Kubernetes API server: {e}", file=sys.stderr)
                return common.FAILED
            raise
    return run


def _fill(text: str) -> str:
    import textwrap

    return "\n\n".join(textwrap.fill(part, 92) for part in text.split("\n\n"))


def _epilog(note: str) -> str:
    return common.EXIT_CODES + "\n\n" + _fill(note)


def register(sub) -> None:
    """Adds the incident commands to the `rewind` parser's subcommands."""
    from rewind.commands import follow, planning, show

    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "get", help="list Rollbacks, as `kubectl get rollbacks` (severity, phase, step n/m, verified, duration, age)",
        formatter_class=fmt,
        description=_fill("List Rollbacks (all in the namespace, or those named): NAME SEVERITY PHASE STEP "
                          "VERIFIED DURATION AGE; -o wide adds the current (or failed) step, the Ready "
                          "condition's reason, the deadline and the spec's reason."),
        epilog=_epilog("A missing NAME prints kubectl's NotFound error on stderr and "
                       "exits 3 (the others found are still printed)."))
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-l", "--selector", help="label selector, e.g. team=booking")
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"), help="output format")
    common.add_connection_flags(p)
    p.set_defaults(func=_guarded(show.get))

    p = sub.add_parser(
        "describe", help="one Rollback in full: steps, timings, conditions, checks, notifications, what holds it, what next",
        formatter_class=fmt,
        description=_fill("Describe one Rollback: its steps (state, timings, the deadline of a waiting step, "
                          "messages), conditions, verification results, notifications, hooks, the report, "
                          "what holds it now and, when it stalled or failed, what to do next."),
        epilog=common.EXIT_CODES)
    p.add_argument("name", metavar="NAME")
    common.add_connection_flags(p)
    p.set_defaults(func=_guarded(show.describe))

    p = sub.add_parser(
        "watch", help="follow one Rollback until it ends; the exit code says how it ended",
        formatter_class=fmt,
        description=_fill("Follow one Rollback on a Kubernetes watch until it ends: a live view on a "
                          "terminal, one line per change otherwise."),
        epilog=_epilog("For watch: 0 Succeeded or Planned (dry run), 1 Failed or "
                       "Interrupted (or deleted before it ended), 3 not found, 4 timeout."))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", type=common.parse_timeout, default=0.0,
                   help="give up after this long (e.g. 90s, 5m; default 0: wait until it ends)")
    common.add_connection_flags(p)
    p.set_defaults(func=_guarded(follow.run_watch))

    p = sub.add_parser(
        "plan", help="what applying a Rollback file would do, changing nothing",
        formatter_class=fmt,
        description=_fill("Plan a Rollback without creating it: a server-side dry-run create (the CRD's "
                          "schema and CEL rules), then every step's preflight run here with YOUR "
                          "credentials (reads only), in the operator's order: the steps with targets, "
                          "revisions, pod template diffs, Secret changes (names, key names, hashes; never "
                          "values) and warnings. A check that needs what only the cluster reaches (the "
                          "database) is reported as not checked from here."),
        epilog=_epilog("For plan: 0 it would run, 1 refused (the server or a "
                       "preflight; the reasons are printed) or not checkable from here, "
                       "2 the file is unreadable or not one Rollback."))
    p.add_argument("-f", "--filename", required=True, help="the Rollback's YAML or JSON file ('-': stdin)")
    p.add_argument("-o", "--output", choices=("yaml", "json"), help="print the plan as data")
    common.add_connection_flags(p)
    p.set_defaults(func=_guarded(planning.run_plan))

    p = sub.add_parser(
        "abort", help="stop a running Rollback between steps (annotation rewind.dev/abort), then wait for it to end",
        formatter_class=fmt,
        description=_fill("Ask the operator to stop a running Rollback: sets the annotation rewind.dev/abort "
                          "to your user name (from a SelfSubjectReview; 'kubectl rewind' if the server does "
                          "not say). No new step starts, a step waiting for a rollout or Job stops waiting, "
                          "the cleanup steps (exit maintenance, resume monitoring) run, and it ends Failed "
                          "with reason Aborted. Waits for that unless --no-wait."),
        epilog=_epilog("For abort: 0 it ended Failed (Aborted) with everything put "
                       "back (with --no-wait: the request was recorded), 1 it had already "
                       "ended (refused), or ended otherwise before the abort took effect, "
                       "or a cleanup step failed; 3 not found; 4 timeout."))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--no-wait", action="store_true", help="return once the abort is requested")
    p.add_argument("--timeout", type=common.parse_timeout, default=0.0,
                   help="how long to wait for it to end (e.g. 2m; default 0: until it ends)")
    common.add_connection_flags(p)
    p.set_defaults(func=_guarded(follow.run_abort))

    from rewind.commands import approve, leftovers, resume_sync, undo
    approve.register(sub, _guarded, _fill, _epilog)
    undo.register(sub, _guarded, _fill, _epilog)
    leftovers.register(sub, _guarded, _fill, _epilog)
    resume_sync.register(sub, _guarded, _fill, _epilog)


EXIT_CODES_HELP = ("incident commands (as `kubectl rewind ...`): get, describe, watch, plan, abort, "
                   "approve, deny, leftovers, cleanup, resume-sync, undo; "
                   "they take -n/--namespace, --kubeconfig, --context like kubectl.\n\n"
                   + common.EXIT_CODES)
