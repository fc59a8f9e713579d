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


class ArtifactError(EmbedtagError):
    """An artifact directory (store, index, head, fine-tuned run) is missing, corrupt or of another kind."""


class StoreError(ArtifactError):
    """An embedding store is missing, malformed or incompatible with the request."""


class WrongKindError(StoreError):
    """A directory holds another kind of artifact than the one asked for ("X is a similarity index, not an
    embedding store"). ``found`` is the kind it holds, or None."""

    def __init__(self, message: str, found: str | None = None):
        self.found = found
        super().__init__(message)


class IncompatibleError(EmbedtagError):
    """Two artifacts disagree (backbone, embedding dimension, label vocabulary)."""


class DataError(EmbedtagError):
    """A dataset, label file or CSV is malformed."""


class ParamError(EmbedtagError, ValueError):
    """An option or parameter is out of range or of the wrong type (refused before any work starts)."""
