"""Exceptions with messages meant to be read by a person: one line that names the file and what to do.

The CLI prints ``EmbedtagError`` messages as a single line (no traceback); anything else is a bug.
"""

from __future__ import annotations


class EmbedtagError(Exception):
    """Base class of every error embedtag raises on purpose."""


class AudioError(EmbedtagError):
    """A file could not be turned into audio samples (corrupt, empty, unsupported, too long...)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(EmbedtagError):
    """Model weights are missing, corrupt or of the wrong format."""


class StoreError(EmbedtagError):
    """An embedding store is missing, malformed or incompatible with the request."""


class IncompatibleError(EmbedtagError):
    """Two artifacts disagree (backbone, embedding dimension, label vocabulary)."""


class DataError(EmbedtagError):
    """A dataset, label file or CSV is malformed."""
