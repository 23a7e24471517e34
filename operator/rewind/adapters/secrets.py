"""Reading Secrets: one place that knows how, and that never lets a value into an error message.

Errors are the one error shape (ReasonedError: a reason and a message naming the Secret and key),
so whatever step reads a Secret fails the same way when it is missing, forbidden or not text.
"""

from __future__ import annotations

import base64

from rewind.adapters.kube import SECRETS, Kube, KubeError
from rewind.api import conditions as C
from rewind.api.errors import ReasonedError


def read_secret(kube: Kube, namespace: str, name: str, what: str) -> dict:
    try:
        return kube.get(SECRETS, namespace, name)
    except KubeError as e:
        if e.not_found:
            raise ReasonedError("SecretNotFound", f"{what} {namespace}/{name} does not exist") from None
        if e.forbidden:
            raise ReasonedError(C.FORBIDDEN, f"the operator may not read Secret {namespace}/{name}") from None
        raise


def read_key(kube: Kube, namespace: str, name: str, key: str, what: str) -> str:
    """One key of a Secret, as text (naming the Secret and key in errors, never the value)."""
    secret = read_secret(kube, namespace, name, what)
    value = (secret.get("data") or {}).get(key)
    if value is None:
        raise ReasonedError("SecretKeyNotFound", f"{what} {namespace}/{name} has no key {key!r} "
                            f"(keys: {', '.join(sorted(secret.get('data') or {})) or 'none'})")
    try:
        return base64.b64decode(value).decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError):
        raise ReasonedError("InvalidSecret", f"{what} {namespace}/{name} key {key!r} is not UTF-8 text") from None
