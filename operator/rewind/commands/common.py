"""What every `kubectl rewind` command shares: the caller's own credentials, the namespace as
kubectl picks it, exit codes, errors printed the way kubectl prints them, times and tables.

Output is plain (aligned columns, one line per item) unless stdout is a terminal; then `rich`
draws it. Plain output is stable: scripts and tests read it.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

from rewind import __version__
from rewind.adapters.kube import ROLLBACKS, Kube, KubeError
from rewind.api.v1alpha1 import GROUP, PLURAL, TERMINAL_PHASES

# Exit codes, the same for every command (documented in `kubectl rewind --help`).
OK = 0             # done; for watch/abort: the rollback ended as hoped
FAILED = 1         # the rollback failed, preflight refused, an API error, a refused abort
USAGE = 2          # bad flags or arguments, an unreadable or malformed file
NOT_FOUND = 3      # the Rollback does not exist
TIMEOUT = 4        # --timeout passed before the rollback ended

EXIT_CODES = f"""exit codes:
  {OK}  success (watch/abort: the rollback ended Succeeded or Planned / was aborted)
  {FAILED}  the rollback ended Failed or Interrupted, preflight refused it, the API server
     refused a request, or there was nothing to abort
  {USAGE}  usage error (bad flags, unreadable or malformed file)
  {NOT_FOUND}  the Rollback was not found (kubectl itself exits 1 for NotFound; 3 lets a
     script tell "missing" from "failed")
  {TIMEOUT}  --timeout passed before the rollback ended"""

USER_AGENT = f"kubectl-rewind/{__version__}"
RESOURCE = f"{PLURAL}.{GROUP}"          # rollbacks.rewind.dev, as kubectl names it in errors
KIND_REF = f"rollback.{GROUP}"          # rollback.rewind.dev/NAME, as `kubectl get -o name`


class CommandError(Exception):
    """Ends a command: `message` on stderr, exit with `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def server_error(e: KubeError) -> str:
    """kubectl's wording: `Error from server (NotFound): rollbacks.rewind.dev "x" not found`."""
    return f"Error from server ({e.reason or e.status}): {e.message}"


def not_found(name: str) -> CommandError:
    return CommandError(NOT_FOUND, f'Error from server (NotFound): {RESOURCE} "{name}" not found')


# --- the caller's cluster ----------------------------------------------------------------------


def add_connection_flags(p, namespace: bool = True) -> None:
    if namespace:
        p.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's, "
                                                 "else 'default')")
    p.add_argument("--kubeconfig", help="path to the kubeconfig file (default: $KUBECONFIG, then "
                                        "~/.kube/config, then the in-cluster service account)")
    p.add_argument("--context", help="the kubeconfig context to use (default: the current one)")


@dataclass
class Session:
    kube: Kube
    namespace: str


def connect(args) -> Session:
    """The caller's own credentials, found as kubectl finds them (never the operator's)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=args.kubeconfig, context=args.context,
                                client_configuration=cfg)
        namespace = _context_namespace(args.kubeconfig, args.context)
    except (config.ConfigException, OSError) as e:
        if args.kubeconfig or args.context:
            raise CommandError(FAILED, f"error: cannot load the kubeconfig: {e}") from None
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            raise CommandError(FAILED, "error: no kubeconfig found ($KUBECONFIG, ~/.kube/config) and "
                                       "not running in a cluster; give --kubeconfig") from None
        namespace = _incluster_namespace()
    api = client.ApiClient(cfg)
    kube = Kube(api)
    api.user_agent = USER_AGENT     # not the operator's: the audit log tells them apart
    return Session(kube, getattr(args, "namespace", None) or namespace)


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def get_rollback(kube: Kube, namespace: str, name: str) -> dict:
    try:
        return kube.get(ROLLBACKS, namespace, name)
    except KubeError as e:
        if e.not_found:
            raise not_found(name) from None
        raise


def whoami(kube: Kube) -> str | None:
    """The caller's user name, as the API server authenticates it (SelfSubjectReview), or None."""
    try:
        review = kube.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    except Exception:  # noqa: BLE001 - an older server, or not allowed: the caller falls back
        return None
    return ((review.get("status") or {}).get("userInfo") or {}).get("username") or None


# --- reading a Rollback ------------------------------------------------------------------------


def status(obj: dict) -> dict:
    return obj.get("status") or {}


def phase(obj: dict) -> str | None:
    return status(obj).get("phase")


def ended(obj: dict) -> bool:
    return phase(obj) in TERMINAL_PHASES


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in status(obj).get("conditions") or [] if c.get("type") == type_), None)


def current_step(obj: dict) -> tuple[int, dict, dict | None] | None:
    """(index, ledger record, plan step) of the first step not finished, or None."""
    from rewind.plan import FINISHED_STATES

    st = status(obj)
    plan = st.get("plan") or []
    for i, rec in enumerate(st.get("steps") or []):
        if rec.get("state") not in FINISHED_STATES:
            return i, rec, (plan[i] if i < len(plan) else None)
    return None


def failed_step(obj: dict) -> tuple[int, dict, dict | None] | None:
    """The first step (not a cleanup step) that failed or was interrupted."""
    st = status(obj)
    plan = st.get("plan") or []
    for i, rec in enumerate(st.get("steps") or []):
        p = plan[i] if i < len(plan) else None
        if rec.get("state") in ("Failed", "Interrupted") and not (p or {}).get("cleanup"):
            return i, rec, p
    return None


def exit_code_of(obj: dict) -> int:
    return OK if phase(obj) in ("Succeeded", "Planned") else FAILED


def outcome_line(obj: dict) -> str:
    """One line on how a finished rollback ended (the Ready condition's reason and message)."""
    meta, st = obj["metadata"], status(obj)
    ready = condition(obj, "Ready") or {}
    took = f" in {st['duration']}" if st.get("duration") else ""
    reason = f" ({ready['reason']})" if ready.get("reason") else ""
    text = f": {ready['message']}" if ready.get("message") else ""
    return f"rollback {meta['namespace']}/{meta['name']} {st.get('phase')}{reason}{took}{text}"


# --- time --------------------------------------------------------------------------------------


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(delta: datetime.timedelta) -> str:
    """kubectl's age format (k8s.io/apimachinery/pkg/util/duration.HumanDuration)."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def human_seconds(seconds: float) -> str:
    return human_duration(datetime.timedelta(seconds=seconds))


def age(value: str | None, now: datetime.datetime | None = None) -> str:
    t = parse_time(value)
    return human_duration((now or utcnow()) - t) if t else "<unknown>"


def clock(value: str | None) -> str:
    """A status time as kubectl describe would want it: the timestamp and how long ago."""
    t = parse_time(value)
    if not t:
        return "<none>"
    delta = utcnow() - t
    rel = f"{human_duration(delta)} ago" if delta.total_seconds() >= 0 else f"in {human_duration(-delta)}"
    return f"{value} ({rel})"


def elapsed(obj: dict, now: datetime.datetime | None = None) -> str | None:
    """status.duration once over; while running, the time since it started."""
    from rewind.plan import format_duration

    st = status(obj)
    if st.get("duration"):
        return st["duration"]
    started = parse_time(st.get("startedAt"))
    if started and not ended(obj):
        return format_duration((now or utcnow()) - started)
    return None


def parse_timeout(text: str) -> float:
    """kubectl's duration flags: 90, 90s, 5m, 1h30m (0: no timeout)."""
    import re

    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        import argparse
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 5m or 1h30m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# --- output ------------------------------------------------------------------------------------


def is_tty() -> bool:
    return sys.stdout.isatty()


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], styles: dict[str, dict[str, str]] | None = None) -> None:
    """A kubectl-style table: plain aligned columns (3 spaces apart), or a rich table on a TTY.
    `styles` maps a column to {cell value: rich style}, e.g. the phase column's colours."""
    rows = [[str(c) for c in r] for r in rows]
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0))
        for h in headers:
            t.add_column(h, no_wrap=True, overflow="ellipsis")
        for r in rows:
            t.add_row(*[f"[{styles[h].get(c, '')}]{_escape(c)}[/]" if styles and h in styles and styles[h].get(c)
                        else _escape(c) for h, c in zip(headers, r)])
        Console().print(t)
        return
    print(format_table(headers, rows), end="")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "", gap: int = 3) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out = []
    for r in [list(headers), *rows]:
        out.append(indent + (" " * gap).join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return "".join(out)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


PHASE_STYLE = {"Succeeded": "green", "Planned": "cyan", "Running": "yellow", "Failed": "bold red",
               "Interrupted": "bold red", "Pending": "dim"}
STATE_STYLE = {"Succeeded": "green", "Skipped": "dim", "Running": "yellow", "Waiting": "yellow",
               "Pending": "dim", "Failed": "bold red", "Interrupted": "bold red"}
