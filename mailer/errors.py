"""Domain errors: services raise these, the web and CLI layers turn them into 4xx / exit 1."""


class MailerError(Exception):
    """Base of the errors a user can be shown as they are."""

    status = 400


class ValidationError(MailerError):
    """A field of the input is not acceptable."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class NotFound(MailerError):
    status = 404


class Conflict(MailerError):
    status = 409


class InvalidTransition(Conflict):
    """A state change that the current state does not allow (a conditional UPDATE hit 0 rows)."""

    def __init__(self, what: str, from_states, to_state):
        allowed = ", ".join(sorted(str(s) for s in from_states))
        super().__init__(f"{what} must be {allowed} to become {to_state}")
