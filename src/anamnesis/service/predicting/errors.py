"""What can keep a prediction from being made; service/errors.py maps each to its HTTP answer."""


class NoModelError(Exception):
    """No model version is in production yet."""


class DatabaseUnavailableError(Exception):
    """The database is away, so a prediction could not be recorded; the client should retry shortly."""


class TooManyRecordsError(Exception):
    """A request holds more records than one request may."""


class VersionNotServedError(Exception):
    """A model version addressed by number that does not serve: a candidate or a rejected version."""


class VersionUnavailableError(Exception):
    """A model version that may serve but whose artifacts cannot be loaded."""
