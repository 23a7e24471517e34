"""Copies what the Helm chart shares with the plain manifests into charts/rewind/: the CRD and the
RBAC rules (manifests/rbac.yaml is the source). tests/unit/test_packaging.py fails when stale."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "rewind"


def expected() -> dict[Path, str]:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    return {
        CHART / "crds" / "rollbacks.rewind.dev.yaml": (REPO / "crds" / "rollbacks.rewind.dev.yaml").read_text(),
        CHART / "files" / "operator-rules.yaml": yaml.safe_dump(roles["rewind-operator"]["rules"]),
        CHART / "files" / "discovery-rules.yaml": yaml.safe_dump(roles["rewind-operator-discovery"]["rules"]),
    }


if __name__ == "__main__":
    for path, text in expected().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
