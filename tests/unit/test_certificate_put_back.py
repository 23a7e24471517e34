"""Putting a swapped certificate Secret back (after its endpoint check failed) writes at most
once: the earlier data when the Secret holds the restored data, nothing when it holds the earlier
data already (a second pass after a crash), nothing when someone else changed it."""

from __future__ import annotations

from types import SimpleNamespace

from rewind.api.v1alpha1 import SecretChange
from rewind.history import HASH_ANNOTATION, HISTORY_OF_LABEL, REVISION_LABEL, copy_name, data_hash
from rewind.steps import certificates

EARLIER = {"type": "kubernetes.io/tls", "data": {"tls.crt": "ZWFybGllcg==", "tls.key": "a2V5MQ=="}}
RESTORED = {"type": "kubernetes.io/tls", "data": {"tls.crt": "cmVzdG9yZWQ=", "tls.key": "a2V5Mg=="}}


class Kube:
    """The Secret and its history copy, and every patch made."""

    def __init__(self, data: dict):
        self.secret = {"metadata": {"name": "booking-tls", "resourceVersion": "7"}, **data}
        self.kept = {"metadata": {"name": copy_name("booking-tls", 1), "labels": {
            HISTORY_OF_LABEL: "booking-tls", REVISION_LABEL: "1"},
            "annotations": {HASH_ANNOTATION: data_hash(EARLIER)}}, **EARLIER}
        self.patches = []

    def get(self, res, namespace, name):
        return self.secret

    def list(self, res, namespace, label_selector=None):
        return [self.kept]

    def patch(self, res, namespace, name, ops, patch_type):
        self.patches.append(ops)
        self.secret = {**self.secret, "data": ops[-1]["value"]}


CHANGE = SecretChange(name="booking-tls", source="booking-tls-old", from_hash=data_hash(EARLIER),
                      to_hash=data_hash(RESTORED))


def put_back(kube: Kube) -> str:
    return certificates.put_back(SimpleNamespace(kube=kube, namespace="booking"), CHANGE)


def test_the_restored_data_is_replaced_by_the_earlier_once():
    kube = Kube(RESTORED)
    assert put_back(kube) == "Secret booking-tls was put back to what it held before the rollback"
    assert kube.secret["data"] == EARLIER["data"] and len(kube.patches) == 1
    assert kube.patches[0][0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert put_back(kube) == "Secret booking-tls holds what it held before the rollback again"
    assert len(kube.patches) == 1


def test_a_secret_someone_else_changed_is_left_alone():
    kube = Kube({"type": "kubernetes.io/tls", "data": {"tls.crt": "bmV3ZXI=", "tls.key": "a2V5Mw=="}})
    assert "was changed by someone else after the swap, so it was left as it is" in put_back(kube)
    assert kube.patches == []
