"""The pure parts of workload restore: kubectl's revision choice, annotation rule, rollout status."""

import pytest

from rewind.api import conditions as C
from rewind.steps import workload as w


def test_previous_is_second_highest_like_kubectl():
    assert w.choose_revision([1, 2, 3], "previous") == 2
    assert w.choose_revision([3, 7, 5], "previous") == 5
    assert w.choose_revision([1, 2, 3], 1) == 1


@pytest.mark.parametrize("available,wanted,fragment", [
    ([1], "previous", "no previous revision"),
    ([], "previous", "revisions kept: none"),
    ([2, 3], 1, "revision 1 not found (revisions kept: 2, 3)"),
])
def test_unknown_or_pruned_revision(available, wanted, fragment):
    with pytest.raises(w.StepFailed) as err:
        w.choose_revision(available, wanted)
    assert err.value.reason == C.REVISION_NOT_FOUND
    assert fragment in err.value.message


def test_template_without_pod_template_hash():
    rs = {"spec": {"template": {"metadata": {"labels": {"app": "a", "pod-template-hash": "abc"}},
                                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}
    t = w.template_of_history("Deployment", rs)
    assert t["metadata"]["labels"] == {"app": "a"}
    assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "abc"  # not mutated
    cr = {"data": {"spec": {"template": {"$patch": "replace", "spec": {"containers": []}}}}}
    assert w.template_of_history("StatefulSet", cr) == {"spec": {"containers": []}}


def test_annotations_follow_kubectl_skip_list():
    current = {"deployment.kubernetes.io/revision": "3", "team": "old",
               "kubectl.kubernetes.io/last-applied-configuration": "{current}"}
    from_rs = {"deployment.kubernetes.io/revision": "1", "kubernetes.io/change-cause": "v1",
               "kubectl.kubernetes.io/last-applied-configuration": "{rs}"}
    out = w.restored_annotations(current, from_rs, "uid-1")
    assert out == {
        "deployment.kubernetes.io/revision": "3",
        "kubectl.kubernetes.io/last-applied-configuration": "{current}",
        "kubernetes.io/change-cause": "v1",
        w.RESTORED_BY_ANNOTATION: "uid-1",
    }


def _deploy(generation=2, observed=2, replicas=2, updated=2, total=2, available=2, conditions=()):
    return {"metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated,
                       "replicas": total, "availableReplicas": available,
                       "conditions": list(conditions)}}


@pytest.mark.parametrize("obj,done,failed,fragment", [
    (_deploy(), True, False, "rolled out"),
    (_deploy(observed=1), False, False, "to be observed"),
    (_deploy(updated=1, total=3), False, False, "1 of 2 new replicas"),
    (_deploy(total=3), False, False, "1 old replicas are pending termination"),
    (_deploy(available=1), False, False, "1 of 2 updated replicas are available"),
    (_deploy(available=0, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                       "message": "ReplicaSet web-1 has timed out progressing."}]),
     False, True, "exceeded its progress deadline"),
])
def test_deployment_rollout_state(obj, done, failed, fragment):
    s = w.rollout_state("Deployment", obj)
    assert (s.done, s.failed) == (done, failed)
    assert fragment in s.message


def test_statefulset_and_daemonset_rollout_state():
    sts = {"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 2, "readyReplicas": 1, "currentRevision": "db-1",
                      "updateRevision": "db-2", "updatedReplicas": 0}}
    assert not w.rollout_state("StatefulSet", sts).done
    sts["status"]["currentRevision"] = "db-2"
    assert w.rollout_state("StatefulSet", sts).done
    ds = {"metadata": {"name": "agent", "generation": 3}, "spec": {},
          "status": {"observedGeneration": 3, "desiredNumberScheduled": 2,
                     "updatedNumberScheduled": 2, "numberAvailable": 1}}
    assert "1 of 2 updated pods are available" in w.rollout_state("DaemonSet", ds).message
    ds["status"]["numberAvailable"] = 2
    assert w.rollout_state("DaemonSet", ds).done


def test_diff_masks_env_values():
    a = {"spec": {"containers": [{"name": "c", "image": "i:2", "env": [{"name": "TOKEN", "value": "s3cr3t-a"}]}]}}
    b = {"spec": {"containers": [{"name": "c", "image": "i:1", "env": [{"name": "TOKEN", "value": "s3cr3t-b"}]}]}}
    diff = w.template_diff(a, b, "Deployment/web")
    assert "-  - image: i:2" in diff or "image: i:2" in diff
    assert "s3cr3t" not in diff
    assert "<masked sha256:" in diff


def test_set_condition_keeps_transition_time_when_status_unchanged():
    conds = C.set_condition([], "Ready", "False", "Planning", "m1", 1, at="2026-01-01T00:00:00Z")
    conds = C.set_condition(conds, "Ready", "False", "Executing", "m2", 1, at="2026-01-01T00:01:00Z")
    assert conds[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert conds[0]["reason"] == "Executing"
    conds = C.set_condition(conds, "Ready", "True", "Succeeded", "m3", 1, at="2026-01-01T00:02:00Z")
    assert conds[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_a_progress_deadline_older_than_the_restore_is_the_bad_release_s_not_ours():
    import datetime
    since = datetime.datetime(2026, 12, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)
    old = {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out",
           "lastUpdateTime": "2026-12-01T07:50:00Z"}
    obj = _deploy(available=0, conditions=[old])
    assert not w.rollout_state("Deployment", obj, since).failed
    assert w.rollout_state("Deployment", obj, since).message == "0 of 2 updated replicas are available"
    fresh = {**old, "lastUpdateTime": "2026-12-01T08:10:00Z"}
    assert w.rollout_state("Deployment", _deploy(available=0, conditions=[fresh]), since).failed


def test_statefulset_on_delete_is_done_at_once_like_kubectl():
    sts = {"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 1, "updateStrategy": {"type": "OnDelete"}},
           "status": {"observedGeneration": 1}}
    assert w.rollout_state("StatefulSet", sts).done
