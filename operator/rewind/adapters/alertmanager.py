"""Alertmanager silences (HTTP API v2, httpx): while a rollback runs, the alerts it would set off
are silenced, and the silence is expired afterwards. A silence's comment carries a marker, so that
an operator restarted mid-rollback adopts its silence instead of creating a second one.

Redirects are not followed (a login page is not an Alertmanager), no more than MAX_BODY bytes of an
answer are read, and each call finishes within its timeout. Every failure is an AlertmanagerError
on one line that names the Alertmanager without the credentials or query of its URL.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime, timezone
from typing import Sequence, Union
from urllib.parse import quote

import httpx

from rewind import egress
from rewind.adapters.http import BodyTooLarge, BodyTooSlow, read_capped
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule

Auth = Union[tuple[str, str], str, None]   # (username, password) for basic auth, or a bearer token
MAX_BODY = 8 * 1024 * 1024       # the silence list holds expired silences too, for days
UNREACHABLE = "AlertmanagerUnreachable"
REFUSED = "AlertmanagerRefused"
Verify = bool | ssl.SSLContext   # as httpx takes it: check TLS or not, or trust these CAs


class AlertmanagerError(ReasonedError):
    """UNREACHABLE when no answer came (connection, TLS, timeout); REFUSED when Alertmanager, or
    whatever answered at its URL, said no or answered something that is not the API."""


def _where(url: str) -> str:
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.host:
        raise AlertmanagerError(UNREACHABLE, "the Alertmanager URL is not a valid http:// or "
                                             "https:// URL")
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path.rstrip('/')}"


# Alertmanager's own reasons for refusing a silence, as it words them: the only answer text shown
# (whatever answers at the URL says is otherwise never quoted).
KNOWN_REASONS = ("invalid regular expression", "at least one matcher must not match the empty string",
                 "matchers in body should have at least 1 items", "start time must be before end time",
                 "end time must not be in the past", "silence not found", "silence ID mismatch",
                 "404 page not found")


def _server_reason(body: bytes) -> str:
    text = body[:4096].decode("utf-8", errors="replace")
    known = next((r for r in KNOWN_REASONS if r in text), None)
    return known or "its answer is not shown (an endpoint's text is never copied into status)"


def _call(method: str, base_url: str, path: str, *, timeout: float, verify: Verify,
          absent: tuple[int, ...] = (), json_body: dict | None = None, auth: Auth = None,
          rules: Sequence[EgressRule]):
    """The decoded JSON answer of one request; None for a status in `absent` with an empty body.
    Connects only where `rules` (the policy's egress) allow; EgressDenied otherwise."""
    where = _where(base_url)
    what = f"Alertmanager at {where} ({method} {path})"
    t0 = time.monotonic()
    try:
        basic = auth if isinstance(auth, tuple) else None
        headers = {"Authorization": f"Bearer {auth}"} if isinstance(auth, str) else {}
        with egress.http_client(rules, verify=verify, follow_redirects=False, timeout=timeout,
                                auth=basic, headers=headers) as client:
            with client.stream(method, base_url.rstrip("/") + path, json=json_body) as response:
                try:
                    body = read_capped(response, MAX_BODY, t0 + timeout)
                except BodyTooLarge:
                    raise AlertmanagerError(REFUSED, f"{what} answered with a body larger "
                                                     f"than {MAX_BODY // 1024 // 1024} MiB") from None
                except BodyTooSlow:
                    raise AlertmanagerError(UNREACHABLE, f"{what} did not finish its answer "
                                                         f"within {timeout:g}s") from None
    except egress.HostNotFound as e:
        raise AlertmanagerError(UNREACHABLE, f"{what} is unreachable: {e.message}") from None
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise AlertmanagerError(UNREACHABLE, f"{what}: the URL is not valid") from None
    except httpx.TimeoutException:
        raise AlertmanagerError(UNREACHABLE, f"{what} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as e:
        why = egress.failure(e)
        why = "its TLS certificate is not trusted" if why == "certificate not trusted" else f"connection failed: {why}"
        raise AlertmanagerError(UNREACHABLE, f"{what} is unreachable: {why}") from None
    status = response.status_code
    # Alertmanager says "no such silence" with an empty 404; a 404 with a body is a wrong URL (a
    # path prefix, a proxy), which must not pass for a silence already gone.
    if status in absent and not body:
        return None
    if 300 <= status < 400:
        raise AlertmanagerError(REFUSED, f"{what} answered {status}, a redirect that is not "
                                         f"followed; point the URL at Alertmanager itself")
    if status in (401, 403):
        raise AlertmanagerError(REFUSED, f"{what} answered {status}: access refused "
                                         f"(authentication needed, or not accepted)")
    if status != 200:
        raise AlertmanagerError(REFUSED, f"{what} answered {status}: {_server_reason(body)}")
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise AlertmanagerError(REFUSED, f"{what} answered {status} with a body that is not "
                                         f"JSON") from None


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a silence's times must carry a time zone")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _silence_path(silence_id: str) -> str:
    return f"/api/v2/silence/{quote(silence_id, safe='')}"


def create_silence(base_url: str, matchers: list[dict], *, ends_at: datetime, created_by: str,
                   comment: str, timeout: float = 10, verify: Verify = True, auth: Auth = None,
                   rules: Sequence[EgressRule]) -> str:
    """Silences, from now until `ends_at`, the alerts whose labels match every matcher
    ({"name", "value", "isRegex", "isEqual"}); returns the silence's id."""
    body = {
        "matchers": [{"name": m["name"], "value": m["value"], "isRegex": bool(m.get("isRegex")),
                      "isEqual": bool(m.get("isEqual", True))} for m in matchers],
        "startsAt": _timestamp(datetime.now(timezone.utc)),
        "endsAt": _timestamp(ends_at),
        "createdBy": created_by,
        "comment": comment,
    }
    answer = _call("POST", base_url, "/api/v2/silences", json_body=body, timeout=timeout,
                   verify=verify, auth=auth, rules=rules)
    silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
    if not isinstance(silence_id, str) or not silence_id:
        raise AlertmanagerError(REFUSED, f"Alertmanager at {_where(base_url)} accepted the silence "
                                         f"but answered without its silenceID")
    return silence_id


def find_silence(base_url: str, marker: str, *, timeout: float = 10,
                 verify: Verify = True, auth: Auth = None, rules: Sequence[EgressRule]) -> str | None:
    """The id of an active or pending silence whose comment contains `marker` (the one that ends
    last, should there be several), or None."""
    answer = _call("GET", base_url, "/api/v2/silences", timeout=timeout, verify=verify, auth=auth, rules=rules)
    if not isinstance(answer, list):
        raise AlertmanagerError(REFUSED, f"Alertmanager at {_where(base_url)} answered the "
                                         f"silence list with something that is not a list")
    live = [s for s in answer if isinstance(s, dict)
            and s.get("status", {}).get("state") in ("active", "pending")
            and marker in s.get("comment", "")]
    if not live:
        return None
    return max(live, key=lambda s: datetime.fromisoformat(s["endsAt"]))["id"]


def expire_silence(base_url: str, silence_id: str, *, timeout: float = 10,
                   verify: Verify = True, auth: Auth = None, rules: Sequence[EgressRule]) -> bool:
    """Expires the silence now. Idempotent: True also when it had expired already or is gone
    (Alertmanager forgets expired silences after its retention); failures raise."""
    _call("DELETE", base_url, _silence_path(silence_id), absent=(404,), timeout=timeout,
          verify=verify, auth=auth, rules=rules)
    return True


def silence_state(base_url: str, silence_id: str, *, timeout: float = 10,
                  verify: Verify = True, auth: Auth = None, rules: Sequence[EgressRule]) -> str | None:
    """The silence's state, "active", "pending" or "expired"; None when Alertmanager has no such
    silence."""
    answer = _call("GET", base_url, _silence_path(silence_id), absent=(404,), timeout=timeout,
                   verify=verify, auth=auth, rules=rules)
    if answer is None:
        return None
    state = answer.get("status", {}).get("state") if isinstance(answer, dict) else None
    if state not in ("active", "pending", "expired"):
        raise AlertmanagerError(REFUSED, f"Alertmanager at {_where(base_url)} answered silence "
                                         f"{silence_id} without a known state")
    return state
