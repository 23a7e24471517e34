"""HTTP checks (httpx): one measurement of an endpoint. Connections go only where the policy's
egress allows (see egress.py), TLS is verified unless the check says otherwise, redirects are not followed (a 302 elsewhere is not the service being healthy), and no
more than MAX_BODY bytes are read, so a huge or never-ending body cannot stall the operator."""

from __future__ import annotations

import json
import time
from typing import Sequence

import httpx

from rewind import egress
from rewind.adapters.measurement import Measurement
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule
from rewind.api.v1alpha1 import HttpCheck

MAX_BODY = 1024 * 1024


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


def read_capped(response: httpx.Response, limit: int, deadline: float) -> bytes:
    """A streamed response's body, at most `limit` bytes and finished by `deadline` (monotonic):
    a huge or never-ending body cannot hold the operator."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
        if time.monotonic() > deadline:
            raise BodyTooSlow
    return body


def _m(ok: bool, detail: str) -> Measurement:
    return Measurement("Passed" if ok else "Failed", detail)


def json_value(document, path: str):
    """The value at a `$.a.b[0]` path, or KeyError."""
    value = document
    for part in path[1:].replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            value = value[int(part[1:-1])]
        else:
            value = value[part]
    return value


def measure(check: HttpCheck, rules: Sequence[EgressRule]) -> Measurement:
    """One measurement, connecting only where `rules` (the policy's egress) allow. The detail
    says what the endpoint answered in fixed words only (status code, latency, a reason): never
    its body, a value in it, a header or an exception's text."""
    t0 = time.monotonic()
    shown = redact(check.url)
    try:
        with egress.http_client(rules, verify=not check.insecure_skip_tls_verify,
                                follow_redirects=False, timeout=check.timeout_seconds) as client:
            with client.stream(check.method, check.url) as response:
                try:
                    body = read_capped(response, MAX_BODY, t0 + check.timeout_seconds)
                except BodyTooLarge:
                    return _m(False, f"{shown} answered {response.status_code} with a body larger "
                                     f"than {MAX_BODY // 1024} KiB")
                except BodyTooSlow:
                    return _m(False, f"{shown} did not finish its body within {check.timeout_seconds}s")
    except ReasonedError as e:          # refused by the egress policy, or a name that does not resolve
        return _m(False, e.message)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return _m(False, f"{shown}: the URL is not valid")
    except httpx.TimeoutException:
        return _m(False, f"{shown} did not answer within {check.timeout_seconds}s")
    except httpx.HTTPError as e:
        return _m(False, f"{shown}: connection failed: {egress.failure(e)}")
    ms = int((time.monotonic() - t0) * 1000)
    status = response.status_code
    if status != check.expect_status:
        where = " (a redirect, not followed)" if 300 <= status < 400 else ""
        return _m(False, f"{shown} answered {status}, expected {check.expect_status}{where}")
    if check.max_latency_ms and ms > check.max_latency_ms:
        return _m(False, f"{shown} took {ms} ms, more than {check.max_latency_ms} ms")
    text = body.decode("utf-8", errors="replace")
    if check.body_contains and check.body_contains not in text:
        return _m(False, f"{shown}'s body does not contain the expected text")
    if check.json_path:
        try:
            value = json_value(json.loads(text), check.json_path)
        except (ValueError, KeyError, IndexError, TypeError):
            return _m(False, f"{shown}'s body has no JSON value at {check.json_path}")
        found = value if isinstance(value, str) else json.dumps(value)
        if check.json_equals is not None and found != check.json_equals:
            return _m(False, f"the JSON value at {check.json_path} differed from the expected value")
    return _m(True, f"{shown} answered {status} in {ms} ms")


def redact(url: str) -> str:
    """The URL without user info, query or fragment: what may be shown (those may hold tokens)."""
    try:
        u = httpx.URL(url)
        return str(u.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError):
        return "(an invalid URL)"


def check_url(url: str, what: str) -> None:
    """Preflight: an http(s) URL with a host that httpx can use; StepFailed naming `what` only."""
    from rewind.context import StepFailed   # the adapters raise their own errors elsewhere

    try:
        u = httpx.URL(url.strip())
        ok = u.scheme in ("http", "https") and bool(u.host) and ".." not in u.host
        u.port  # noqa: B018 - raises on a bad port
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError):
        ok = False
    if not ok:
        raise StepFailed("InvalidURL", f"{what} is not a valid http(s) URL with a host")


def call(url: str, method: str, body: str | None, *, timeout: float, verify: bool = True,
         label: str = "the hook", headers: dict[str, str] | None = None,
         rules: Sequence[EgressRule], secret: str | None = None) -> tuple[bool, bool, str]:
    """One call of a hook: (ok on 2xx, worth retrying, detail), connecting only where `rules`
    allow (`secret`: the Secret the URL came from, named instead of it). The detail names `label`,
    never the URL (it may come from a Secret). Redirects are not followed; the body is not read."""
    headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    try:
        with egress.http_client(rules, verify=verify, secret=secret, follow_redirects=False,
                                timeout=timeout) as client:
            with client.stream(method, url.strip(), content=body, headers=headers) as response:
                pass
    except egress.EgressDenied as e:
        return False, False, f"{label}: {e.message}"
    except ReasonedError as e:
        return False, True, f"{label}: {e.message}"
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return False, False, f"{label}: the URL is not valid"
    except httpx.TimeoutException:
        return False, True, f"{label} did not answer within {timeout:g}s"
    except httpx.HTTPError as e:
        why = egress.failure(e)
        trust = why == "certificate not trusted"
        return False, not trust, f"{label}: {'its TLS certificate is not trusted' if trust else 'connection failed: ' + why}"
    status = response.status_code
    if 200 <= status < 300:
        return True, False, f"{label} answered {status}"
    retry = status >= 500 or status in (408, 425, 429)
    return False, retry, f"{label} answered {status}"
