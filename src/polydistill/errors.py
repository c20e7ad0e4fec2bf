"""User-facing errors.

Every problem a user can fix (bad config, missing data, corrupt image, out-of-range label) is raised
as a :class:`PolydistillError` whose message says what is wrong, where, and how to fix it. The CLI
prints it on one line and exits non-zero instead of dumping a traceback.
"""


class PolydistillError(Exception):
    """An error caused by input the user controls; the message is meant to be read by them."""


class ConfigError(PolydistillError):
    """The configuration is invalid (unknown key, wrong type, unknown component name)."""


class DataError(PolydistillError):
    """A dataset is missing, malformed, or holds values outside the declared range."""


class TrainingError(PolydistillError):
    """Training cannot continue (for example the loss became NaN)."""
