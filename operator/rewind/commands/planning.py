"""`kubectl rewind plan -f rollback.yaml`: what applying the Rollback would do, changing nothing.

1. A server-side dry-run create (`POST ...?dryRun=All`): the API server checks the CRD's schema,
   its CEL rules and any admission policy, and persists nothing.
2. Every step module's preflight (rewind.registry.PREFLIGHTS), run here with the CALLER's own
   credentials: each only reads. Then rewind.plan.order, as the operator would.
3. The ordered steps with their targets, revisions, pod template diffs and Secret changes (names,
   key names and hashes, never values), the warnings, and the refusals.

Preflight here runs outside the cluster: a check that must reach something only the operator
reaches (the database) is reported as not checkable from here, never as a crash.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from rewind.adapters.kube import ROLLBACKS, KubeError
from rewind.api.errors import ReasonedError
from rewind.commands import common as c
from rewind.commands.common import CommandError

# Reasons that say "could not get there from here" rather than "this rollback is wrong".
UNREACHABLE = {"DatabaseUnreachable"}


@dataclass
class Outcome:
    module: str
    steps: int = 0
    warnings: list[str] = field(default_factory=list)
    refused: tuple[str, str] | None = None      # (reason, message)
    unchecked: str | None = None                # why it could not be checked from here


def _read_file(path: str) -> dict:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        raise CommandError(c.USAGE, f"error: cannot read {path}: {e.strerror or e}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise CommandError(c.USAGE, f"error: {path} is not valid YAML: {e}") from None
    rollbacks = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Rollback"
                 and str(d.get("apiVersion", "")).startswith(f"{c.GROUP}/")]
    if len(rollbacks) != 1:
        raise CommandError(c.USAGE, f"error: {path} must hold exactly one Rollback "
                                    f"(apiVersion {c.GROUP}/v1alpha1); it holds {len(rollbacks)}")
    return rollbacks[0]


def run_plan(args) -> int:
    from rewind.commands.common import connect

    doc = _read_file(args.filename)
    meta = doc.setdefault("metadata", {}) or {}
    doc["metadata"] = meta
    file_ns = meta.get("namespace")
    s = connect(args)
    if args.namespace and file_ns and file_ns != args.namespace:
        raise CommandError(c.USAGE, f'error: the namespace from the provided object "{file_ns}" does not '
                                    f'match the namespace "{args.namespace}". You must pass '
                                    f"'--namespace={file_ns}' to perform this operation.")
    meta["namespace"] = file_ns or s.namespace
    planned = evaluate(s, doc)
    if planned.server_error is not None:
        return _refused_by_server(args, planned.namespace, planned.name, planned.server_error)
    return _report(args, planned, f"`kubectl apply -f {args.filename}` starts it.")


@dataclass
class Planned:
    """What `evaluate` found: the server's answer, every preflight's outcome, the ordered plan."""

    namespace: str
    name: str
    spec: object = None
    outcomes: list[Outcome] = field(default_factory=list)
    steps: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    server_error: KubeError | None = None

    @property
    def would_run(self) -> bool:
        return not self.server_error and not self.problems and not any(
            o.refused or o.unchecked for o in self.outcomes)


def evaluate(s, doc: dict) -> Planned:
    """A server-side dry-run create of `doc` (metadata.namespace set), then every preflight with
    the caller's credentials and the plan's order. Changes nothing."""
    namespace = doc["metadata"]["namespace"]
    label = doc["metadata"].get("name") or f"{doc['metadata'].get('generateName', '')}<generated>"
    planned = Planned(namespace, label)

    # 1. The API server's own checks; nothing is persisted.
    try:
        accepted = s.kube.request("POST", ROLLBACKS.path(namespace), body=doc,
                                  query={"dryRun": "All", "fieldManager": "kubectl-rewind"})
    except KubeError as e:
        if e.conflict and e.reason == "AlreadyExists":
            planned.problems.append(f"a Rollback {namespace}/{label} already exists: applying this file would "
                                    "update it (a started Rollback's spec is immutable), not start a new one; "
                                    "give it another name")
            accepted = dict(doc)
        else:
            planned.server_error = e
            return planned
    planned.name = accepted["metadata"].get("name") or label

    from rewind.api.v1alpha1 import RollbackSpec
    from pydantic import ValidationError

    try:
        spec = RollbackSpec.model_validate(accepted.get("spec") or {})
    except ValidationError as e:
        planned.problems.append(f"the operator cannot read the spec: {e.errors()[0].get('msg')} at "
                                f"spec.{'.'.join(str(x) for x in e.errors()[0].get('loc', ()))}")
        return planned
    planned.spec = spec

    # 2. Every preflight, with the caller's credentials.
    from rewind import plan as planning, registry
    from rewind.context import Request

    # The policy the operator would apply, as the caller can read it (no policy readable: the
    # seed's matrix, as the operator too would apply when none exists).
    from rewind import authz

    try:
        _, policy = authz.load_policy(s.kube, namespace)
    except ReasonedError as e:
        print(f"warning: {e.message} Planning under the seed's decision matrix instead.", file=sys.stderr)
        from rewind.api.policy import SEED_POLICY
        policy = SEED_POLICY
    request = Request(namespace, planned.name, "plan", spec, policy, authz.job_images(policy))
    found = []
    for preflight in registry.PREFLIGHTS:
        o = Outcome(module=preflight.__module__.split(".")[2])
        try:
            result = preflight(s.kube, request)
            o.steps, o.warnings = len(result.steps), list(result.warnings)
            found += result.steps
        except ReasonedError as e:
            if e.reason in UNREACHABLE:
                o.unchecked = f"{e.reason}: {e.message}"
            else:
                o.refused = (e.reason, e.message)
        except KubeError as e:
            o.unchecked = f"the API server answered {e.status} {e.reason}: {e.message}"
        except Exception as e:  # noqa: BLE001 - a bug or an unreachable system: say so, do not crash
            o.unchecked = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else 'no detail'}"
        planned.outcomes.append(o)
    try:
        planned.steps = planning.order(found)
    except ValueError as e:
        planned.problems.append(str(e))
    return planned


def _refused_by_server(args, namespace: str, name: str, e: KubeError) -> int:
    if args.output in ("json", "yaml"):
        _dump(args, {"rollback": {"namespace": namespace, "name": name}, "wouldRun": False,
                     "server": {"accepted": False, "status": e.status, "reason": e.reason, "message": e.message}})
    else:
        print(f"Rollback {namespace}/{name}: the API server refused it (server-side dry run):")
        print(f"  {c.server_error(e)}")
        print("Refused: nothing was created or changed.")
    return c.FAILED


def _dump(args, doc: dict) -> None:
    if args.output == "json":
        print(json.dumps(doc, indent=4))
    else:
        import yaml
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def _report(args, planned: Planned, start_hint: str) -> int:
    """Prints the plan (or dumps it as JSON/YAML); returns the exit code."""
    namespace, name, spec, outcomes, steps, problems = (planned.namespace, planned.name, planned.spec,
                                                        planned.outcomes, planned.steps, planned.problems)
    refused = [o for o in outcomes if o.refused]
    unchecked = [o for o in outcomes if o.unchecked]
    warnings = [w for o in outcomes for w in o.warnings]
    would_run = not refused and not unchecked and not problems
    if args.output in ("json", "yaml"):
        _dump(args, {
            "rollback": {"namespace": namespace, "name": name},
            "wouldRun": would_run,
            "server": {"accepted": True},
            "preflight": [{"module": o.module, "steps": o.steps,
                           **({"refused": {"reason": o.refused[0], "message": o.refused[1]}} if o.refused else {}),
                           **({"unchecked": o.unchecked} if o.unchecked else {})} for o in outcomes],
            "plan": [s.dump() for s in steps],
            "warnings": warnings,
            "problems": problems,
        })
        return c.OK if would_run else c.FAILED

    from rewind import plan as planning

    out = []
    add = out.append
    add(f"Rollback {namespace}/{name}: accepted by the API server (server-side dry run: schema and "
        "CEL rules; nothing was created).")
    if spec is not None and spec.dry_run:
        add("spec.dryRun is true: applying it would only plan, and change nothing.")
    if outcomes:
        add("Preflight, with your own credentials (reads only):")
        for o in outcomes:
            if o.refused:
                state = f"REFUSED ({o.refused[0]}): {o.refused[1]}"
            elif o.unchecked:
                state = (f"NOT CHECKED from here ({o.unchecked}); the operator checks it again from "
                         "inside the cluster before anything changes")
            elif o.steps:
                state = f"ok, {o.steps} step(s)"
            else:
                state = "nothing to do"
            add(f"  {o.module:<15}{state}")
    if steps and not refused:
        deadline = planning.DEADLINES[spec.severity] if spec is not None else None
        add(f"Plan of {len(steps)} step(s), in order"
            + (f" ({spec.severity}: to finish within {c.human_duration(deadline)} of its start)"
               if deadline else "") + ":")
        for i, s in enumerate(steps, start=1):
            add(f"  {i}. {s.name}  {s.kind}  {s.target.kind} {s.target.name}"
                + ("  (cleanup: runs even after a failure)" if s.cleanup else ""))
            if s.kind == "WorkloadRevision":
                if s.action == "NoOp":
                    add(f"       already runs revision {s.to_revision}'s template: nothing to change")
                else:
                    add(f"       from revision {s.current_revision} to revision {s.to_revision}'s template"
                        + (f" (template {s.from_template_hash[:12]} -> {s.template_hash[:12]})"
                           if s.from_template_hash and s.template_hash else ""))
            if s.job_name:
                add(f"       runs Job {s.job_name} (its name here is derived from uid 'plan'; the real "
                    "one from the Rollback's UID)")
            for sc in s.secrets:
                add(f"       Secret {sc.name} <- {sc.source}: data {sc.from_hash[:16]} -> {sc.to_hash[:16]}"
                    + (f", certificate {sc.fingerprint[:16]}..." if sc.fingerprint else ""))
                add(f"         keys: {', '.join(sc.keys) or 'none'}")
            if s.diff:
                for line in s.diff.rstrip("\n").split("\n"):
                    add(f"       {line}")
    for w in warnings:
        add(f"Warning: {w}")
    if would_run:
        add(f"It would run: {start_hint}")
    else:
        add("Refused: applying it now would end Failed before changing anything:" if refused or problems
            else "Not confirmed: some steps could not be checked from here:")
        for o in refused:
            add(f"  - {o.module} ({o.refused[0]}): {o.refused[1]}")
        for p in problems:
            add(f"  - {p}")
        for o in unchecked:
            add(f"  - {o.module}: not checked from here: {o.unchecked}")
    sys.stdout.write("\n".join(out) + "\n")
    return c.OK if would_run else c.FAILED
