"""The operator image holds the operator only. There is no Docker engine here, so this builds the
wheel the Dockerfile's build stage builds, from exactly the sources that stage copies, and checks
what is in it: the `rewind` package with its package data, and nothing of the test bed."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def build_stage() -> list[str]:
    """The instructions of the Dockerfile's `build` stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    start = next(i for i, l in enumerate(lines) if re.match(r"FROM \S+ AS build$", l, re.I))
    end = next((i for i, l in enumerate(lines) if i > start and l.upper().startswith("FROM ")), len(lines))
    return lines[start + 1:end]


def copied_sources() -> list[str]:
    sources = []
    for line in build_stage():
        if line.upper().startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    context = tmp_path_factory.mktemp("context")
    for src in copied_sources():
        path = REPO / src
        if path.is_dir():
            shutil.copytree(path, context / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, context / src)
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist),
                          str(context)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    (whl,) = dist.glob("rewind-*.whl")
    return zipfile.ZipFile(whl)


def test_the_build_stage_copies_the_operator_and_not_the_test_bed():
    sources = copied_sources()
    assert "operator" in sources and "pyproject.toml" in sources, sources
    assert not any(s.strip("./").startswith(("testbed", "tests")) or s.strip("./") == "" for s in sources), sources


def test_the_wheel_holds_the_operator_with_its_data_and_not_the_test_bed(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names}
    assert "rewind" in tops
    assert not any(t.startswith("rewind_testbed") for t in tops), sorted(tops)
    assert "rewind/cli.py" in names and "rewind/handlers.py" in names
    # Package data the operator reads at run time travels with it (pyproject's package-data).
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"].get(
        "package-data", {})
    for package, patterns in package_data.items():
        if package.split(".")[0] != "rewind":
            continue
        folder = REPO / "operator" / package.replace(".", "/")
        for pattern in patterns:
            for f in folder.glob(pattern):
                assert f"{package.replace('.', '/')}/{f.relative_to(folder).as_posix()}" in names, f


def test_console_scripts_of_absent_packages_are_removed_by_the_image(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert scripts["rewind"] == "rewind.cli:main"
    tops = {n.split("/")[0] for n in wheel.namelist()}
    dangling = [name for name, target in scripts.items() if target.split(".")[0].split(":")[0] not in tops]
    run = " ".join(l for l in build_stage() if l.upper().startswith("RUN "))
    for name in dangling:
        assert re.search(rf"\brm\b[^&]*/bin/{re.escape(name)}\b", run), \
            f"the image would keep the console script {name!r}, whose package it does not hold"


def test_the_image_runs_as_the_non_root_user_the_chart_expects():
    text = DOCKERFILE.read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001(:10001)?$", final, re.M), "the chart's podSecurityContext runs as 10001"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.12-slim@sha256:[0-9a-f]{64}$", text, re.M), \
        "the base image is pinned by digest"
    assert 'ENTRYPOINT ["rewind"]' in final
