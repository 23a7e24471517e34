"""Delivery of notifications: a Slack incoming webhook, a generic JSON webhook, SMTP e-mail. One
call is one attempt; the engine decides whether and when to try again.

What every attempt guarantees:

- A notification looks the same on every attempt: a webhook request carries the caller's
  `Idempotency-Key`, an e-mail the caller's `Message-ID`. An answer can be lost after the receiver
  acted (the engine then sends again), so a receiver that drops repeats acts once. A Slack incoming
  webhook has no such header: there, a lost answer can mean a repeated message.
- Connections go only where the policy's egress allows, to the address that was checked (see
  egress.py); a refusal is a failed attempt that is not retried.
- `Delivery.detail` is one line without the URL (Slack and webhook URLs are secrets), a credential,
  a header value or an answer's body (save Slack's documented error codes, `no_service` and the
  like, from a fixed list). No exception's text is quoted: it may contain the URL or the answer.
- TLS is verified (a webhook may opt out); SMTP credentials are only sent over TLS.
- Redirects are not followed, at most MAX_ANSWER bytes of an answer are read, and no single wait on
  the network is longer than `timeout`.
- `retryable` is False when trying again cannot help until someone changes something: a 4xx answer
  other than 408, 425 and 429, a redirect, an untrusted certificate, a 5xx SMTP reply (refused
  credentials, sender or recipients), a server that does not offer STARTTLS or AUTH.
"""

from __future__ import annotations

import contextlib
import email.utils
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Sequence

import httpx

from rewind import __version__, egress
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule
from rewind.api.v1alpha1 import SmtpSecurity, SmtpServer

MAX_ANSWER = 4 * 1024
USER_AGENT = f"rewind/{__version__}"
RETRYABLE_4XX = frozenset({408, 425, 429})
# Slack's documented incoming-webhook errors: the only answer text ever shown.
SLACK_ERRORS = frozenset({
    "invalid_payload", "user_not_found", "channel_not_found", "channel_is_archived",
    "action_prohibited", "posting_to_general_channel_denied", "too_many_attachments", "no_service",
    "no_service_id", "no_team", "team_disabled", "invalid_token", "no_text", "missing_text_or_fallback_or_attachments",
})


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt; `retryable` only matters when `ok` is False."""

    ok: bool
    retryable: bool
    detail: str


def send_slack(url: str, text: str, *, timeout: float = 5.0, rules: Sequence[EgressRule],
               secret: str | None = None) -> Delivery:
    """`rules`: the policy's egress; `secret`: the Secret the URL came from ("Secret x key y")."""
    return _post("Slack", url, {"text": text}, {}, timeout=timeout, verify=True, quote_error=True,
                 rules=rules, secret=secret)


def send_webhook(url: str, payload: dict, key: str, *, timeout: float = 5.0,
                 verify: bool = True, rules: Sequence[EgressRule], secret: str | None = None) -> Delivery:
    return _post("The webhook", url, payload, {"Idempotency-Key": key}, timeout=timeout, verify=verify,
                 rules=rules, secret=secret)


def _post(who: str, url: str, payload: dict, headers: dict[str, str], *, timeout: float,
          verify: bool, quote_error: bool = False, rules: Sequence[EgressRule],
          secret: str | None = None) -> Delivery:
    deadline = time.monotonic() + timeout
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        with egress.http_client(rules, verify=verify, secret=secret, follow_redirects=False,
                                timeout=timeout) as client:
            # A URL read from a Secret often ends in a newline.
            with client.stream("POST", url.strip(), json=payload, headers=headers) as response:
                answer = b""
                for chunk in response.iter_bytes():
                    answer += chunk
                    if len(answer) >= MAX_ANSWER or time.monotonic() > deadline:
                        break
    except egress.EgressDenied as e:
        return Delivery(False, False, f"{who}: {e.message}")
    except ReasonedError as e:          # the name does not resolve (now)
        return Delivery(False, True, f"{who}: {e.message}")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return Delivery(False, False, f"{who}: the URL is not a valid http(s) URL")
    except httpx.TimeoutException:
        return Delivery(False, True, f"{who}: timed out after {timeout:g}s")
    except httpx.RemoteProtocolError:
        return Delivery(False, True, f"{who}: the connection closed without an answer")
    except httpx.HTTPError as e:
        why = egress.failure(e)
        if why == "certificate not trusted":
            return Delivery(False, False, f"{who}: its TLS certificate is not trusted")
        return Delivery(False, True, f"{who}: connection failed: {why}")
    status = response.status_code
    if 200 <= status < 300:
        return Delivery(True, False, f"{who} answered {status}")
    if 300 <= status < 400:
        return Delivery(False, False, f"{who} answered {status}, a redirect (not followed)")
    said = answer.decode("ascii", errors="replace").strip()
    why = f" ({said})" if quote_error and said in SLACK_ERRORS else ""
    return Delivery(False, status >= 500 or status in RETRYABLE_4XX, f"{who} answered {status}{why}")


def send_email(server: SmtpServer, *, sender: str, to: list[str], subject: str, body: str,
               message_id: str, username: str | None = None, password: str | None = None,
               ca_pem: str | None = None, timeout: float = 10.0,
               rules: Sequence[EgressRule]) -> Delivery:
    """Send one e-mail. `message_id` is its Message-ID header (bracketed if it is not), the same on
    every attempt. With `ca_pem`, only that CA is trusted; without, the system's roots. The server
    is reached only where `rules` (the policy's egress) allow, at the address that was checked;
    TLS verifies the host name of the spec."""
    who = f"SMTP server {server.host}:{server.port}"
    security = SmtpSecurity(server.security)
    if (username is None) != (password is None):
        return Delivery(False, False, f"{who}: SMTP credentials need both a username and a password")
    if username is not None and security == SmtpSecurity.NONE:
        return Delivery(False, False, f"{who}: credentials are only sent over TLS; set smtp.security "
                                      "to StartTLS or TLS")
    try:
        context = ssl.create_default_context(cadata=ca_pem) if security != SmtpSecurity.NONE else None
    except (ssl.SSLError, ValueError):
        return Delivery(False, False, f"{who}: the CA certificate is not a valid PEM certificate")
    message = _message(sender, to, subject, body, message_id)
    stage, smtp = "connect", None
    try:
        host = server.host.strip("[]")
        pinned = egress.resolve(host, server.port, rules)
        smtp = (_PinnedSMTPSSL(timeout=timeout, context=context) if security == SmtpSecurity.TLS
                else _PinnedSMTP(timeout=timeout))
        smtp.addresses, smtp._host = pinned, host    # _host: the name TLS verifies
        smtp.connect(host, server.port)
        if security == SmtpSecurity.STARTTLS:
            stage = "STARTTLS"
            smtp.starttls(context=context)
        if username is not None:
            stage = "AUTH"
            smtp.login(username, password)
        stage = "MAIL"
        refused = smtp.send_message(message, from_addr=sender, to_addrs=to)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()       # the message is accepted: a failed goodbye changes nothing
    except egress.EgressDenied as e:
        return Delivery(False, False, f"{who}: {e.message}")
    except ReasonedError as e:
        return Delivery(False, True, f"{who}: {e.message}")
    except (smtplib.SMTPException, OSError) as e:
        return _smtp_failed(who, stage, e, sender, timeout)
    finally:
        if smtp is not None:
            smtp.close()
    if refused:
        return Delivery(True, False, f"{who} accepted the message for {len(to) - len(refused)} of "
                                     f"{len(to)} recipients; it refused {_listed(refused)}")
    return Delivery(True, False, f"{who} accepted the message for {len(to)} recipient(s)")


class _PinnedSMTP(smtplib.SMTP):
    """SMTP to an address that was checked (`addresses`, set before `connect`); TLS still
    verifies the host name given to `connect`."""

    addresses: list = []

    def _get_socket(self, host, port, timeout):
        error = OSError("no address")
        for ip in self.addresses:
            try:
                return socket.create_connection((str(ip), port), timeout, self.source_address)
            except OSError as e:
                error = e
        raise error


class _PinnedSMTPSSL(smtplib.SMTP_SSL, _PinnedSMTP):
    """SMTP over TLS to a checked address (SMTP_SSL wraps what _PinnedSMTP connects)."""


def _message(sender: str, to: list[str], subject: str, body: str, message_id: str) -> EmailMessage:
    m = EmailMessage()
    m["Message-ID"] = message_id if message_id.startswith("<") else f"<{message_id}>"
    m["Date"] = email.utils.formatdate(usegmt=True)
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Subject"] = " ".join(subject.split())     # a header is one line
    m["Auto-Submitted"] = "auto-generated"         # RFC 3834: no vacation replies to a robot
    m.set_content(body)
    return m


def _listed(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{rcpt} ({code})" for rcpt, (code, _) in refused.items())


def _smtp_failed(who: str, stage: str, e: Exception, sender: str, timeout: float) -> Delivery:
    """One line for a failed SMTP session: a 4xx reply is worth retrying, a 5xx is not. The server's
    own reply text is left out: it may echo what the client sent."""
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        retryable = all(not 500 <= code < 600 for code, _ in e.recipients.values())
        return Delivery(False, retryable, f"{who} refused every recipient: {_listed(e.recipients)}")
    if isinstance(e, smtplib.SMTPResponseException):
        what = (f"refused the credentials ({e.smtp_code})" if isinstance(e, smtplib.SMTPAuthenticationError)
                else f"refused the sender {sender} ({e.smtp_code})" if isinstance(e, smtplib.SMTPSenderRefused)
                else f"refused the message ({e.smtp_code})" if isinstance(e, smtplib.SMTPDataError)
                else f"answered {e.smtp_code} to {stage}")
        return Delivery(False, not 500 <= e.smtp_code < 600, f"{who} {what}")
    if isinstance(e, smtplib.SMTPNotSupportedError):
        missing = {"STARTTLS": "STARTTLS", "AUTH": "AUTH"}.get(stage, "SMTPUTF8, which these addresses need")
        return Delivery(False, False, f"{who} does not offer {missing}")
    if isinstance(e, (smtplib.SMTPServerDisconnected, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return Delivery(False, True, f"{who} closed the connection during {stage}")
    if isinstance(e, smtplib.SMTPException):       # login(): no mechanism both sides know
        return Delivery(False, stage != "AUTH", f"{who}: {stage} failed ({type(e).__name__})")
    if isinstance(e, ssl.SSLCertVerificationError):
        return Delivery(False, False, f"{who}: its TLS certificate is not trusted")
    if isinstance(e, ssl.SSLError):
        return Delivery(False, False, f"{who}: TLS handshake failed during {stage}; "
                                      "is smtp.security right for this port?")
    if isinstance(e, TimeoutError):
        return Delivery(False, True, f"{who}: timed out after {timeout:g}s during {stage}")
    return Delivery(False, True, f"{who}: connection failed: {egress.failure(e)}")
