"""Notifications: an outbox in status.notifications.

`queue` records one entry per (event, matching channel) in status, with an idempotency key
derived from the Rollback's UID, the channel and the event; `deliver` sends the due entries after
they were saved. So a restarted operator sends an entry again under the same key (the webhook's
`Idempotency-Key` header, the e-mail's Message-ID), never a second notification of its own. A
failed delivery is retried with backoff (2, 4, 8, 16 s), then recorded as Failed with a Warning
Event; it never fails the rollback. Webhook URLs and SMTP credentials are read from Secrets at
send time and appear nowhere else.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time

from rewind import crashpoints, egress, metrics
from rewind.adapters import notify
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    Notification, NotificationEvent, NotificationRecord, NotificationState, SecretKeyRef,
)
from rewind.api.errors import ReasonedError
from rewind.context import Context, Found, Request, Wait
from rewind.adapters.secrets import read_key

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SEND_TIMEOUT = 5.0
BUDGET = 8.0      # seconds of sending per engine call; what is left waits for the next call
CLAIM = datetime.timedelta(seconds=2 * SEND_TIMEOUT)   # an attempt's lease: longer than a send takes


def _matches(n: Notification, event: str, severity: str) -> bool:
    return (not n.events or event in n.events) and (not n.severities or severity in n.severities)


def key_for(uid: str, channel: str, event: str) -> str:
    return hashlib.sha256(f"{uid}/{channel}/{event}".encode()).hexdigest()[:32]


def queue(ctx: Context, event: NotificationEvent, message: str) -> None:
    """Adds the event's notifications to the outbox (once per channel and event)."""
    spec = ctx.rollback.spec
    if spec.dry_run or not spec.notifications:
        return
    have = {r.key for r in ctx.status.notifications}
    now = ctx.clock()
    for n in spec.notifications:
        if not _matches(n, event.value, spec.severity):
            continue
        key = key_for(ctx.uid, n.name, event.value)
        if key not in have:
            ctx.status.notifications.append(NotificationRecord(
                channel=n.name, event=event, key=key, message=message[:2048], queued_at=now,
                next_attempt_at=now, phase=ctx.status.phase, progress=ctx.status.progress))


def preflight(kube, req: Request) -> Found:
    """Warnings, never refusals: a missing Slack Secret must not stop a rollback in an incident."""
    warnings = []
    for n in req.spec.notifications or []:
        refs = [n.slack.webhook_secret_ref] if n.slack else [n.webhook.url_secret_ref] if n.webhook else []
        if n.email and n.email.smtp.credentials_secret_ref:
            refs += [SecretKeyRef(name=n.email.smtp.credentials_secret_ref, key=k) for k in ("username", "password")]
        if n.email and n.email.smtp.ca_secret_ref:
            refs.append(n.email.smtp.ca_secret_ref)
        for ref in refs:
            try:
                read_key(kube, req.namespace, ref.name, ref.key, f"the Secret of notification {n.name}")
            except ReasonedError as e:
                warnings.append(f"notification {n.name} will fail: {e.message}")
    return Found(warnings=warnings)


def deliver(ctx: Context) -> Wait | None:
    """Sends what is due; returns the wait until the next retry is due, or None."""
    now = ctx.clock()
    due = [r for r in ctx.status.notifications if r.state == NotificationState.PENDING.value
           and (r.next_attempt_at is None or r.next_attempt_at <= now)]
    if due:
        ctx.save()   # the outbox entries are durable before anything is sent
        channels = {n.name: n for n in ctx.rollback.spec.notifications or []}
        started = time.monotonic()
        for rec in due:
            if time.monotonic() - started > BUDGET:
                break    # the rest goes out on the next call: sending must not hold up the steps
            # The claim: this attempt is counted and the entry leased before anything is sent, in a
            # write guarded by resourceVersion, so of two operator instances only one sends it
            # (the other's write conflicts and it re-reads). A crash while sending leaves the lease
            # to run out, then the entry goes out again under the same idempotency key.
            rec.attempts += 1
            rec.next_attempt_at = ctx.clock() + CLAIM
            ctx.save()
            crashpoints.reach("Notification:before-send")
            _attempt(ctx, channels.get(rec.channel), rec)
            crashpoints.reach("Notification:after-send")
            _condition(ctx)
            ctx.save()   # each outcome at once: a later failure must not make it send again
    pending = [r.next_attempt_at for r in ctx.status.notifications
               if r.state == NotificationState.PENDING.value and r.next_attempt_at]
    if not pending:
        return None
    at = max(min(pending), ctx.clock() + datetime.timedelta(seconds=0.5))
    return Wait(at=at, reason="notifications to retry")


def _attempt(ctx: Context, channel: Notification | None, rec: NotificationRecord) -> None:
    now = ctx.clock()
    if channel is None:
        result = notify.Delivery(False, False, f"channel {rec.channel} is no longer in the spec")
    else:
        try:
            result = _send(ctx, channel, rec)
        except ReasonedError as e:
            result = notify.Delivery(False, False, e.message)
        except Exception as e:  # noqa: BLE001 - a notification never fails the rollback
            log.warning("%s/%s: sending the %s notification to %s failed: %s", ctx.namespace, ctx.name,
                        rec.event, rec.channel, type(e).__name__)
            result = notify.Delivery(False, True, f"sending failed ({type(e).__name__})")
    if result.ok:
        rec.state, rec.sent_at, rec.last_error, rec.next_attempt_at = NotificationState.SENT.value, now, None, None
        log.info("%s/%s: %s notification sent to %s", ctx.namespace, ctx.name, rec.event, rec.channel)
        return
    rec.last_error = result.detail[:512]
    if result.retryable and rec.attempts < MAX_ATTEMPTS:
        metrics.NOTIFICATION_FAILURES.labels(rec.event, "false").inc()
        rec.next_attempt_at = now + datetime.timedelta(seconds=2 ** rec.attempts)
        return
    rec.state, rec.next_attempt_at = NotificationState.FAILED.value, None
    metrics.NOTIFICATION_FAILURES.labels(rec.event, "true").inc()
    ctx.emit("Warning", "NotificationFailed", f"The {rec.event} notification to {rec.channel} failed "
             f"after {rec.attempts} attempt(s): {rec.last_error}. The rollback is not affected.")


def _send(ctx: Context, channel: Notification, rec: NotificationRecord) -> notify.Delivery:
    spec, ns = ctx.rollback.spec, ctx.namespace
    title = f"[{spec.severity}] Rollback {ns}/{ctx.name}: {rec.event}"
    rules = egress.rules_of(ctx.policy)    # PolicyUnreadable: a failed attempt, like any refusal
    if channel.slack:
        ref = channel.slack.webhook_secret_ref
        url = read_key(ctx.kube, ns, ref.name, ref.key, f"the Slack webhook Secret of {channel.name}")
        return notify.send_slack(url, f"{title}. {rec.message}", timeout=SEND_TIMEOUT, rules=rules,
                                 secret=f"Secret {ref.name} key {ref.key}")
    if channel.webhook:
        ref = channel.webhook.url_secret_ref
        url = read_key(ctx.kube, ns, ref.name, ref.key, f"the webhook URL Secret of {channel.name}")
        return notify.send_webhook(url, payload(ctx, rec), rec.key, timeout=SEND_TIMEOUT,
                                   verify=not channel.webhook.insecure_skip_tls_verify, rules=rules,
                                   secret=f"Secret {ref.name} key {ref.key}")
    email = channel.email
    username = password = ca = None
    if email.smtp.credentials_secret_ref:
        what = f"the SMTP credentials Secret of {channel.name}"
        username = read_key(ctx.kube, ns, email.smtp.credentials_secret_ref, "username", what)
        password = read_key(ctx.kube, ns, email.smtp.credentials_secret_ref, "password", what)
    if email.smtp.ca_secret_ref:
        ref = email.smtp.ca_secret_ref
        ca = read_key(ctx.kube, ns, ref.name, ref.key, f"the SMTP CA Secret of {channel.name}")
    return notify.send_email(email.smtp, sender=email.sender, to=list(email.to), subject=title,
                             body=_email_body(ctx, rec), message_id=f"<{rec.key}@rewind.dev>",
                             username=username, password=password, ca_pem=ca, timeout=SEND_TIMEOUT * 2,
                             rules=rules)


def payload(ctx: Context, rec: NotificationRecord) -> dict:
    spec = ctx.rollback.spec
    return {
        "idempotencyKey": rec.key, "event": rec.event, "severity": spec.severity,
        "rollback": {"namespace": ctx.namespace, "name": ctx.name, "uid": ctx.uid},
        "phase": rec.phase, "progress": rec.progress, "reason": spec.reason,
        "requestedBy": spec.requested_by, "message": rec.message,
        "occurredAt": rec.queued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _email_body(ctx: Context, rec: NotificationRecord) -> str:
    spec = ctx.rollback.spec
    lines = [rec.message, "", f"Rollback:     {ctx.namespace}/{ctx.name}", f"Severity:     {spec.severity}",
             f"Reason:       {spec.reason}", f"Requested by: {spec.requested_by or '-'}",
             f"Phase:        {rec.phase} (step {rec.progress or '-'})",
             f"Occurred at:  {rec.queued_at:%Y-%m-%d %H:%M:%S} UTC", "",
             f"Details: kubectl -n {ctx.namespace} describe rollback {ctx.name}",
             f"Report:  kubectl rewind report {ctx.name} -n {ctx.namespace}"]
    return "\n".join(lines) + "\n"


def _condition(ctx: Context) -> None:
    recs = ctx.status.notifications
    failed = [r for r in recs if r.state == NotificationState.FAILED.value]
    pending = [r for r in recs if r.state == NotificationState.PENDING.value]
    sent = len(recs) - len(failed) - len(pending)
    if failed:
        ctx.condition(C.NOTIFIED, "False", C.NOTIFICATION_FAILED,
                      f"{len(failed)} notification(s) failed: " + "; ".join(
                          f"{r.event} to {r.channel}: {r.last_error}" for r in failed[:5]) + f". {sent} sent.")
    elif pending:
        ctx.condition(C.NOTIFIED, "Unknown", C.SENDING, f"{sent} sent, {len(pending)} being sent or retried.")
    else:
        ctx.condition(C.NOTIFIED, "True", C.SENT, f"All {sent} notification(s) sent.")
