"""Preflight of where a rollback will connect: every endpoint its spec names (HTTP and TLS checks,
served-certificate checks, maintenance hooks, Alertmanager, SMTP servers, and the URLs held in
Secrets: hook URLs, SQL check databases, Slack and webhook URLs) is resolved and checked against
the policy's egress before anything is contacted, so a refused rollback changes nothing and
reaches no endpoint. The connections themselves are checked again (see egress.py): a name may
resolve differently by then.

An endpoint the rollback needs refuses it; a notification's URL only warns (a notification never
stops a rollback). A Secret that is missing or a URL that is not valid is left to the preflight
of the step that uses it; a URL from a Secret is never named (see egress.resolve).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from rewind import egress
from rewind.adapters import db
from rewind.adapters.secrets import read_key
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import RollbackSpec, SecretKeyRef
from rewind.context import Found, Request, StepFailed


@dataclass(frozen=True)
class Endpoint:
    what: str                           # "HTTP check health"
    host: str | None = None             # a host and port from the spec, or...
    port: int | None = None
    url: str | None = None              # ... a URL from the spec, or...
    secret: SecretKeyRef | None = None  # ... a URL in a Secret
    database: bool = False              # the Secret holds a postgresql:// URL
    required: bool = True               # False: a refusal only warns


def endpoints(spec: RollbackSpec) -> list[Endpoint]:
    """Every place the rollback will connect to, as its spec says."""
    out: list[Endpoint] = []
    v = spec.verification
    for c in (v.http or []) if v else []:
        out.append(Endpoint(f"HTTP check {c.name}", url=c.url))
    for c in (v.tls or []) if v else []:
        out.append(Endpoint(f"TLS check {c.name}", host=c.host, port=c.port))
    for c in (v.sql or []) if v else []:
        conn = c.connection or (spec.database.connection if spec.database else None)
        if conn:
            out.append(Endpoint(f"SQL check {c.name}", secret=conn.secret_ref, database=True))
    for cert in spec.certificates or []:
        if cert.verify:
            out.append(Endpoint(f"the served-certificate check of {cert.secret_name}",
                                host=cert.verify.host, port=cert.verify.port))
    m = spec.maintenance
    for which, call in ([("enter", m.http.enter), ("exit", m.http.exit)] if m and m.http else []):
        out.append(Endpoint(f"the maintenance {which} hook", url=call.url, secret=call.url_secret_ref))
    if spec.monitoring and spec.monitoring.alertmanager:
        out.append(Endpoint("the Alertmanager", url=spec.monitoring.alertmanager.url))
    for n in spec.notifications or []:
        what = f"notification {n.name}"
        if n.slack:
            out.append(Endpoint(what, secret=n.slack.webhook_secret_ref, required=False))
        elif n.webhook:
            out.append(Endpoint(what, secret=n.webhook.url_secret_ref, required=False))
        elif n.email:
            out.append(Endpoint(f"{what}'s SMTP server", host=n.email.smtp.host, port=n.email.smtp.port))
    return out


def _check(kube, namespace: str, e: Endpoint, rules) -> None:
    """Raises EgressDenied or HostNotFound; returns when allowed or when there is nothing to check
    (a missing Secret, an invalid URL: their steps' preflights say so)."""
    if e.host is not None:
        egress.resolve(e.host.strip("[]"), e.port, rules)
        return
    url, secret = e.url, None
    if e.secret is not None:
        try:
            url = read_key(kube, namespace, e.secret.name, e.secret.key, f"the Secret of {e.what}")
        except ReasonedError:
            return
        secret = f"Secret {e.secret.name} key {e.secret.key}"
    try:
        if e.database:
            target = db.parse_url(url)
            for i, host in enumerate(target.host.split(",")):
                ports = target.port.split(",")
                if not host.startswith(("/", "@")):
                    egress.resolve(host, int(ports[min(i, len(ports) - 1)]), rules, secret=secret)
        else:
            egress.check_url(url, rules, secret=secret)
    except (db.DatabaseError, httpx.InvalidURL, UnicodeError, ValueError, TypeError):
        return


def preflight(kube, req: Request) -> Found:
    """Refused (EgressDenied, or HostNotFound) when the policy does not allow an endpoint the
    rollback needs; a warning for a notification's. Reads only; connects nowhere."""
    rules = egress.rules_of(req.policy)
    refused: list[ReasonedError] = []
    warnings: list[str] = []
    for e in endpoints(req.spec):
        try:
            _check(kube, req.namespace, e, rules)
        except ReasonedError as err:
            if e.required:
                refused.append(StepFailed(err.reason, f"{e.what}: {err.message}"))
            else:
                warnings.append(f"{e.what} will fail: {err.message}")
    if refused:
        denied = [r for r in refused if r.reason == egress.EGRESS_DENIED]
        raise StepFailed((denied or refused)[0].reason, "; ".join(r.message for r in refused))
    return Found(warnings=warnings)
