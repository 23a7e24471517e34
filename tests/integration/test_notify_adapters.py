"""Notification delivery against real local receivers: Slack, a JSON webhook and an SMTP server
get what was sent; a retry of one notification is recognisable as a repeat; every failure says
whether a retry can help; no detail ever shows the URL or a credential."""

from __future__ import annotations

import socket
import time

import pytest

from loopback import LOOPBACK
from rewind_testbed.certs import issue, pki
from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver, server_tls_context
from rewind import __version__
from rewind.adapters import notify
from rewind.adapters.notify import Delivery
from rewind.api.v1alpha1 import SmtpServer

TOKEN = "T0KEN-s3cr3t-XoXb-9f8e7d"
PASSWORD = "pa55-w0rd-Zq9"


def checked(d: Delivery, *secrets: str) -> Delivery:
    """The detail is one line without any of the secrets (by default: the secret webhook URL's
    token and host:port)."""
    for secret in secrets or (TOKEN, "127.0.0.1:"):
        assert secret not in d.detail, d.detail
    assert "\n" not in d.detail
    return d


@pytest.fixture
def hook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def slack():
    with WebhookReceiver(slack=True) as receiver:
        yield receiver


def secret_url(receiver: WebhookReceiver) -> str:
    return receiver.url(f"/services/{TOKEN}?sig={TOKEN}")


# --- Slack and webhooks -------------------------------------------------------------------------

def test_slack_gets_the_text(slack):
    d = checked(notify.send_slack(secret_url(slack), "Rollback *shop* started", rules=LOOPBACK))
    assert d.ok and d.detail == "Slack answered 200"
    [r] = slack.requests
    assert r.payload == {"text": "Rollback *shop* started"}
    assert r.headers["User-Agent"] == f"rewind/{__version__}"


def test_slack_error_code_is_reported_but_not_retried(slack):
    slack.fail_next(1, status=404, body="no_service")
    d = checked(notify.send_slack(secret_url(slack), "hello", rules=LOOPBACK))
    assert not d.ok and not d.retryable
    assert d.detail == "Slack answered 404 (no_service)"


def test_webhook_gets_json_and_the_idempotency_key(hook):
    payload = {"event": "Succeeded", "rollback": "shop", "steps": [1, 2]}
    d = checked(notify.send_webhook(secret_url(hook), payload, "rb-shop-Succeeded-1", rules=LOOPBACK))
    assert d.ok
    [r] = hook.requests
    assert r.method == "POST" and r.payload == payload
    assert r.key == "rb-shop-Succeeded-1"
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["User-Agent"] == f"rewind/{__version__}"


@pytest.mark.parametrize("fault", ["fail", "drop"])
def test_a_retry_carries_the_same_key_and_is_acted_on_once(hook, fault):
    hook.fail_next(1, status=503) if fault == "fail" else hook.drop_next(1)
    first = checked(notify.send_webhook(secret_url(hook), {"n": 1}, "key-1", rules=LOOPBACK))
    assert not first.ok and first.retryable
    assert first.detail == ("The webhook answered 503" if fault == "fail"
                            else "The webhook: the connection closed without an answer")
    again = checked(notify.send_webhook(secret_url(hook), {"n": 1}, "key-1", rules=LOOPBACK))
    assert again.ok
    assert [r.key for r in hook.requests] == ["key-1", "key-1"]
    assert len(hook.delivered) == 1


@pytest.mark.parametrize("status,retryable", [
    (400, False), (401, False), (404, False), (410, False),
    (408, True), (425, True), (429, True), (500, True), (503, True),
    (302, False),
])
def test_whether_an_error_answer_is_worth_retrying(hook, status, retryable):
    hook.fail_next(1, status=status, body=f"token {TOKEN} rejected")
    d = checked(notify.send_webhook(secret_url(hook), {}, "k", rules=LOOPBACK))
    assert not d.ok and d.retryable is retryable
    assert d.detail.startswith(f"The webhook answered {status}")
    assert hook.delivered == []


def test_a_slow_receiver_times_out_and_is_retried(hook):
    hook.slow_next(1, seconds=2)
    t0 = time.monotonic()
    d = checked(notify.send_webhook(secret_url(hook), {}, "slow-1", timeout=0.3, rules=LOOPBACK))
    assert time.monotonic() - t0 < 1.5
    assert not d.ok and d.retryable and d.detail == "The webhook: timed out after 0.3s"
    assert checked(notify.send_webhook(secret_url(hook), {}, "slow-1", timeout=0.3, rules=LOOPBACK)).ok
    assert len(hook.requests) == 2 and len(hook.delivered) == 1   # the slow one was acted on


def test_a_never_ending_answer_is_not_read_to_the_end():
    """A receiver that answers 200 and then streams for ever: the send returns (without the cap
    it would hang until the test's timeout), and it read only a sliver of what was on offer."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    sent = {"bytes": 0}

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
        try:
            for _ in range(100_000):            # 1.6 GB on offer
                conn.sendall(chunk)
                sent["bytes"] += len(chunk)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    d = checked(notify.send_webhook(f"http://127.0.0.1:{listener.getsockname()[1]}/{TOKEN}", {}, "k", timeout=2,
                                    rules=LOOPBACK))
    t.join(timeout=10)
    listener.close()
    assert d.ok
    assert sent["bytes"] < 64 * 1024 * 1024       # kernel buffers aside, the client stopped reading


def test_unreachable_and_invalid_urls():
    port = _closed_port()
    refused = checked(notify.send_webhook(f"http://127.0.0.1:{port}/{TOKEN}", {}, "k", timeout=1,
                                          rules=LOOPBACK))
    assert not refused.ok and refused.retryable
    assert refused.detail == "The webhook: connection failed: connection refused"
    invalid = checked(notify.send_slack(f"hooks.slack.com/services/{TOKEN}", "x", rules=LOOPBACK))
    assert not invalid.ok and not invalid.retryable and "not a valid http(s) URL" in invalid.detail


def test_an_untrusted_webhook_certificate_is_refused_unless_verification_is_off(tmp_path):
    import httpservers

    leaf = issue("localhost", hosts=["localhost"])             # self-signed
    (tmp_path / "c.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "k.pem").write_bytes(leaf.key_pem)
    server, url = httpservers.start(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    try:
        d = checked(notify.send_webhook(f"{url}/{TOKEN}", {}, "k", rules=LOOPBACK))
        assert not d.ok and not d.retryable and "not trusted" in d.detail
        # httpservers answers 501 to any POST: TLS got through.
        plain = notify.send_webhook(f"{url}/{TOKEN}", {}, "k", verify=False, rules=LOOPBACK)
        assert "answered 501" in plain.detail
    finally:
        server.shutdown()


# --- e-mail -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls():
    """A CA, and a context serving localhost's certificate (leaf and intermediate) from it."""
    root, inter = pki()
    leaf = issue("localhost", inter, hosts=["localhost"])
    return root.cert_pem.decode(), server_tls_context(leaf.cert_pem + inter.cert_pem, leaf.key_pem)


def smtp(receiver: SmtpReceiver, security: str = "None", host: str | None = None) -> SmtpServer:
    return SmtpServer(host=host or receiver.host, port=receiver.port, security=security)


def mail(server: SmtpServer, message_id: str = "<rb-shop-Started-1@rewind.dev>", **kw) -> Delivery:
    kw = {"sender": "rewind@example.com", "to": ["oncall@example.com", "lead@example.com"],
          "subject": "Rollback shop started", "body": "Rolling back shop to v41.\n", "timeout": 3, **kw}
    return checked(notify.send_email(server, message_id=message_id, rules=LOOPBACK, **kw), PASSWORD)


def test_plain_email_is_delivered_with_its_headers():
    with SmtpReceiver() as rx:
        d = mail(smtp(rx), subject="Rollback shop\nstarted")
        assert d.ok and "for 2 recipient(s)" in d.detail
        [m] = rx.messages
    assert m.mail_from == "rewind@example.com"
    assert m.rcpt_tos == ["oncall@example.com", "lead@example.com"]
    assert m.message["Subject"] == "Rollback shop started"
    assert m.message_id == "<rb-shop-Started-1@rewind.dev>"
    assert m.message["To"] == "oncall@example.com, lead@example.com"
    assert m.message["From"] == "rewind@example.com"
    assert m.message["Date"] is not None
    assert m.message.get_content().replace("\r\n", "\n") == "Rolling back shop to v41.\n"
    assert not m.tls and m.user is None


def test_starttls_with_auth_and_a_private_ca(tls):
    ca, context = tls
    with SmtpReceiver(tls_context=context, credentials=("alice", PASSWORD)) as rx:
        d = mail(smtp(rx, "StartTLS", "localhost"), username="alice", password=PASSWORD, ca_pem=ca)
        assert d.ok, d.detail
        [m] = rx.messages
    assert m.tls and m.user == "alice"


def test_implicit_tls_with_auth(tls):
    ca, context = tls
    with SmtpReceiver(tls_context=context, implicit_tls=True, credentials=("alice", PASSWORD)) as rx:
        assert mail(smtp(rx, "TLS", "localhost"), username="alice", password=PASSWORD, ca_pem=ca).ok
        [m] = rx.messages
    assert m.tls and m.user == "alice"


def test_a_wrong_password_is_not_retried(tls):
    ca, context = tls
    with SmtpReceiver(tls_context=context, credentials=("alice", "the-right-one")) as rx:
        d = mail(smtp(rx, "StartTLS", "localhost"), username="alice", password=PASSWORD, ca_pem=ca)
        assert rx.messages == []
    assert not d.ok and not d.retryable and "refused the credentials (535)" in d.detail


def test_a_server_requiring_auth_refuses_mail_without_it(tls):
    ca, context = tls
    with SmtpReceiver(tls_context=context, credentials=("alice", PASSWORD)) as rx:
        d = mail(smtp(rx, "StartTLS", "localhost"), ca_pem=ca)
        assert rx.messages == []
    assert not d.ok and not d.retryable and "refused the sender rewind@example.com (530)" in d.detail


@pytest.mark.parametrize("trusted", ["system roots", "another CA"])
def test_an_untrusted_certificate_is_refused(tls, trusted):
    _, context = tls
    other_ca = None if trusted == "system roots" else pki()[0].cert_pem.decode()
    with SmtpReceiver(tls_context=context, credentials=("alice", PASSWORD)) as rx:
        d = mail(smtp(rx, "StartTLS", "localhost"), username="alice", password=PASSWORD, ca_pem=other_ca)
        assert rx.messages == []
    assert not d.ok and not d.retryable and "TLS certificate is not trusted" in d.detail


def test_starttls_required_but_not_offered():
    with SmtpReceiver() as rx:
        d = mail(smtp(rx, "StartTLS"))
        assert rx.messages == []
    assert not d.ok and not d.retryable and "does not offer STARTTLS" in d.detail


def test_a_temporary_failure_is_retried_and_the_resend_is_one_message():
    with SmtpReceiver() as rx:
        rx.fail_next(1, code=451)
        first = mail(smtp(rx))
        assert not first.ok and first.retryable and "refused the message (451)" in first.detail
        assert mail(smtp(rx)).ok
        assert len(rx.unique) == 1


def test_a_lost_answer_is_retried_and_the_resend_has_the_same_message_id():
    with SmtpReceiver() as rx:
        rx.drop_next(1)
        first = mail(smtp(rx))
        assert not first.ok and first.retryable, first.detail
        assert mail(smtp(rx)).ok
        assert len(rx.messages) == 2 and len(rx.unique) == 1


def test_a_refused_recipient_is_not_retried():
    with SmtpReceiver() as rx:
        rx.fail_next(1, code=550, at="RCPT")
        d = mail(smtp(rx), to=["nobody@example.com"])
        assert rx.messages == []
    assert not d.ok and not d.retryable and "nobody@example.com (550)" in d.detail


def test_credentials_are_never_sent_without_tls():
    with SmtpReceiver() as rx:
        d = mail(smtp(rx, "None"), username="alice", password=PASSWORD)
        assert rx.connections == 0 and rx.messages == []
    assert not d.ok and not d.retryable and "only sent over TLS" in d.detail


def test_an_unreachable_smtp_server_is_retried():
    d = mail(SmtpServer(host="127.0.0.1", port=_closed_port(), security="None"))
    assert not d.ok and d.retryable and "connection failed" in d.detail


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
