"""A thin Kubernetes REST adapter over the official client: plain dicts in and out.

Steps compare and patch pod templates exactly as the API server serialises them, so this adapter
speaks JSON, not the generated model classes. Authentication (client certificates, bearer tokens,
in-cluster service accounts) and TLS are the official client's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client, config

from rewind import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"rewind/{__version__}"
FIELD_MANAGER = "rewind"

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeError(Exception):
    """A non-2xx answer of the API server, with its status code and Status reason."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Throttled (429) or a server-side failure (5xx): asking again later may well work, so it
        must never end a Rollback as a refusal; the handler retries it with backoff."""
        return self.status == 429 or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def forbidden(self) -> bool:
        return self.status == 403


@dataclass(frozen=True)
class Resource:
    group: str       # "" for the core group
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


DEPLOYMENTS = Resource("apps", "v1", "deployments")
REPLICASETS = Resource("apps", "v1", "replicasets")
STATEFULSETS = Resource("apps", "v1", "statefulsets")
DAEMONSETS = Resource("apps", "v1", "daemonsets")
CONTROLLER_REVISIONS = Resource("apps", "v1", "controllerrevisions")
ROLLBACKS = Resource("rewind.dev", "v1alpha1", "rollbacks")
SECRETS = Resource("", "v1", "secrets")
SERVICES = Resource("", "v1", "services")
CONFIG_MAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
PODS = Resource("", "v1", "pods")
JOBS = Resource("batch", "v1", "jobs")


def owner_reference(obj: dict, controller: bool = False) -> dict:
    """An ownerReference to `obj` (a Rollback, a Secret): what it owns goes when it goes."""
    meta = obj["metadata"]
    ref = {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
           "name": meta["name"], "uid": meta["uid"]}
    if controller:
        ref["controller"] = True
    return ref


def build_event(involved: dict, type_: str, reason: str, message: str, instance: str, at: str) -> dict:
    """A core/v1 Event about `involved`, from Rewind (one per outcome; never a secret in it)."""
    meta = involved["metadata"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": "rewind"}, "reportingComponent": "rewind.dev/operator",
        "reportingInstance": instance[:128], "firstTimestamp": at, "lastTimestamp": at, "count": 1,
    }


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: keys gone from `new` become
    null, so a field can be cleared; lists are replaced whole. {} when nothing changed."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value) if isinstance(value, dict) and isinstance(old[key], dict) \
                else value
    return patch


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster service account when there is one, else the kubeconfig (or $KUBECONFIG)."""
    cfg = _configure(client.Configuration())
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def _configure(cfg: client.Configuration) -> client.Configuration:
    # Every waiting Rollback may hold a watch in its own thread: a pool that fits them.
    cfg.connection_pool_maxsize = 128
    return cfg


REQUEST_ATTEMPTS = 4
GONE_MEMORY = 1000


def _gone_event(line: bytes) -> bool:
    """A watch event `{"type": "ERROR", "object": {"kind": "Status", "code": 410}}`."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") == "ERROR" \
        and isinstance(event.get("object"), dict) and event["object"].get("code") == 410


def _retry_after(headers) -> float | None:
    try:
        value = (headers or {}).get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


class Kube:
    def __init__(self, api: client.ApiClient):
        self.api = api
        self.api.user_agent = USER_AGENT
        # (collection, selectors, resourceVersion answered 410 Gone) -> a list's resourceVersion
        self._gone: dict[tuple, str] = {}

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> dict:
        """One API request. Throttled or refused by an unavailable server (429, 503: the API
        server did not act on it) it is sent again, any verb; a read is also sent again after
        500, 502 or 504. At most REQUEST_ATTEMPTS times, waiting Retry-After (or 0.2, 0.4, 0.8 s),
        at most 2 s each; then the error goes to the caller (the handler backs off the pass)."""
        for attempt in range(REQUEST_ATTEMPTS):
            try:
                return self._request_once(method, path, body, query, content_type)
            except KubeError as e:
                again = e.status in (429, 503) or (method == "GET" and e.status in (500, 502, 504))
                if not again or attempt + 1 == REQUEST_ATTEMPTS:
                    raise
                time.sleep(min(e.retry_after if e.retry_after is not None else 0.2 * 2 ** attempt, 2.0))
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, body: Any, query: dict | None, content_type: str) -> dict:
        params = list((query or {}).items())
        method, url, headers, body_out, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=params,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(method, url, header_params=headers, body=body_out,
                                     _request_timeout=30)
            resp.read()
            data, status, headers_in = resp.data, resp.status, resp.getheaders()
        except client.ApiException as e:  # some transports raise instead of returning
            data, status, headers_in = (e.body or b""), e.status, e.headers
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8", errors="replace")
        if status >= 400:
            retry_after = _retry_after(headers_in)
            try:
                st = json.loads(data)
            except ValueError:
                raise KubeError(status, "", data[:500], retry_after) from None
            raise KubeError(status, st.get("reason", ""), st.get("message", data), retry_after)
        return json.loads(data) if data else {}

    def watch_one(self, res: Resource, namespace: str, name: str | None, resource_version: str | None,
                  timeout: float, label_selector: str | None = None) -> bool:
        """Blocks until the object changes after `resource_version` (True), or `timeout` seconds
        pass without a change (False). Reads only: one watch request, closed at the first event.

        A `resource_version` the API server no longer keeps history for (410 Gone: it restarted,
        or etcd compacted) wakes the caller once, to read the world again; the same wait asked
        again then watches from where a list stood at that wake, not from the lost version. Else
        an object that has not changed since would be re-read and re-watched from its own version,
        and 410 again at once: a busy loop against an API server that has just come back."""
        selectors = {}
        if name:        # one object; without a name, any object of the namespace's collection
            selectors["fieldSelector"] = f"metadata.name={name}"
        if label_selector:
            selectors["labelSelector"] = label_selector
        key = (res.path(namespace), tuple(sorted(selectors.items())), resource_version)
        since = self._gone.get(key, resource_version)
        query = {"watch": "1", "timeoutSeconds": str(max(1, int(timeout))), **selectors}
        if since:
            query["resourceVersion"] = since
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=res.path(namespace), query_params=list(query.items()),
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(method, url, header_params=headers, _request_timeout=timeout + 10)
        except client.ApiException as e:
            if e.status == 410:
                return self._lost_history(key, res, namespace, selectors)
            raise KubeError(e.status, e.reason or "", "watch refused") from None
        raw = resp.response
        try:
            if resp.status == 410:
                return self._lost_history(key, res, namespace, selectors)
            if resp.status >= 400:
                raise KubeError(resp.status, "", "watch refused")
            buffer = b""
            for chunk in raw.stream(4096, decode_content=True):
                buffer += chunk
                if b"\n" in buffer:
                    if _gone_event(buffer.split(b"\n", 1)[0]):
                        return self._lost_history(key, res, namespace, selectors)
                    return True        # ADDED, MODIFIED, DELETED, or another ERROR: look again
            return bool(buffer.strip())
        finally:
            raw.close()
            raw.release_conn()

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether the API server is there again: GET /readyz answered 200, or refused in a way
        only a running API server refuses (401, 403: a cluster that keeps /readyz from this
        account); False while it cannot be reached or says it is not ready (5xx, 429). Never
        raises."""
        try:
            method, url, headers, _, _ = self.api.param_serialize(
                method="GET", resource_path="/readyz", header_params={"Accept": "text/plain"},
                auth_settings=["BearerToken"])
            resp = self.api.call_api(method, url, header_params=headers, _request_timeout=timeout)
            resp.read()
            status = resp.status
        except client.ApiException as e:
            status = e.status
        except Exception:  # noqa: BLE001 - unreachable, in any of the ways a connection fails
            return False
        return status == 200 or status in (401, 403)

    def _lost_history(self, key: tuple, res: Resource, namespace: str, selectors: dict) -> bool:
        """410 Gone: where the collection stands now (a list of at most one item: its
        resourceVersion is current), kept for the next watch of the same wait. True: the caller
        reads the world again, since something may have changed in the history that was lost."""
        listed = self.request("GET", res.path(namespace), query={**selectors, "limit": "1"})
        current = (listed.get("metadata") or {}).get("resourceVersion")
        if current:
            if len(self._gone) >= GONE_MEMORY:
                self._gone.clear()
            self._gone[key] = current
        return True

    # --- conveniences -----------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> dict:
        return self.request("GET", res.path(namespace, name))

    def list(self, res: Resource, namespace: str, label_selector: str | None = None) -> list[dict]:
        query = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", res.path(namespace), query=query).get("items", [])

    def patch(self, res: Resource, namespace: str, name: str, body: Any, content_type: str,
              sub: str | None = None) -> dict:
        return self.request("PATCH", res.path(namespace, name, sub), body=body,
                            query={"fieldManager": FIELD_MANAGER}, content_type=content_type)

    def create(self, res: Resource, namespace: str, body: dict) -> dict:
        return self.request("POST", res.path(namespace), body=body,
                            query={"fieldManager": FIELD_MANAGER})

    def can_i(self, namespace: str, verb: str, res: Resource, name: str | None = None) -> bool:
        attrs = {"namespace": namespace, "verb": verb, "group": res.group, "resource": res.plural}
        if name:
            attrs["name"] = name
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attrs}}
        out = self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
        return bool(out.get("status", {}).get("allowed"))
