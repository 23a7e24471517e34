"""The committed CRD is exactly what the models render; the models accept what the CRD accepts."""

from pathlib import Path

import yaml

from rewind.api import crd
from rewind.api.v1alpha1 import RollbackSpec

COMMITTED = Path(__file__).resolve().parents[2] / "crds" / "rollbacks.rewind.dev.yaml"


def test_committed_crd_matches_models():
    assert COMMITTED.read_text() == crd.render_yaml(), \
        "crds/ is stale: run `make crd` (rewind crd --write) and commit the result"


def test_crd_shape():
    doc = yaml.safe_load(COMMITTED.read_text())
    version = doc["spec"]["versions"][0]
    assert doc["spec"]["names"]["shortNames"] == ["rb"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:6] == ["Severity", "Phase", "Step", "Verified", "Duration", "Age"]
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    assert spec["required"] == ["severity", "reason"]
    assert spec["properties"]["severity"]["enum"] == ["Critical", "High", "Medium", "Low"]
    assert "self.spec == oldSelf.spec" in root["x-kubernetes-validations"][0]["rule"]
    conditions = root["properties"]["status"]["properties"]["conditions"]
    assert set(conditions["items"]["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}


def test_spec_model_round_trip():
    spec = RollbackSpec.model_validate({
        "severity": "High", "reason": "bad deploy",
        "application": [{"name": "web", "toRevision": 3}, {"kind": "StatefulSet", "name": "db"}],
    })
    assert spec.application[0].to_revision == 3
    assert spec.application[1].to_revision == "previous"
    assert spec.dump()["application"][0] == {"kind": "Deployment", "name": "web", "toRevision": 3}
