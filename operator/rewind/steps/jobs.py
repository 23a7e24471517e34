"""Kubernetes Jobs for database work: pure manifest builders, get-or-create, and outcomes.

Job pods meet Pod Security `restricted`, read credentials only through `secretKeyRef`, have a
deadline, never retry on their own (a destructive step must not run twice behind our back), and
report a short result through their termination message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rewind.adapters.kube import JOBS, PODS, Kube, KubeError, owner_reference

COMPONENT_LABEL = "rewind.dev/component"
COMPONENT = "database-job"
UID_LABEL = "rewind.dev/rollback-uid"
MOUNT = "/backups"


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}


def build_job(*, name: str, rollback: dict, step: str, image: str, script: str,
              env: list[dict], claim_name: str | None, deadline_seconds: int,
              read_only_backups: bool, fetch: dict | None = None, upload: dict | None = None,
              volumes: list[dict] = ()) -> dict:
    """The Job of one database step: its `pg` container runs `script`. With `claim_name` the
    backups volume is that PVC; without, a scratch volume (emptyDir) a second container fills or
    empties: `fetch` (an init container that runs before `pg`, e.g. `rewind s3 get`) or `upload`
    (the main container, after `pg` ran as an init container, e.g. `rewind s3 put`). The
    termination message read is the main container's, or a failed init container's."""
    meta = rollback["metadata"]
    labels = {"app.kubernetes.io/managed-by": "rewind", COMPONENT_LABEL: COMPONENT,
              UID_LABEL: meta["uid"], "rewind.dev/step": step}
    pg = {
        "name": "pg",
        "image": image,
        "command": ["sh", "-c", script],
        "env": env,
        "volumeMounts": [
            {"name": "backups", "mountPath": MOUNT, "readOnly": read_only_backups},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "File",
        "resources": RESOURCES,
        "securityContext": RESTRICTED_CONTAINER,
    }
    backups = {"persistentVolumeClaim": {"claimName": claim_name}} if claim_name else {"emptyDir": {}}
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                            "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [pg],
        "volumes": [{"name": "backups", **backups}, {"name": "tmp", "emptyDir": {}}, *volumes],
    }
    if fetch:
        pod["initContainers"] = [fetch]
    if upload:
        pod["initContainers"], pod["containers"] = [pg], [upload]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": meta["namespace"], "labels": labels,
            "ownerReferences": [owner_reference(rollback, controller=True)],
        },
        "spec": {
            "backoffLimit": 0,
            "podReplacementPolicy": "Failed",
            "activeDeadlineSeconds": deadline_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def ensure_job(kube: Kube, manifest: dict) -> str:
    """Creates the Job unless it exists; "created" or "adopted"."""
    ns = manifest["metadata"]["namespace"]
    try:
        kube.create(JOBS, ns, manifest)
        return "created"
    except KubeError as e:
        if e.status == 409:
            return "adopted"
        raise


@dataclass(frozen=True)
class JobOutcome:
    state: str                 # running | succeeded | failed | missing
    exit_code: int | None = None
    message: str = ""
    # While it runs: the resourceVersion of the Job's pods as listed; a watch of them from here
    # wakes the step when its pod ends (POD_SELECTOR names them).
    resource_version: str | None = None

    def result(self) -> dict:
        try:
            value = json.loads(self.message)
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}


def pod_selector(job: str) -> str:
    return f"batch.kubernetes.io/job-name={job}"


def job_outcome(kube: Kube, namespace: str, name: str) -> JobOutcome:
    """The Job's outcome. Its pod's end counts as the Job's: with backoffLimit 0 and
    podReplacementPolicy Failed there is one pod, and the Job controller marks the Job Complete or
    Failed after it (a second or so later), so waiting for that adds nothing but time."""
    try:
        job = kube.get(JOBS, namespace, name)
    except KubeError as e:
        if e.not_found:
            return JobOutcome("missing")
        raise
    conditions = {c["type"]: c for c in job.get("status", {}).get("conditions") or []
                  if c.get("status") == "True"}
    listed = kube.request("GET", PODS.path(namespace), query={"labelSelector": pod_selector(name)})
    pods = listed.get("items", [])
    if "Complete" not in conditions and "Failed" not in conditions:
        ended = _ended(pods)
        if ended is not None:
            return ended
        stuck = _stuck(pods)
        return JobOutcome("failed", None, stuck) if stuck else \
            JobOutcome("running", resource_version=(listed.get("metadata") or {}).get("resourceVersion"))
    exit_code, message = _termination(pods)
    if "Complete" in conditions:
        return JobOutcome("succeeded", exit_code, message)
    failed = conditions["Failed"]
    if not message:
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
    return JobOutcome("failed", exit_code, message)


def _ended(pods: list[dict]) -> JobOutcome | None:
    """The outcome of a pod that ended (Succeeded, or Failed with its container's exit code), else None."""
    for pod in pods:
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            exit_code, message = _termination([pod])
            if phase == "Succeeded":
                return JobOutcome("succeeded", exit_code, message)
            if exit_code is not None:
                return JobOutcome("failed", exit_code, message)
    return None


# Container states that will not get better by waiting for the Job's deadline.
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError"}


def _stuck(pods: list[dict]) -> str:
    """Why the Job's pod cannot start, when it never will on its own; else ""."""
    for pod in pods:
        status = pod.get("status", {})
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return (f"the Job's pod {pod['metadata']['name']} cannot start: {waiting['reason']}: "
                        f"{waiting.get('message', '')}".strip().rstrip(":"))
    return ""


def _termination(pods: list[dict]) -> tuple[int | None, str]:
    """The newest pod's main container's end; or, when it never ran, the init container's that
    failed (a fetch of the backup, or the dump before an upload)."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        status = pod.get("status", {})
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return term.get("exitCode"), (term.get("message") or "").strip()
        for cs in status.get("initContainerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("exitCode"):
                return term.get("exitCode"), (term.get("message") or "").strip()
    return None, ""


def delete_all(kube: Kube, namespace: str, rollback_uid: str) -> int:
    """Deletes every Job of the Rollback (a step deletes its own once its outcome is saved; a crash
    between the two would leave it behind). Returns how many were still there."""
    left = [j for j in kube.list(JOBS, namespace, label_selector=f"{UID_LABEL}={rollback_uid}")
            if not j["metadata"].get("deletionTimestamp")]
    for job in left:
        delete_job(kube, namespace, job["metadata"]["name"])
    return len(left)


def delete_job(kube: Kube, namespace: str, name: str) -> None:
    try:
        kube.request("DELETE", JOBS.path(namespace, name), body={"propagationPolicy": "Background"})
    except KubeError as e:
        if not e.not_found:
            raise
