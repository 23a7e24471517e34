"""A stand-in kubelet for database Job pods: their containers run, for real, as local processes.

No container can run in the test bed, and kwok only pretends. Pods labelled
`rewind.dev/component=database-job` (the pg_dump / pg_restore / psql Jobs of the operator) are left
alone by kwok (see kwok-stages.yaml) and run here instead, with the local PostgreSQL client tools:

    runner = JobRunner(kubeconfig, root_dir, pg_bindir).start()
    ...
    runner.stop()

As a kubelet, the runner picks up the scheduled pods of that label, resolves each container's
environment (values, Secret and ConfigMap keys, the pod's own fields, `$(VAR)` references), gives
the pod's volumes local directories, runs the init containers and then the containers, enforces
`activeDeadlineSeconds`, kills a deleted pod's processes, and reports everything through the
pods/status subresource, termination messages included. The Job controller does the rest.

Where it differs from a kubelet (there is no container runtime):
- container paths are rewritten, not mounted: a command, argument, environment value or working
  directory naming a mount path (or the termination-message file) gets the local directory;
- the processes run on the host's file system. When the runner is root (as in the test bed),
  each container runs in its own mount namespace where every `readOnly` volume mount is a
  read-only bind mount (writes fail with EROFS, as in a container), and as the `runAsUser` /
  `runAsGroup` of its security context, with `fsGroup` as a supplementary group; a volume is
  given to `fsGroup` as the kubelet does (group-owned, group-writable, setgid directories) and
  the pod's own directories to its user. A runner that is not root cannot do either: it runs
  the process as itself and logs that `readOnly` and `runAsUser` are not enforced.
  `readOnlyRootFilesystem` is not enforced (the host's file system is the "image");
- a container without `command` runs its `args` (an image's entrypoint is unknown);
- the containers of a pod run one after the other, not side by side, and never restart;
- a missing Secret or key fails the container (exit code 1, CreateContainerConfigError) instead of
  leaving the pod Pending, so a Job fails rather than hangs.

Secret values are never logged: the runner's log names keys only.

Layout under `root_dir`: `pvc/<namespace>/<claim>/` (a PersistentVolumeClaim; created on first use
and kept), `logs/<namespace>_<pod>.log` (the pod's output), `pods/<uid>/` (its other volumes,
working directory and termination-message files; removed when the pod ends, as the kubelet tears
down a finished pod's volumes), `jobrunner.log` (what the runner did).
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client import ApiException

log = logging.getLogger(__name__)

COMPONENT_LABEL = "rewind.dev/component"
COMPONENT = "database-job"
LABEL_SELECTOR = f"{COMPONENT_LABEL}={COMPONENT}"

USER_AGENT = "rewind-testbed-jobrunner"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
# What a Debian-based image such as postgres:16 sets; the host's own PATH is not the container's.
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The kubelet's limits: a termination-message file is read up to 4096 bytes; the log fallback
# (terminationMessagePolicy FallbackToLogsOnError) takes the last 80 lines, at most 2048 bytes.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
STATUS_WRITE_ATTEMPTS = 20
POLL_SECONDS = 0.2

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
# Resolved here, not in the forked child: loading a library between fork and exec in a process
# with threads can deadlock.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl, _unshare, _mount = _libc.prctl, _libc.unshare, _libc.mount


def _die_with_runner() -> None:
    """Runs in the child before exec: the kernel kills it if the thread that started it dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _check(result: int, what: bytes) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what.decode(errors='replace')}: {os.strerror(ctypes.get_errno())}")


@dataclass(frozen=True)
class _Confinement:
    """What the container's process is held to (see the module's docstring): its read-only
    mounts (local paths, as bytes made before the fork) and its user, group and groups."""

    read_only: tuple[bytes, ...] = ()
    user: int | None = None
    group: int | None = None
    groups: tuple[int, ...] = ()

    def __call__(self) -> None:
        """Runs in the child before exec, as root: a private mount namespace with the read-only
        bind mounts, then the user; then the parent-death signal (a change of user clears it)."""
        if self.read_only:
            _check(_unshare(_CLONE_NEWNS), b"unshare")
            _check(_mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), b"mount --make-rprivate /")
            for path in self.read_only:
                _check(_mount(path, path, None, _MS_BIND | _MS_REC, None), path)
                _check(_mount(None, path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None), path)
        if self.user is not None:
            os.setgroups(list(self.groups))
            os.setgid(self.group if self.group is not None else self.user)
            os.setuid(self.user)
        _die_with_runner()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(response) -> dict:
    """The body of a `_preload_content=False` answer (plain JSON, not the generated models)."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# --- environment ----------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` expansion with the kubelet's rules: `$$` is a literal `$`, and a reference to a
    variable that is not defined stays as written."""
    def replace(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))
    return _REFERENCE.sub(replace, text)


class ContainerError(Exception):
    """A container that cannot start: reported as terminated with this reason and exit code."""

    def __init__(self, reason: str, message: str, exit_code: int):
        super().__init__(message)
        self.reason, self.message, self.exit_code = reason, message, exit_code

    @classmethod
    def bad_config(cls, message: str) -> "ContainerError":
        return cls("CreateContainerConfigError", message, 1)

    @classmethod
    def cannot_start(cls, message: str) -> "ContainerError":
        return cls("StartError", message, 128)  # what containerd reports when exec fails


class _Sources:
    """The Secrets and ConfigMaps of a pod's namespace that it refers to, each read once."""

    def __init__(self, core: client.CoreV1Api, namespace: str):
        self._core, self._namespace = core, namespace
        self._data: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def lookup(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """The object's keys and values; None if it does not exist and is optional."""
        data = self._read(kind, name)
        if data is None and not optional:
            raise ContainerError.bad_config(f'{kind.lower()} "{name}" not found')
        return data

    def key(self, kind: str, ref: dict) -> str | None:
        """One key's value (a secretKeyRef / configMapKeyRef); None if missing and optional."""
        optional = ref.get("optional", False)
        data = self.lookup(kind, ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise ContainerError.bad_config(
                f"couldn't find key {ref['key']} in {kind} {self._namespace}/{ref['name']}")
        return _text(data[ref["key"]])

    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._data:
            read = (self._core.read_namespaced_secret if kind == "Secret"
                    else self._core.read_namespaced_config_map)
            try:
                obj = _json(read(name, self._namespace, _preload_content=False))
            except ApiException as e:
                if e.status != 404:
                    raise ContainerError.bad_config(f"reading {kind} {name}: {e.status} {e.reason}")
                obj = None
            self._data[kind, name] = None if obj is None else _object_data(obj)
        return self._data[kind, name]


def _object_data(obj: dict) -> dict[str, bytes]:
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _text(value: bytes) -> str:
    # surrogateescape: bytes that are not UTF-8 still reach the process unchanged.
    return value.decode("utf-8", "surrogateescape")


_POD_FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "metadata.uid": ("metadata", "uid"),
    "spec.nodeName": ("spec", "nodeName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
}


def container_env(container: dict, pod: dict, sources: _Sources) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `envFrom` first, then `env` in order
    (a later variable wins; a plain value may refer to the variables before it)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (("Secret", source["secretRef"]) if "secretRef" in source
                     else ("ConfigMap", source["configMapRef"]))
        for key, value in (sources.lookup(kind, ref["name"], ref.get("optional", False)) or {}).items():
            env[source.get("prefix", "") + key] = _text(value)
    for var in container.get("env") or []:
        value = _env_value(var, env, pod, sources)
        if value is not None:
            env[var["name"]] = value
    return env


def _env_value(var: dict, env: dict[str, str], pod: dict, sources: _Sources) -> str | None:
    source = var.get("valueFrom")
    if source is None:
        return expand(var.get("value", ""), env)
    if "secretKeyRef" in source:
        return sources.key("Secret", source["secretKeyRef"])
    if "configMapKeyRef" in source:
        return sources.key("ConfigMap", source["configMapKeyRef"])
    field = (source.get("fieldRef") or {}).get("fieldPath")
    if field in _POD_FIELDS:
        section, key = _POD_FIELDS[field]
        return pod[section].get(key, "")
    raise ContainerError.bad_config(f"env {var['name']}: {field or ', '.join(source)} is not "
                                "supported by the test bed's job runner")


# --- paths ----------------------------------------------------------------------------------

class _PathMap:
    """Container paths (mount points, the termination-message file) -> local paths.

    A container path is rewritten where a path can begin: at the start of the text or after a
    character that is not part of a path (`=`, a space, a quote, `>`), and only when it ends
    there or goes on with `/`. So `-f /backups/x`, `--file=/backups/x` and `pg_dump > /backups/x`
    inside a `sh -c` script all land in the local directory; `/backups2` and
    `postgresql://host/backups` stay as they are. The longest mount path wins."""

    def __init__(self, paths: Mapping[str, Path]):
        self._local = {p.rstrip("/"): str(local) for p, local in paths.items()}
        alternatives = "|".join(re.escape(p) for p in sorted(self._local, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![\w.~/-])({alternatives})(?=/|$|[^\w.~-])")

    def __call__(self, text: str) -> str:
        return self._pattern.sub(lambda m: self._local[m.group(1)], text)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with its final mode, so a Secret is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _give_to_group(path: Path, gid: int) -> None:
    """What the kubelet does to a volume for a pod's fsGroup: the group owns everything and may
    write it, and directories pass their group on (setgid)."""
    for item in [path, *path.rglob("*")]:
        try:
            if item.is_symlink():
                continue
            os.chown(item, -1, gid)
            mode = item.stat().st_mode
            os.chmod(item, mode | 0o060 | (0o2010 if item.is_dir() else 0))
        except FileNotFoundError:
            # Another pod on the same volume renamed or removed it meanwhile (the backup's
            # .partial dump, moved into place while the restore's pod starts beside it).
            continue


def _others_may_run(script: Path) -> bool:
    """Whether a user other than the owner may run `script` with its interpreter: every directory
    on the way to both is searchable by others, and both are readable by them."""
    import stat
    interpreter = Path(os.path.realpath(sys.executable))
    for target in (Path(os.path.realpath(script)), interpreter):
        if not target.stat().st_mode & stat.S_IROTH:
            return False
        if any(not p.stat().st_mode & stat.S_IXOTH for p in target.parents):
            return False
    return True


class _Volumes:
    """A pod's volumes as local directories, each made when a container first mounts it."""

    def __init__(self, pod: dict, pod_dir: Path, pvc_root: Path, sources: _Sources):
        self._specs = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        self._namespace = pod["metadata"]["namespace"]
        self._ref = f"pod {self._namespace}/{pod['metadata']['name']}"
        self._dir, self._pvc_root, self._sources = pod_dir / "volumes", pvc_root, sources
        self._made: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self._made:
            if name not in self._specs:
                raise ContainerError.bad_config(f'volume "{name}" is not defined in the pod')
            self._made[name] = self._make(self._specs[name])
        return self._made[name]

    def _make(self, volume: dict) -> Path:
        if "persistentVolumeClaim" in volume:
            path = self._pvc_root / self._namespace / volume["persistentVolumeClaim"]["claimName"]
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = self._dir / volume["name"]
        path.mkdir(parents=True, mode=0o700)
        if "secret" in volume:
            spec = volume["secret"]
            self._project(path, "Secret", spec["secretName"], spec, lambda item: 0o400)
        elif "configMap" in volume:
            spec = volume["configMap"]
            self._project(path, "ConfigMap", spec["name"], spec,
                          lambda item: item.get("mode", spec.get("defaultMode", 0o644)))
        elif "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            log.info("%s: volume %s (%s): not supported, an empty directory stands in",
                     self._ref, volume["name"], ", ".join(kinds))
        return path

    def _project(self, directory: Path, kind: str, name: str, spec: dict, mode) -> None:
        """One file per key (or per listed item), as the kubelet projects a Secret or ConfigMap."""
        optional = spec.get("optional", False)
        data = self._sources.lookup(kind, name, optional) or {}
        for item in spec.get("items") or [{"key": k, "path": k} for k in data]:
            if item["key"] not in data:
                if optional:
                    continue
                raise ContainerError.bad_config(
                    f"couldn't find key {item['key']} in {kind} {self._namespace}/{name}")
            _write_file(directory / item["path"], data[item["key"]], mode(item))


# --- one pod --------------------------------------------------------------------------------

class _PodGone(Exception):
    """The pod was deleted (or replaced by another of the same name)."""


@dataclass
class _Launch:
    """What a container runs with, on this host."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    confinement: _Confinement = _Confinement()


class _PodRun(threading.Thread):
    """One pod, from scheduled to Succeeded or Failed, in its own thread."""

    def __init__(self, runner: "JobRunner", pod: dict):
        meta, spec = pod["metadata"], pod["spec"]
        super().__init__(name=f"jobrunner {meta['namespace']}/{meta['name']}", daemon=True)
        self._runner, self._pod = runner, pod
        self.namespace, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ref = f"pod {self.namespace}/{self.pod_name}"
        self._dir = runner.root_dir / "pods" / self.uid
        self._log_path = runner.log_path(self.namespace, self.pod_name)
        self._sources = _Sources(runner.core, self.namespace)
        self._volumes = _Volumes(pod, self._dir, runner.root_dir / "pvc", self._sources)
        self._init_containers = spec.get("initContainers") or []
        self._containers = spec["containers"]
        waiting = "PodInitializing" if self._init_containers else "ContainerCreating"
        self._init_states = [{"waiting": {"reason": "PodInitializing"}} for _ in self._init_containers]
        self._states = [{"waiting": {"reason": waiting}} for _ in self._containers]
        self._cancelled = threading.Event()
        self._start_time = _now()
        deadline = spec.get("activeDeadlineSeconds")
        self._deadline = None if deadline is None else time.monotonic() + deadline
        self._deadline_exceeded = False
        self._finished = False

    def cancel(self) -> None:
        """The pod was deleted (or the runner stops): kill what runs, start nothing more."""
        self._cancelled.set()

    def run(self) -> None:
        try:
            self._dir.mkdir(parents=True, mode=0o700)
            self._run_pod()
        except _PodGone:
            log.info("%s: gone", self.ref)
        except Exception:  # noqa: BLE001 - a thread's last word; the runner goes on with other pods
            log.exception("%s: the job runner failed", self.ref)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._runner._forget(self.uid)

    def _run_pod(self) -> None:
        log.info("%s: running it on %s", self.ref, self._pod["spec"]["nodeName"])
        # The containers start only once every init container succeeded (all() stops at the
        # first that did not); once the pod must stop, _run_container starts nothing more.
        if all(self._run_container(c, self._init_states, i)
               for i, c in enumerate(self._init_containers)):
            for index, container in enumerate(self._containers):
                self._run_container(container, self._states, index)
        self._finished = True
        self._write_status()
        log.info("%s: %s", self.ref, self._phase())

    def _stop_reason(self) -> str | None:
        """Why the pod must stop now, as a container's termination reason: it was deleted, or it
        is past its activeDeadlineSeconds."""
        if self._cancelled.is_set():
            return "Error"
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._deadline_exceeded = True
            return "DeadlineExceeded"
        return None

    def _run_container(self, container: dict, states: list[dict], index: int) -> bool:
        """Runs one container to its end and records its state (the next container's start or
        the pod's end writes it); True if it exited 0. Runs nothing if the pod must stop."""
        if self._stop_reason():
            return False
        started = _now()
        try:
            launch = self._prepare(container)
            states[index] = {"running": {"startedAt": started}}
            self._write_status()
            exit_code, reason, message = self._execute(container, launch)
        except ContainerError as e:
            log.warning("%s: container %s cannot start: %s", self.ref, container["name"], e.message)
            exit_code, reason, message = e.exit_code, e.reason, e.message
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started,
                      "finishedAt": _now()}
        if message:
            terminated["message"] = message
        states[index] = {"terminated": terminated}
        log.info("%s: container %s: exit code %d (%s)", self.ref, container["name"], exit_code, reason)
        return exit_code == 0

    # -- preparing a container --

    def _prepare(self, container: dict) -> _Launch:
        env = container_env(container, self._pod, self._sources)
        # Expanded with the container's values before any path is rewritten, so that every
        # string is rewritten once (a local path may itself start like a mount path, e.g. /tmp).
        argv = [expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not argv:
            raise ContainerError.cannot_start("no command and no args: the test bed's job runner "
                                       "cannot run an image's entrypoint")
        termination_file = self._dir / "termination" / container["name"]
        _write_file(termination_file, b"", 0o600)
        local = self._path_map(container, termination_file)
        env = {name: local(value) for name, value in env.items()}
        argv = [local(a) for a in argv]
        argv[0] = self._executable(argv[0])
        log.info("%s: container %s (image %s): %s; env: %s", self.ref, container["name"],
                 container.get("image"), shlex.join(self._template_argv(container)),
                 ", ".join(self._env_origins(container)) or "-")
        home = self._dir / "home"
        home.mkdir(exist_ok=True)
        process_env = {"HOSTNAME": self.pod_name, "HOME": str(home), **env}
        process_env["PATH"] = os.pathsep.join([str(self._runner.pg_bindir),
                                               env.get("PATH", CONTAINER_PATH)])
        cwd = self._working_dir(container, local)
        return _Launch(argv, process_env, cwd, termination_file, self._confinement(container))

    def _confinement(self, container: dict) -> _Confinement:
        """The container's read-only mounts and user (see the module's docstring); as root only.
        The pod's own directories go to its user, its volumes to its fsGroup."""
        mounts = container.get("volumeMounts") or []
        pod_sc = self._pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        user, group, fs_group = sc.get("runAsUser"), sc.get("runAsGroup"), pod_sc.get("fsGroup")
        if os.geteuid() != 0:
            if user is not None or any(m.get("readOnly") for m in mounts):
                log.warning("%s: container %s: the runner is not root, so readOnly mounts and "
                            "runAsUser are not enforced", self.ref, container["name"])
            return _Confinement()
        if fs_group is not None:
            for mount in mounts:
                _give_to_group(self._volumes.path(mount["name"]), fs_group)
        if user is not None:   # home, working directory, termination file, emptyDir and projections
            for path in [self._dir, *self._dir.rglob("*")]:
                os.lchown(path, user, group if group is not None else user)
        if user is not None and (container.get("command") or [""])[0] == "rewind" and not _others_may_run(
                Path(sys.executable).with_name("rewind")):
            log.warning("%s: container %s: this Python (%s) is not readable by other users, so the "
                        "container runs as the runner's user, not as runAsUser %s", self.ref,
                        container["name"], os.path.realpath(sys.executable), user)
            user = None
        read_only = []
        for mount in mounts:
            if mount.get("readOnly"):
                local = self._volumes.path(mount["name"])
                read_only.append(os.fsencode(local / mount["subPath"] if mount.get("subPath") else local))
        groups = tuple(g for g in (group, fs_group) if g is not None)
        return _Confinement(tuple(read_only), user, group, groups)

    def _path_map(self, container: dict, termination_file: Path) -> _PathMap:
        paths = {container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH): termination_file}
        for mount in container.get("volumeMounts") or []:
            local = self._volumes.path(mount["name"])
            if mount.get("subPath"):
                local = local / mount["subPath"]
                if not local.exists():  # the kubelet makes a missing subPath a directory
                    local.mkdir(parents=True)
            paths[mount["mountPath"]] = local
        return _PathMap(paths)

    def _executable(self, path: str) -> str:
        """An image's absolute path to a PostgreSQL tool (/usr/lib/postgresql/16/bin/pg_dump) that
        does not exist here -> the same tool of the local PostgreSQL. `rewind` (the operator's
        image, as --tool-image: `rewind s3 get|put`) -> the one installed beside this Python."""
        if path == "rewind" and Path(sys.executable).with_name("rewind").exists():
            return str(Path(sys.executable).with_name("rewind"))
        if os.path.isabs(path) and not os.path.exists(path):
            local = self._runner.pg_bindir / os.path.basename(path)
            if local.exists():
                return str(local)
        return path

    def _working_dir(self, container: dict, local: _PathMap) -> Path:
        """A mounted workingDir is its local directory; any other is private to the pod, as a
        container's own file system is."""
        wanted = container.get("workingDir")
        if not wanted:
            path = self._dir / "work"
        elif local(wanted) != wanted:
            path = Path(local(wanted))
        else:
            path = self._dir / "rootfs" / wanted.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _template_argv(container: dict) -> list[str]:
        """The command as the pod spec writes it, `$(VAR)` unexpanded: safe to log."""
        return (container.get("command") or []) + (container.get("args") or [])

    @staticmethod
    def _env_origins(container: dict) -> list[str]:
        """Where each variable comes from, by name only (never a value)."""
        origins = []
        for source in container.get("envFrom") or []:
            kind, ref = (("Secret", source["secretRef"]) if "secretRef" in source
                         else ("ConfigMap", source["configMapRef"]))
            origins.append(f"{source.get('prefix', '')}* from {kind} {ref['name']}")
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
            if ref:
                kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                origins.append(f"{var['name']} from {kind} {ref['name']}[{ref['key']}]")
            else:
                origins.append(var["name"])
        return origins

    # -- running a container --

    def _execute(self, container: dict, launch: _Launch) -> tuple[int, str, str]:
        """Runs the process with its output appended to the pod's log; (exit code, reason,
        termination message)."""
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as out:
            out.write(f"==> container {container['name']} <==\n".encode())
            out.flush()
            offset = out.tell()
            try:
                proc = subprocess.Popen(
                    launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=launch.confinement)
            except subprocess.SubprocessError as e:
                raise ContainerError.cannot_start(f"the runner could not confine the process: {e}") from None
            except OSError as e:
                raise ContainerError.cannot_start(
                    f'exec: "{self._template_argv(container)[0]}": {e.strerror}') from None
            exit_code, reason = self._wait(proc)
        message = self._termination_message(container, launch.termination_file, exit_code, offset)
        return exit_code, reason, message

    def _wait(self, proc: subprocess.Popen) -> tuple[int, str]:
        reason = None
        while True:
            try:
                code = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if reason is None:
                    reason = self._stop_reason()
                    if reason:
                        _kill_group(proc.pid)
        # Whatever it left running goes with it, as a container's processes go with its cgroup.
        _kill_group(proc.pid)
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as in a container
        return exit_code, reason or ("Completed" if exit_code == 0 else "Error")

    def _termination_message(self, container: dict, path: Path, exit_code: int, log_offset: int) -> str:
        with open(path, "rb") as f:
            message = f.read(MAX_MESSAGE_BYTES)
        if (not message and exit_code != 0
                and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"):
            with open(self._log_path, "rb") as f:
                f.seek(log_offset)
                lines = f.read().splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
            message = b"".join(lines)[-FALLBACK_LOG_BYTES:]
        return message.decode("utf-8", "replace")

    # -- the pod's status --

    def _write_status(self) -> None:
        """Writes the status computed from the containers' states. A merge patch that carries the
        resourceVersion it was computed from: if anyone wrote the pod in between, the API server
        answers 409 and it is computed again from a fresh read."""
        core = self._runner.core
        for attempt in range(STATUS_WRITE_ATTEMPTS):
            pod = self._read_pod()
            body = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
                    "status": self._status(pod.get("status") or {})}
            try:
                _json(core.patch_namespaced_pod_status(
                    self.pod_name, self.namespace, body, _content_type=MERGE_PATCH,
                    _preload_content=False))
                return
            except ApiException as e:
                if e.status == 404:
                    raise _PodGone() from None
                if e.status != 409 or attempt + 1 == STATUS_WRITE_ATTEMPTS:
                    raise
            time.sleep(0.05 * (attempt + 1))

    def _read_pod(self) -> dict:
        try:
            pod = _json(self._runner.core.read_namespaced_pod_status(
                self.pod_name, self.namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                raise _PodGone() from None
            raise
        if pod["metadata"]["uid"] != self.uid:
            raise _PodGone()
        return pod

    def _phase(self) -> str:
        if not self._finished:
            return "Running" if any("waiting" not in s for s in self._states) else "Pending"
        ok = all(_exit_code(s) == 0 for s in self._init_states + self._states)
        return "Succeeded" if ok else "Failed"

    def _status(self, current: dict) -> dict:
        phase = self._phase()
        status = {
            "phase": phase,
            "startTime": current.get("startTime") or self._start_time,
            "conditions": _merge_conditions(current.get("conditions") or [], self._conditions(phase)),
            "containerStatuses": [
                _container_status(c, s, ready="running" in s)
                for c, s in zip(self._containers, self._states)],
        }
        if self._init_containers:
            status["initContainerStatuses"] = [
                _container_status(c, s, ready=_exit_code(s) == 0)
                for c, s in zip(self._init_containers, self._init_states)]
        if self._finished and self._deadline_exceeded:
            status["reason"] = "DeadlineExceeded"
            status["message"] = "Pod was active on the node longer than the specified deadline"
        return status

    def _conditions(self, phase: str) -> dict[str, tuple[str, str | None, str | None]]:
        """The kubelet's pod conditions: type -> (status, reason, message)."""
        uninitialized = [c["name"] for c, s in zip(self._init_containers, self._init_states)
                         if _exit_code(s) != 0]
        unready = [c["name"] for c, s in zip(self._containers, self._states) if "running" not in s]
        if not uninitialized:
            initialized = ("True", None, None)
        else:
            initialized = ("False", "ContainersNotInitialized",
                           f"containers with incomplete status: [{' '.join(uninitialized)}]")
        if not unready:
            ready = ("True", None, None)
        elif phase == "Succeeded":
            ready = ("False", "PodCompleted", None)
        else:
            ready = ("False", "ContainersNotReady",
                     f"containers with unready status: [{' '.join(unready)}]")
        sandbox = ("False" if self._finished else "True", None, None)
        return {"PodReadyToStartContainers": sandbox, "Initialized": initialized,
                "Ready": ready, "ContainersReady": ready}


def _exit_code(state: dict) -> int | None:
    return (state.get("terminated") or {}).get("exitCode")


def _container_status(container: dict, state: dict, ready: bool) -> dict:
    return {"name": container["name"], "image": container.get("image", ""), "ready": ready,
            "started": "running" in state, "restartCount": 0, "state": state}


def _merge_conditions(current: list[dict], wanted: dict[str, tuple]) -> list[dict]:
    """Our conditions replace those of the same type (keeping lastTransitionTime while the status
    stays); the others (PodScheduled, a controller's DisruptionTarget) are kept as they are."""
    now = _now()
    by_type = {c["type"]: c for c in current}
    merged = [c for c in current if c["type"] not in wanted]
    for type_, (status, reason, message) in wanted.items():
        old = by_type.get(type_, {})
        since = old.get("lastTransitionTime") if old.get("status") == status else now
        condition = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        merged.append(condition)
    return merged


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _startable(pod: dict) -> bool:
    """Scheduled, not deleted, and untouched by any kubelet yet."""
    status = pod.get("status") or {}
    return (bool(pod["spec"].get("nodeName"))
            and not pod["metadata"].get("deletionTimestamp")
            and status.get("phase", "Pending") == "Pending"
            and not status.get("containerStatuses"))


# --- the runner -----------------------------------------------------------------------------

class JobRunner:
    """Watches the pods labelled rewind.dev/component=database-job in all namespaces and runs each
    scheduled one in its own thread (see the module's docstring)."""

    def __init__(self, api_client_or_kubeconfig: client.ApiClient | str | os.PathLike,
                 root_dir: Path, pg_bindir: Path, *, watch_timeout_seconds: int = 5):
        if isinstance(api_client_or_kubeconfig, client.ApiClient):
            self._api, self._owns_api = api_client_or_kubeconfig, False
        else:
            self._api = config.new_client_from_config(config_file=str(api_client_or_kubeconfig))
            self._api.user_agent = USER_AGENT
            self._owns_api = True
        self.core = client.CoreV1Api(self._api)
        self.root_dir = Path(root_dir)
        self.pg_bindir = Path(pg_bindir)
        # Short server-side watches: stop() waits for the current one, and each round lists again.
        self._watch_timeout = watch_timeout_seconds
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._runs: dict[str, _PodRun] = {}
        self._thread: threading.Thread | None = None
        self._log_handler: logging.Handler | None = None

    @property
    def log_file(self) -> Path:
        """The runner's own log: which pods it ran, with what (key names, never values)."""
        return self.root_dir / "jobrunner.log"

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        """The local directory that stands for PersistentVolumeClaim `claim` in `namespace`."""
        return self.root_dir / "pvc" / namespace / claim

    def log_path(self, namespace: str, pod: str) -> Path:
        """The output (stdout and stderr) of the pod's containers."""
        return self.root_dir / "logs" / f"{namespace}_{pod}.log"

    def create_pvc(self, namespace: str, claim: str, size: str = "1Gi", timeout: float = 60) -> Path:
        """Creates PersistentVolumeClaim `claim`, bound to a new hostPath PersistentVolume on
        pvc_dir(namespace, claim), and waits until it is Bound; returns that directory.

        The scheduler places no pod whose claim is missing or unbound, and the bed has no storage
        provisioner: this is it. (The runner maps a claim to pvc_dir by its name alone.)"""
        path = self.pvc_dir(namespace, claim)
        path.mkdir(parents=True, exist_ok=True)
        volume = f"rewind-testbed-{namespace}-{claim}"[:253]
        self.core.create_persistent_volume({
            "metadata": {"name": volume},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": str(path), "type": "Directory"},
                     "claimRef": {"namespace": namespace, "name": claim}}})
        self.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
                     "resources": {"requests": {"storage": size}}}})
        deadline = time.monotonic() + timeout
        read = self.core.read_namespaced_persistent_volume_claim
        while read(claim, namespace).status.phase != "Bound":
            if time.monotonic() > deadline:
                raise TimeoutError(f"PersistentVolumeClaim {namespace}/{claim} is not Bound "
                                   f"after {timeout}s")
            time.sleep(0.2)
        return path

    def start(self) -> "JobRunner":
        for sub in ("pvc", "logs", "pods"):
            (self.root_dir / sub).mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.log_file)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        self._thread = threading.Thread(target=self._watch_loop, name="jobrunner watch", daemon=True)
        self._thread.start()
        log.info("job runner started: pods labelled %s; root %s; PostgreSQL tools from %s",
                 LABEL_SELECTOR, self.root_dir, self.pg_bindir)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stops watching and kills the pods' processes that still run."""
        with self._lock:
            self._stopping.set()
            runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *runs]:
            if thread:
                thread.join(max(0.0, deadline - time.monotonic()))
        log.info("job runner stopped")
        if self._log_handler:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
        if self._owns_api:
            self._api.close()

    def __enter__(self) -> "JobRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._list_and_watch()
            except Exception:  # noqa: BLE001 - watches expire (410) and connections drop: list again
                if not self._stopping.is_set():
                    log.warning("watching pods failed; listing them again", exc_info=True)
                    self._stopping.wait(1)

    def _list_and_watch(self) -> None:
        listed = _json(self.core.list_pod_for_all_namespaces(
            label_selector=LABEL_SELECTOR, _preload_content=False))
        present = {pod["metadata"]["uid"] for pod in listed["items"]}
        for pod in listed["items"]:
            self._on_event("ADDED", pod)
        with self._lock:
            vanished = [run for uid, run in self._runs.items() if uid not in present]
        for run in vanished:  # deleted while we were not watching
            run.cancel()
        events = watch.Watch().stream(
            self.core.list_pod_for_all_namespaces, label_selector=LABEL_SELECTOR,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=self._watch_timeout)
        for event in events:
            self._on_event(event["type"], event["raw_object"])
            if self._stopping.is_set():
                return

    def _on_event(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            with self._lock:
                run = self._runs.get(uid)
            if run:
                run.cancel()
        elif kind in ("ADDED", "MODIFIED") and _startable(pod):
            self._start(pod)

    def _start(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if self._stopping.is_set() or uid in self._seen:
                return
            self._seen.add(uid)
            run = self._runs[uid] = _PodRun(self, pod)
        run.start()

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._runs.pop(uid, None)
