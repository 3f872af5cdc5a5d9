"""The domain's errors. None of them is worth retrying: the data is wrong."""


class DomainError(Exception):
    """A request the rules refuse; the message says why, in one line."""


class NotFound(DomainError):
    """An account, plan, source or event that does not exist."""


class Conflict(DomainError):
    """A request that contradicts what is already recorded (same id, other data)."""


class Rejected(DomainError):
    """A request the rules forbid, such as an adjustment below zero."""
