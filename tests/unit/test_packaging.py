"""The Helm chart carries the same CRD and RBAC rules as crds/ and manifests/."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chart_is_in_sync_with_manifests():
    spec = importlib.util.spec_from_file_location("sync_chart", REPO / "scripts" / "sync_chart.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    for path, text in sync.expected().items():
        assert path.read_text() == text, f"{path} is stale: run `make crd`"
