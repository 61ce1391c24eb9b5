"""User-facing errors.

Every error a person can cause (bad name, bad value, missing file) is a `DDBenchError` whose message says what
is wrong, what was expected and how to fix it. The CLI prints it as one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class DDBenchError(Exception):
    """An error caused by input; its message is meant for the person who gave that input."""


class ConfigError(DDBenchError):
    """A bad configuration value, card or override."""


class DataError(DDBenchError):
    """Missing or unreadable data (dataset roots, images, checkpoints)."""


class StoreError(DDBenchError):
    """The results store cannot be used (newer schema, unwritable, corrupt)."""


class ResourceError(DDBenchError):
    """The work does not fit the device (out of memory even with one network at a time)."""
