"""`kubectl rewind watch` and `kubectl rewind abort`: follow one Rollback until it ends, on a
Kubernetes watch of that one object (no polling), with a live view on a terminal and one line per
change otherwise; the exit code says how it ended."""

from __future__ import annotations

import math
import sys
import time

from rewind.adapters.kube import MERGE_PATCH, ROLLBACKS
from rewind.api.v1alpha1 import GROUP, PLURAL, VERSION
from rewind.commands import common as c
from rewind.commands.common import CommandError
from rewind.engine import ABORT_ANNOTATION, abort_requested

FALLBACK_USER = "kubectl rewind"
WATCH_SLICE = 300          # one watch request lasts at most this long, then it is renewed


class Deleted(Exception):
    pass


class Timeout(Exception):
    pass


def follow(kube, namespace: str, name: str, obj: dict, view, timeout: float) -> dict:
    """Feeds `view` every change of the Rollback until it reaches a terminal phase; returns it.
    Raises Timeout, or Deleted when the Rollback goes away first."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(kube.api)
    deadline = time.monotonic() + timeout if timeout else None
    view.update(obj)
    rv = obj["metadata"]["resourceVersion"]
    while not c.ended(obj):
        remaining = deadline - time.monotonic() if deadline else WATCH_SLICE
        if remaining <= 0:
            raise Timeout()
        seconds = max(1, math.ceil(min(remaining, WATCH_SLICE)))
        w = watch.Watch()
        try:
            for ev in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                               field_selector=f"metadata.name={name}", resource_version=rv,
                               allow_watch_bookmarks=True, timeout_seconds=seconds,
                               _request_timeout=seconds + 15):
                kind, o = ev["type"], ev["raw_object"]
                rv = o.get("metadata", {}).get("resourceVersion", rv)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    view.update(o)
                    raise Deleted()
                obj = o
                view.update(obj)
                if c.ended(obj) or (deadline and time.monotonic() >= deadline):
                    break
        except client.ApiException as e:
            if e.status != 410:
                raise
            obj = c.get_rollback(kube, namespace, name)     # the watch expired: read it, go on
            rv = obj["metadata"]["resourceVersion"]
            view.update(obj)
        finally:
            w.stop()
    return obj


# --- views -------------------------------------------------------------------------------------


class LineView:
    """One line per change: the phase, and each step's state and message. Stable for scripts."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.phase = object()
        self.steps: dict[str, tuple] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def update(self, obj: dict) -> None:
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, c.status(obj)
        phase = st.get("phase")
        if phase != self.phase and not c.ended(obj):
            self.phase = phase
            what = phase or "waiting for the operator (no status yet)"
            extra = f" ({spec.get('severity')}, deadline {st['deadline']})" if st.get("deadline") else ""
            self.say(f"rollback {meta['namespace']}/{meta['name']}: {what}{extra}")
        steps = st.get("steps") or []
        for i, rec in enumerate(steps):
            key = (rec.get("state"), rec.get("message"), rec.get("deadline"))
            before = self.steps.get(rec["name"])
            self.steps[rec["name"]] = key
            if before == key or (before is None and rec.get("state") == "Pending"):
                continue            # unchanged, or not started yet: nothing to say
            line = f"[{i + 1}/{len(steps)}] {rec['name']}: {rec.get('state')}"
            if rec.get("message"):
                line += f" - {rec['message']}"
            if rec.get("state") == "Waiting" and rec.get("deadline"):
                line += f" (waits until {rec['deadline']})"
            self.say(line)
        if c.ended(obj) and phase != self.phase:
            self.phase = phase
            self.say(c.outcome_line(obj))

    def note(self, text: str) -> None:
        self.say(text)


class LiveView:
    """A rich Live view: the phase, a progress bar of the steps, and each step's state."""

    def __init__(self):
        from rich.console import Console

        self.console = Console()
        self.obj: dict | None = None
        self.live = None

    def __enter__(self):
        from rich.live import Live

        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def update(self, obj: dict) -> None:
        self.obj = obj
        if self.live:
            self.live.refresh()

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def __rich__(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        obj = self.obj
        if obj is None:
            return Text("...")
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, c.status(obj)
        steps, plan = st.get("steps") or [], st.get("plan") or []
        phase = st.get("phase") or "waiting for the operator"
        done = sum(1 for r in steps if r.get("state") in ("Succeeded", "Skipped", "Failed", "Interrupted"))
        head = Text.assemble((f"rollback {meta['namespace']}/{meta['name']}  ", "bold"),
                             (phase, c.PHASE_STYLE.get(phase, "")),
                             f"  {spec.get('severity', '')}  {c.elapsed(obj) or ''}")
        if st.get("deadline") and not c.ended(obj):
            left = (c.parse_time(st["deadline"]) - c.utcnow()).total_seconds()
            head.append(f"  deadline in {c.human_seconds(left)}" if left >= 0 else "  deadline missed",
                        style="" if left >= 0 else "red")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(len(steps), 1), completed=done, width=40),
                    Text(f"{done}/{len(steps)} steps"))
        t = Table(box=None, pad_edge=False, show_header=False, padding=(0, 2, 0, 0))
        for i, rec in enumerate(steps):
            state = rec.get("state", "")
            extra = rec.get("message") or ""
            if state == "Waiting" and rec.get("deadline"):
                left = (c.parse_time(rec["deadline"]) - c.utcnow()).total_seconds()
                extra += f"  (gives up in {c.human_seconds(left)})"
            cleanup = " (cleanup)" if i < len(plan) and plan[i].get("cleanup") else ""
            t.add_row(f"{i + 1}.", rec["name"] + cleanup, Text(state, style=c.STATE_STYLE.get(state, "")),
                      Text(extra, overflow="fold"))
        parts = [head, bar, t]
        if c.ended(obj):
            parts.append(Text(c.outcome_line(obj), style=c.PHASE_STYLE.get(st.get("phase"), "")))
        return Group(*parts)


def view():
    return LiveView() if c.is_tty() else LineView()


# --- watch -------------------------------------------------------------------------------------


def run_watch(args) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    return _follow_and_exit(s, args.name, obj, args.timeout)


def _follow_and_exit(s, name: str, obj: dict, timeout: float, aborting: bool = False) -> int:
    v = view()
    try:
        with v:
            obj = follow(s.kube, s.namespace, name, obj, v, timeout)
    except Timeout:
        print(f"error: timed out after {timeout:g}s waiting for rollback {s.namespace}/{name} to end "
              f"(it is {c.phase(obj) or 'not started'}, step {c.status(obj).get('progress') or '-'})",
              file=sys.stderr)
        return c.TIMEOUT
    except Deleted:
        print(f"error: rollback {s.namespace}/{name} was deleted before it ended", file=sys.stderr)
        return c.FAILED
    if aborting:
        return _abort_outcome(obj)
    return c.exit_code_of(obj)


# --- abort -------------------------------------------------------------------------------------


def run_abort(args) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    if c.ended(obj):
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} already ended "
                                     f"({c.phase(obj)}); there is nothing to abort")
    already = abort_requested(obj)
    if already:
        print(f"{c.KIND_REF}/{args.name}: an abort was already requested by {already}")
    else:
        who = c.whoami(s.kube) or FALLBACK_USER
        obj = s.kube.patch(ROLLBACKS, s.namespace, args.name,
                           {"metadata": {"annotations": {ABORT_ANNOTATION: who}}}, MERGE_PATCH)
        print(f"{c.KIND_REF}/{args.name} abort requested (by {who})")
    if args.no_wait:
        return c.OK
    return _follow_and_exit(s, args.name, obj, args.timeout, aborting=True)


def _abort_outcome(obj: dict) -> int:
    """0 when the abort took effect and everything around the rollback was put back."""
    ready = c.condition(obj, "Ready") or {}
    hooks = c.condition(obj, "HooksUndone")
    if c.phase(obj) == "Failed" and ready.get("reason") == "Aborted":
        if hooks and hooks.get("status") == "False":
            print(f"error: aborted, but not everything was put back: {hooks.get('message')}", file=sys.stderr)
            return c.FAILED
        return c.OK
    print(f"error: the rollback ended {c.phase(obj)} ({ready.get('reason', '?')}) before the abort "
          "took effect", file=sys.stderr)
    return c.FAILED
