"""The Alertmanager silence adapter against the real Alertmanager: a silence suppresses the alerts
it matches, as Alertmanager's own API shows them, until it is expired; a restarted operator adopts
its silence by marker; expiring is idempotent; each failure says what went wrong, on one line."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from loopback import LOOPBACK
from rewind.adapters import alertmanager as am
from rewind_testbed.procs import free_port


def _later(minutes: float = 30) -> datetime:
    return datetime.now(timezone.utc) + timedelta(minutes=minutes)


def _matchers(app: str) -> list[dict]:
    return [{"name": "app", "value": app, "isRegex": False, "isEqual": True},
            {"name": "severity", "value": "warning|critical", "isRegex": True, "isEqual": True}]


def _fire(url: str, **labels: str) -> None:
    httpx.post(f"{url}/api/v2/alerts", json=[{"labels": labels}]).raise_for_status()


def _alert_status(url: str, app: str, severity: str) -> dict:
    alerts = httpx.get(f"{url}/api/v2/alerts", params={
        "filter": [f'app="{app}"', f'severity="{severity}"']}).json()
    assert len(alerts) == 1, alerts
    return alerts[0]["status"]


def test_a_silence_suppresses_matching_alerts_until_it_is_expired(alertmanager):
    url, app = alertmanager.url, f"shop-{secrets.token_hex(3)}"
    sid = am.create_silence(url, _matchers(app), ends_at=_later(), created_by="rewind",
                            comment=f"rollback of {app}", rules=LOOPBACK)
    assert am.silence_state(url, sid, rules=LOOPBACK) == "active"

    listed = {s["id"]: s for s in httpx.get(f"{url}/api/v2/silences").json()}
    assert listed[sid]["createdBy"] == "rewind"
    assert listed[sid]["status"]["state"] == "active"
    assert [(m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in listed[sid]["matchers"]] \
        == [("app", app, False, True), ("severity", "warning|critical", True, True)]

    _fire(url, alertname="HighErrorRate", app=app, severity="critical")
    _fire(url, alertname="SlowRequests", app=app, severity="info")
    silenced = _alert_status(url, app, "critical")
    assert silenced["state"] == "suppressed" and sid in silenced["silencedBy"]
    unmatched = _alert_status(url, app, "info")
    assert unmatched["state"] == "active" and unmatched["silencedBy"] == []

    assert am.expire_silence(url, sid, rules=LOOPBACK) is True
    assert am.silence_state(url, sid, rules=LOOPBACK) == "expired"
    again = _alert_status(url, app, "critical")
    assert again["state"] == "active" and again["silencedBy"] == []
    assert am.expire_silence(url, sid, rules=LOOPBACK) is True
    assert am.silence_state(url, sid, rules=LOOPBACK) == "expired"


def test_a_restarted_operator_adopts_its_silence_by_marker(alertmanager):
    url, marker = alertmanager.url, f"rewind.dev/rollback-uid={secrets.token_hex(8)}"
    assert am.find_silence(url, marker, rules=LOOPBACK) is None
    sid = am.create_silence(url, _matchers("billing"), ends_at=_later(), created_by="rewind",
                            comment=f"Rollback billing/api in progress ({marker})", rules=LOOPBACK)
    assert am.find_silence(url, marker, rules=LOOPBACK) == sid
    assert am.find_silence(url, marker + "-other", rules=LOOPBACK) is None
    am.expire_silence(url, sid, rules=LOOPBACK)
    assert am.find_silence(url, marker, rules=LOOPBACK) is None


def test_expiring_an_unknown_silence_is_fine(alertmanager):
    unknown = "00000000-0000-4000-8000-000000000000"
    assert am.silence_state(alertmanager.url, unknown, rules=LOOPBACK) is None
    assert am.expire_silence(alertmanager.url, unknown, rules=LOOPBACK) is True


def test_a_wrong_path_is_refused_rather_than_taken_for_a_missing_silence(alertmanager):
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(am.AlertmanagerError) as err:
        am.expire_silence(f"{alertmanager.url}/alertmanager", unknown, rules=LOOPBACK)
    assert err.value.reason == am.REFUSED
    assert f"{alertmanager.url}/alertmanager" in err.value.message
    assert "answered 404: 404 page not found" in err.value.message


def test_unreachable_alertmanager_is_named_without_credentials():
    port = free_port()
    with pytest.raises(am.AlertmanagerError) as err:
        am.create_silence(f"http://rewind:canary-password@127.0.0.1:{port}/?token=canary-token",
                          _matchers("x"), ends_at=_later(), created_by="rewind", comment="c",
                          timeout=3, rules=LOOPBACK)
    assert err.value.reason == am.UNREACHABLE
    message = err.value.message
    assert message.startswith(f"Alertmanager at http://127.0.0.1:{port} (POST /api/v2/silences) "
                              f"is unreachable: connection failed"), message
    assert "canary" not in message and "\n" not in message


@pytest.mark.parametrize("matchers,ends_at,reason", [
    # Alertmanager's own words go on to quote the value and its parser's error: not shown.
    ([{"name": "app", "value": "(", "isRegex": True}], _later(), "invalid regular expression"),
    ([{"name": "app", "value": ""}], _later(),
     "at least one matcher must not match the empty string"),
    ([], _later(), "matchers in body should have at least 1 items"),
    (_matchers("x"), _later(-5), "start time must be before end time"),
])
def test_an_invalid_silence_is_refused_with_alertmanagers_reason(alertmanager, matchers, ends_at,
                                                                 reason):
    with pytest.raises(am.AlertmanagerError) as err:
        am.create_silence(alertmanager.url, matchers, ends_at=ends_at, created_by="rewind",
                          comment="c", rules=LOOPBACK)
    assert err.value.reason == am.REFUSED
    # The known reason and nothing more of what Alertmanager answered.
    assert re.search(rf" answered 4\d\d: {re.escape(reason)}$", err.value.message), err.value.message
    assert "\n" not in err.value.message


def test_an_alertmanager_behind_basic_auth_takes_the_credentials(tmp_path):
    from rewind_testbed.alertmanager import Alertmanager

    password = "am-pass-canary-" + secrets.token_hex(4)
    with Alertmanager.start(tmp_path / "am-auth", basic_auth=("rewind", password)) as locked:
        with pytest.raises(am.AlertmanagerError) as refused:
            am.find_silence(locked.url, "x", rules=LOOPBACK)
        assert refused.value.reason == am.REFUSED and "answered 401: access refused" in refused.value.message
        with pytest.raises(am.AlertmanagerError) as wrong:
            am.find_silence(locked.url, "x", auth=("rewind", "not-" + password), rules=LOOPBACK)
        assert password not in wrong.value.message
        sid = am.create_silence(locked.url, _matchers("web"), ends_at=_later(), created_by="rewind",
                                comment="locked", auth=("rewind", password), rules=LOOPBACK)
        assert am.silence_state(locked.url, sid, auth=("rewind", password), rules=LOOPBACK) == "active"
        assert am.expire_silence(locked.url, sid, auth=("rewind", password), rules=LOOPBACK)
        assert am.silence_state(locked.url, sid, auth=("rewind", password), rules=LOOPBACK) == "expired"
