"""The one error shape every layer raises when it refuses or fails in a way a person must hear."""


class ReasonedError(Exception):
    """An error with a condition reason (CamelCase, see conditions.py) and a message a person on
    call can act on. It never carries a secret value."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
