"""Exceptions that carry a message a user can act on."""


class ClazzifyError(Exception):
    """Base class: a failure whose message names the bad value and the fix."""


class ConfigError(ClazzifyError, ValueError):
    """A configuration value is out of range or inconsistent."""


class StorageError(ClazzifyError):
    """Object storage is unreachable, misconfigured, or an object is missing."""


class ImageError(ClazzifyError, ValueError):
    """An image cannot be decoded or fails a quality check.

    Attributes:
        reason: a short machine-readable reason, used as the quarantine category.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DataError(ClazzifyError, ValueError):
    """A dataset, manifest or HDF5 file is unusable."""
