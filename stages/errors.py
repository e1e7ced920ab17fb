"""Exceptions that stages raise for bad input data, and the set that a stage's main reports."""

from __future__ import annotations

from stages.params import ParamsError


class DataError(ValueError):
    """Input data that is missing, corrupt or inconsistent. The message names the file and the value."""


class ChecksumError(DataError):
    """A file whose checksum differs from the expected one."""


class UnsafeArchiveError(DataError):
    """An archive member that could write outside the target folder or is not a regular file or folder."""


class DownloadError(RuntimeError):
    """A download that failed on every attempt."""


class ModelError(DataError):
    """A trained model folder that is missing, incomplete or inconsistent."""


class TrainingError(RuntimeError):
    """Training that cannot start (for example, missing weights) or whose loss became non-finite."""


# Errors that a stage's main reports as one message on stderr with exit status 1. Any other
# exception is a bug and keeps its traceback.
KNOWN_ERRORS = (ParamsError, DataError, DownloadError, TrainingError)
