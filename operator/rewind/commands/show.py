"""`kubectl rewind get` and `kubectl rewind describe`: where each rollback stands, and for one of
them everything its status says, what holds it now and what to do next."""

from __future__ import annotations

import json
import sys

from rewind.adapters.kube import EVENTS, ROLLBACKS, KubeError
from rewind.commands import common as c
from rewind.commands.common import CommandError


# --- get ---------------------------------------------------------------------------------------


def get(args) -> int:
    if args.all_namespaces and args.names:
        raise CommandError(c.USAGE, "error: a resource cannot be retrieved by name across all "
                                    "namespaces; give -n NAMESPACE instead of -A")
    s = c.connect(args)
    namespace = None if args.all_namespaces else s.namespace
    missing: list[str] = []
    if args.names:
        items = []
        for name in args.names:
            try:
                items.append(c.get_rollback(s.kube, namespace, name))
            except CommandError:
                missing.append(name)
    else:
        query = {"labelSelector": args.selector} if args.selector else None
        items = s.kube.request("GET", ROLLBACKS.path(namespace), query=query).get("items", [])

    if args.output in ("yaml", "json"):
        for o in items:
            o.get("metadata", {}).pop("managedFields", None)
            o.setdefault("apiVersion", f"{c.GROUP}/v1alpha1")
            o.setdefault("kind", "Rollback")
        doc = items[0] if len(args.names) == 1 and items else {
            "apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        if items or not missing:
            if args.output == "json":
                print(json.dumps(doc, indent=4))
            else:
                import yaml
                sys.stdout.write(yaml.safe_dump(doc, sort_keys=True, default_flow_style=False))
    elif args.output == "name":
        for o in items:
            print(f"{c.KIND_REF}/{o['metadata']['name']}")
    elif items:
        _table(items, wide=args.output == "wide", namespaces=args.all_namespaces)
    elif not missing:
        where = "any namespace" if args.all_namespaces else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
    for name in missing:
        print(c.not_found(name).message, file=sys.stderr)
    return c.NOT_FOUND if missing else c.OK


def _table(items: list[dict], wide: bool, namespaces: bool) -> None:
    now = c.utcnow()
    headers = ["NAME", "SEVERITY", "PHASE", "STEP", "VERIFIED", "DURATION", "AGE"]
    if namespaces:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["CURRENT", "READY-REASON", "DEADLINE", "REASON"]
    rows = []
    for o in items:
        meta, spec, st = o["metadata"], o.get("spec") or {}, c.status(o)
        verified = c.condition(o, "Verified") or {}
        row = [meta["name"], spec.get("severity") or "<none>", st.get("phase") or "<none>",
               st.get("progress") or "<none>", verified.get("status") or "<none>",
               c.elapsed(o, now) or "<none>", c.age(meta.get("creationTimestamp"), now)]
        if namespaces:
            row.insert(0, meta.get("namespace", ""))
        if wide:
            at = c.failed_step(o) if c.ended(o) else c.current_step(o)
            current = f"{at[1]['name']}({at[1].get('state')})" if at else "<none>"
            row += [current, (c.condition(o, "Ready") or {}).get("reason") or "<none>",
                    st.get("deadline") or "<none>", spec.get("reason") or "<none>"]
        rows.append(row)
    c.table(headers, rows, {"PHASE": c.PHASE_STYLE})


# --- describe ----------------------------------------------------------------------------------


def describe(args) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    try:
        events = _events(s.kube, obj)
    except KubeError:
        events = None          # not allowed to list Events: describe the rest
    sys.stdout.write(render(obj, events))     # plain, as kubectl describe: long lines are not wrapped
    return c.OK


def _events(kube, obj: dict) -> list[dict]:
    meta = obj["metadata"]
    selector = f"involvedObject.uid={meta['uid']}"
    items = kube.request("GET", EVENTS.path(meta["namespace"]), query={"fieldSelector": selector}).get("items", [])
    return sorted(items, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                        int(e["metadata"].get("resourceVersion", "0") or 0)))


def render(obj: dict, events: list[dict] | None = None) -> str:
    """kubectl describe's layout: fields, then one section per part of the status."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, c.status(obj)
    lines: list[str] = []
    add = lines.append

    def field(label: str, value) -> None:
        add(f"{label + ':':<15}{value if value not in (None, '') else '<none>'}")

    field("Name", meta["name"])
    field("Namespace", meta["namespace"])
    field("Severity", spec.get("severity"))
    field("Reason", spec.get("reason"))
    requester = spec.get("requester") or {}
    if requester.get("username"):
        field("Requester", f"{requester['username']} (stamped by the API server)")
    if spec.get("requestedBy"):
        field("Requested By", f"{spec['requestedBy']} (declared)")
    if st.get("policy"):
        field("Policy", st["policy"])
    if st.get("breakGlass"):
        field("Break-Glass", "started before its approvals")
    for a in st.get("approvals") or []:
        field("Approval", f"{a.get('approver')} as {a.get('role')}: {a.get('decision')}"
              + ("" if a.get("counted") else f" (not counted: {a.get('reason')})"))
    for held in st.get("leases") or []:
        field("Holds", f"{held.get('target')} (Lease {held.get('lease')})")
    if spec.get("dryRun"):
        field("Dry Run", "true (plan and preflight only; nothing is changed)")
    abort = (meta.get("annotations") or {}).get("rewind.dev/abort")
    if abort:
        field("Abort", f"requested by {abort}")
    field("Phase", st.get("phase"))
    field("Progress", st.get("progress"))
    field("Created", c.clock(meta.get("creationTimestamp")))
    field("Started", c.clock(st.get("startedAt")))
    if st.get("deadline"):
        note = ""
        if st.get("withinTarget") is True:
            note = " (met)"
        elif st.get("withinTarget") is False:
            note = " (missed)"
        field("Deadline", c.clock(st["deadline"]) + note)
    if st.get("completedAt"):
        field("Completed", c.clock(st["completedAt"]))
    field("Duration", c.elapsed(obj))

    add("Steps:")
    plan = st.get("plan") or []
    steps = st.get("steps") or []
    if not steps:
        add("  <none>" if c.ended(obj) else "  <none yet: not planned>")
    for i, rec in enumerate(steps):
        p = plan[i] if i < len(plan) else {}
        add(f"  {i + 1}/{len(steps)}  {rec['name']}  {rec.get('state')}"
            + (f" ({rec['reason']})" if rec.get("reason") and rec.get("state") != "Succeeded" else ""))
        target = p.get("target") or {}
        what = f"{p.get('kind', '?')} of {target.get('kind', '?')} {target.get('name', '?')}"
        if p.get("kind") == "WorkloadRevision":
            what += (f": revision {p.get('currentRevision')} -> revision {p.get('toRevision')}'s template"
                     if p.get("action") != "NoOp" else f": already at revision {p.get('toRevision')}'s template")
            if rec.get("restoredRevision"):
                what += f" (now revision {rec['restoredRevision']})"
        if p.get("cleanup"):
            what += " (cleanup: runs even after a failure)"
        add(f"        {what}")
        timing = []
        if rec.get("startedAt"):
            timing.append(f"started {rec['startedAt']}")
        if rec.get("finishedAt"):
            timing.append(f"finished {rec['finishedAt']}")
            t0, t1 = c.parse_time(rec.get("startedAt")), c.parse_time(rec.get("finishedAt"))
            if t0 and t1:
                from rewind.plan import format_duration
                timing.append(f"took {format_duration(t1 - t0)}")
        if rec.get("attempts", 0) > 1:
            timing.append(f"{rec['attempts']} attempts")
        if rec.get("deadline"):
            timing.append(f"waits until {c.clock(rec['deadline'])}")
        if rec.get("nextAttemptAt"):
            timing.append(f"next attempt {c.clock(rec['nextAttemptAt'])}")
        if timing:
            add(f"        {', '.join(timing)}")
        if rec.get("message"):
            add(f"        {rec['message']}")
        for sc in p.get("secrets") or []:
            add(f"        Secret {sc['name']} <- {sc['source']}: {sc['fromHash'][:12]} -> {sc['toHash'][:12]}"
                f" (keys: {', '.join(sc.get('keys') or []) or 'none'})")

    add("Conditions:")
    conds = st.get("conditions") or []
    if conds:
        rows = [[x["type"], x["status"], x.get("reason", ""), x.get("message", "")] for x in conds]
        lines.extend(c.format_table(["Type", "Status", "Reason", "Message"], rows, indent="  ").rstrip("\n").split("\n"))
    else:
        add("  <none>")

    add("Verification:")
    checks = st.get("verification") or []
    if checks:
        rows = [[v["name"], v.get("kind", ""), v.get("outcome", ""), v.get("checkedAt", ""), v.get("detail") or ""]
                for v in checks]
        lines.extend(c.format_table(["Name", "Kind", "Outcome", "Checked", "Detail"], rows, indent="  ").rstrip("\n").split("\n"))
    else:
        add("  <none>")

    add("Notifications:")
    notes = st.get("notifications") or []
    if notes:
        rows = [[n["channel"], n["event"], n.get("state", ""), str(n.get("attempts", 0)),
                 n.get("sentAt") or (f"next {n['nextAttemptAt']}" if n.get("nextAttemptAt") else ""),
                 n.get("lastError") or ""] for n in notes]
        lines.extend(c.format_table(["Channel", "Event", "State", "Attempts", "Sent", "Last Error"], rows,
                                    indent="  ").rstrip("\n").split("\n"))
    else:
        add("  <none>")

    hooks = st.get("hooks") or {}
    if hooks:
        add("Hooks:")
        if hooks.get("serviceSelector"):
            add(f"  Service selector before the switch: {_labels(hooks['serviceSelector'])}")
        for k, n in (hooks.get("scaledReplicas") or {}).items():
            add(f"  Scaled down: {k} (was {n} replicas)")
        if hooks.get("silenceId"):
            add(f"  Alertmanager silence: {hooks['silenceId']}"
                + (f", ends by itself at {hooks['silenceEndsAt']}" if hooks.get("silenceEndsAt") else ""))

    db = st.get("database") or {}
    if db:
        add("Database:")
        for key, label in (("liveDatabase", "Live"), ("stagingDatabase", "Staging"),
                           ("preRollbackDatabase", "Kept aside"), ("preRollbackBackup", "Pre-rollback dump"),
                           ("backupSource", "Restored from"), ("swappedAt", "Swapped at")):
            if db.get(key):
                add(f"  {label + ':':<19}{db[key]}")

    report = st.get("report") or {}
    add("Report:")
    if report.get("configMapRef"):
        add(f"  ConfigMap {report['configMapRef']} (kubectl rewind report {meta['name']} -n {meta['namespace']})")
    elif report.get("message"):
        add(f"  not written: {report['message']}")
    else:
        add("  <none yet>" if not c.ended(obj) or st.get("phase") != "Planned" else "  <none: dry run>")

    add("Now:")
    for line in holding(obj):
        add(f"  {line}")
    nxt = next_steps(obj)
    if nxt:
        add("Next:")
        for line in nxt:
            add(f"  - {line}")

    if events is not None:
        add("Events:")
        if events:
            now = c.utcnow()
            rows = [[e.get("type", ""), e.get("reason", ""),
                     c.age(e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp"), now),
                     e.get("message", "")] for e in events[-20:]]
            lines.extend(c.format_table(["Type", "Reason", "Age", "Message"], rows, indent="  ").rstrip("\n").split("\n"))
        else:
            add("  <none>")
    return "\n".join(lines) + "\n"


def _labels(d: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items()))


def holding(obj: dict) -> list[str]:
    """What the rollback is doing or waiting for right now, from its status."""
    st = c.status(obj)
    abort = (obj["metadata"].get("annotations") or {}).get("rewind.dev/abort")
    if c.ended(obj):
        return [f"Nothing: it ended {st.get('phase')} at {st.get('completedAt') or '<unknown>'}."]
    if not st.get("phase"):
        return ["Waiting for the operator to pick it up (no status yet). Is the operator running, "
                "and does it watch this namespace?"]
    out = []
    if abort:
        out.append(f"An abort was requested by {abort}: no further step starts; the current step "
                   "finishes its write (a waiting step stops waiting), then the cleanup steps run.")
    at = c.current_step(obj)
    if at is None:
        out.append("Finishing: every step is done; the outcome is being written.")
        return out
    i, rec, p = at
    total = len(st.get("steps") or [])
    state = rec.get("state")
    what = f"Step {i + 1}/{total} {rec['name']} is {state}"
    if rec.get("message"):
        what += f": {rec['message']}"
    out.append(what + ("" if what.endswith(".") else "."))
    if rec.get("deadline"):
        out.append(f"It waits at most until {c.clock(rec['deadline'])}; then it fails (WaitTimedOut).")
    if rec.get("nextAttemptAt"):
        out.append(f"Next attempt at {c.clock(rec['nextAttemptAt'])}.")
    if not st.get("plan"):
        out = ["Planning: preflight is resolving the targets."]
    return out


# Hints by condition reason: what a person on call does next. {name} {ns} {target} {kind} are filled in.
HINTS = {
    "TargetNotFound": "Fix the spec (or create the missing object), then create a new Rollback.",
    "RevisionNotFound": "List the revisions kept: kubectl rollout history {kind_lower}/{target} -n {ns}; "
                        "then create a new Rollback with one of them as toRevision.",
    "WorkloadPaused": "Resume it first: kubectl rollout resume {kind_lower}/{target} -n {ns}; then create "
                      "a new Rollback.",
    "Forbidden": "Grant the operator the rewind-operator role in {ns} (manifests/rbac.yaml), or the "
                 "database role the rights named above; then create a new Rollback.",
    "NamespaceNotAllowed": "A Rollback only touches its own namespace: create it in the target's namespace.",
    "InvalidSpec": "Fix the spec as the message says, then create a new Rollback.",
    "RolloutFailed": "The restored template stays written; see why it does not roll out: kubectl rollout "
                     "status {kind_lower}/{target} -n {ns}; kubectl describe {kind_lower}/{target} -n {ns}.",
    "WaitTimedOut": "What the step wrote stays written; see why it did not converge (the step's message), "
                    "e.g. kubectl rollout status {kind_lower}/{target} -n {ns}, or the Job's pods.",
    "ConcurrentModification": "Someone else changed {kind_lower}/{target} meanwhile and nothing was written; "
                              "check kubectl rollout history {kind_lower}/{target} -n {ns}, then create a new Rollback.",
    "VerificationFailed": "The rollback's changes stay in place; check the endpoint or query the check "
                          "names, then decide: fix forward, or roll back further with a new Rollback.",
    "VerificationInconclusive": "A check could not get an answer (not a failure of the application): "
                                "check that the endpoint is reachable from the operator.",
    "Interrupted": "A step's outcome is unknown: check its target by hand (the step's message says what it "
                   "was doing); the ledger above shows how far it got. Then create a new Rollback if needed.",
    "Aborted": "Aborted on request: the steps that ran stay done (see Steps). To go on, create a new Rollback.",
    "Deleted": "The Rollback was deleted before it finished; the steps that ran stay done.",
    "HookFailed": "Put back by hand what the hook message names (maintenance exit, monitoring resume).",
    "OperatorError": "Calls kept failing; read the operator's log (kubectl logs -n rewind-system "
                     "deploy/rewind-operator) and check the target named in the failed step.",
    "DeadlineMissed": "The severity's deadline passed; it is recorded, not an abort.",
}


def next_steps(obj: dict) -> list[str]:
    """What to do next, derived from the conditions' reasons and the failed step's message."""
    meta = obj["metadata"]
    name, ns = meta["name"], meta["namespace"]
    stalled = c.condition(obj, "Stalled")
    hooks = c.condition(obj, "HooksUndone")
    out = []
    failed = c.failed_step(obj)
    target, kind = name, "rollback"
    if failed and failed[2]:
        t = failed[2].get("target") or {}
        target, kind = t.get("name", name), t.get("kind", "rollback")
    fill = dict(name=name, ns=ns, target=target, kind_lower=kind.lower())
    if stalled and stalled.get("status") == "True":
        reason = stalled.get("reason", "")
        out.append(f"It stalled ({reason}): {stalled.get('message', '')}".rstrip())
        if failed:
            i, rec, _ = failed
            out.append(f"Step {rec['name']} {rec.get('state', '').lower()}"
                       + (f" ({rec['reason']})" if rec.get("reason") else "") + f": {rec.get('message', '')}")
        hint = HINTS.get(reason) or (HINTS.get(failed[1].get("reason", "")) if failed else None)
        if hint:
            out.append(hint.format(**fill))
        elif failed:
            out.append("Act on the failed step's message above, then create a new Rollback.")
        planned = c.condition(obj, "Planned")
        if planned and planned.get("status") == "False":
            out.append("Preflight refused it, so nothing was changed.")
    if hooks and hooks.get("status") == "False":
        out.append(f"Not everything was put back: {hooks.get('message', '')} {HINTS['HookFailed']}")
    within = c.condition(obj, "WithinTarget")
    if within and within.get("reason") == "DeadlineMissed" and not c.ended(obj):
        out.append(HINTS["DeadlineMissed"])
    if out and c.ended(obj):
        out.append(f"The incident report: kubectl rewind report {name} -n {ns}. A Rollback's spec is "
                   "immutable once started: create a new one (another name) to try again.")
    return out
