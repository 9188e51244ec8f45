"""How a delivery attempt failed: retry later, or never."""


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError):
    """4xx answers, timeouts, dropped connections: worth another try later."""


class PermanentFailure(DeliveryError):
    """5xx answers: the address is bad; retrying would only hurt our reputation."""
