"""The images the test node's pods run, built here without a Docker engine or a registry.

No registry is reachable from the development machines, so the real node (node.py) cannot pull
`postgres:16`, the operator's image or the pod sandbox's `pause`. This builds them as Docker
archives that `ctr images import` loads:

- a Debian bookworm root filesystem made by `debootstrap` (from Debian's packages, which these
  machines reach) with the PostgreSQL 15 client tools, nginx, Python 3.11 and the `rewind`
  package in /opt/rewind, installed offline from wheels this machine's pip built. It is one layer
  under three images: `postgres:16` (the operator's default `--job-image`; the tools inside are
  PostgreSQL 15's, the version of the test bed's server), `rewind:0.1.0` (the operator, as the
  Dockerfile makes it: entrypoint `rewind`, user 10001; also the `--tool-image` of `rewind s3`)
  and `nginx:1.27` (the quick start's application);
- `pause`: testbed/node/pause.c, built static, alone in its image.

Each is cached under ~/.cache/rewind/node-images, keyed by what went into it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAUSE_C = REPO / "testbed" / "node" / "pause.c"
MIRROR = os.environ.get("REWIND_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["postgresql-client-15", "python3", "python3-venv", "ca-certificates", "nginx-light"]
JOB_IMAGE = "docker.io/library/postgres:16"
TOOL_IMAGE = "docker.io/library/rewind:0.1.0"
APP_IMAGE = "docker.io/library/nginx:1.27"
PAUSE_IMAGE = "rewind.local/pause:1"
PATH = "/opt/rewind/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _log(message: str) -> None:
    print(f"[node images] {message}", file=sys.stderr, flush=True)


def _cache() -> Path:
    return Path(os.environ.get("REWIND_CACHE", Path.home() / ".cache" / "rewind")) / "node-images"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _sources_digest() -> bytes:
    """What the `rewind` package in the image is built from."""
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "operator").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.digest()


def base_rootfs() -> Path:
    """Debian bookworm (minbase) with PACKAGES, made once."""
    root = _cache() / f"bookworm-{_digest(' '.join(PACKAGES).encode(), MIRROR.encode())}"
    if (root / ".ready").exists():
        return root / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _log(f"debootstrap bookworm with {', '.join(PACKAGES)} (a few minutes)")
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm",
                    str(root / "rootfs"), MIRROR], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["chroot", str(root / "rootfs"), "apt-get", "clean"], check=True)
    (root / ".ready").touch()
    return root / "rootfs"


def _wheels(into: Path) -> None:
    """The `rewind` wheel and its pinned dependencies, built by this machine's pip (which reaches
    PyPI); the image's Python is 3.11 like the test environment's, so the wheels fit it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "--wheel-dir", str(into), str(REPO)], check=True)


def _layer(rootfs: Path, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            rel = path.relative_to(rootfs)
            if rel.parts[0] in ("proc", "sys", "dev") and len(rel.parts) > 1:
                continue
            tar.add(path, arcname=str(rel), recursive=False)


def _archive(out: Path, layer: Path, images: list[tuple[list[str], dict]]) -> None:
    """A Docker archive (`docker save`'s format), which `ctr images import` reads: one layer under
    each image's tags and config."""
    with layer.open("rb") as f:       # half a GiB: hashed as it is read, never held whole
        diff_id = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    manifest, configs = [], {}
    for tags, config in images:
        config_bytes = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                                   "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
        name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        configs[name] = config_bytes
        manifest.append({"Config": name, "RepoTags": tags, "Layers": ["layer.tar"]})
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        tar.add(layer, arcname="layer.tar")
        for name, data in [*configs.items(), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)


def build() -> list[Path]:
    """The images' archives: the Job, operator and application images, then the pause image."""
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = base_rootfs()
    pause_out = cache / f"pause-{_digest(PAUSE_C.read_bytes())}.tar"
    if not pause_out.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            subprocess.run(["gcc", "-O2", "-static", "-o", str(root / "pause"), str(PAUSE_C)], check=True)
            _layer(root, Path(tmp) / "layer.tar")
            _archive(pause_out, Path(tmp) / "layer.tar",
                     [([PAUSE_IMAGE], {"Entrypoint": ["/pause"], "User": "65535:65535"})])
    image_out = cache / f"rewind-node-{_digest(rootfs.parent.name.encode(), _sources_digest())}.tar"
    if not image_out.exists():
        _log("installing the rewind package into a copy of the root filesystem")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            root = Path(tmp) / "rootfs"
            subprocess.run(["cp", "-a", str(rootfs), str(root)], check=True)
            _wheels(root / "wheels")
            subprocess.run(["chroot", str(root), "python3", "-m", "venv", "/opt/rewind"], check=True)
            subprocess.run(["chroot", str(root), "/opt/rewind/bin/pip", "install", "-q", "--no-index",
                            "--disable-pip-version-check", "--find-links", "/wheels", "rewind"],
                           check=True, env={"PATH": PATH, "HOME": "/root"})
            subprocess.run(["chroot", str(root), "/opt/rewind/bin/rewind", "--help"], check=True,
                           stdout=subprocess.DEVNULL, env={"PATH": PATH})
            shutil.rmtree(root / "wheels")
            subprocess.run(["chroot", str(root), "sh", "-c", "groupadd --gid 10001 rewind && useradd --uid 10001 "
                            "--gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rewind"],
                           check=True, env={"PATH": PATH})
            for leftover in ("opt/rewind/bin/rewind-testbed",):
                (root / leftover).unlink(missing_ok=True)
            _layer(root, Path(tmp) / "layer.tar")
            env = [f"PATH={PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"]
            _archive(image_out, Path(tmp) / "layer.tar", [
                ([JOB_IMAGE], {"Env": env, "Cmd": ["sh"]}),
                ([TOOL_IMAGE], {"Env": env, "Entrypoint": ["rewind"], "Cmd": ["run"], "User": "10001:10001"}),
                ([APP_IMAGE], {"Env": env, "Cmd": ["nginx", "-g", "daemon off;"], "StopSignal": "SIGQUIT"}),
            ])
    # Earlier builds (other sources, other packages) go: each is half a GiB.
    for stale in [*cache.glob("rewind-node-*.tar"), *cache.glob("pause-*.tar"), *cache.glob("bookworm-*")]:
        if stale not in (image_out, pause_out, rootfs.parent):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return [image_out, pause_out]


if __name__ == "__main__":
    for path in build():
        print(path)
