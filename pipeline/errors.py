"""Exception types of the pipeline.

Every error derives from :class:`PipelineError` and from the builtin that matches its meaning, so
callers can catch either ``PipelineError`` or e.g. ``FileNotFoundError``. Construct each with one
message argument: for the ``OSError`` subclasses a single argument keeps ``str(exc)`` equal to the
message (two or more arguments would be read as ``errno, strerror``).
"""

from __future__ import annotations

from liif.errors import LiifError

__all__ = [
    "BandSelectionError",
    "ConfigError",
    "EmptyInputError",
    "InputNotFoundError",
    "InputReadError",
    "OutputCorruptError",
    "OutputExistsError",
    "OutputLockedError",
    "OutputNotWritableError",
    "PathConflictError",
    "PipelineError",
    "UnsupportedDtypeError",
    "UnsupportedInputError",
    "WindowError",
]


class PipelineError(LiifError):
    """Base class of every error raised by the pipeline."""


class InputNotFoundError(PipelineError, FileNotFoundError):
    """The input path or URL does not exist."""


class UnsupportedInputError(PipelineError, ValueError):
    """The input is not an image, has an unknown format, or its metadata is corrupt."""


class UnsupportedDtypeError(PipelineError, TypeError):
    """The input's data type is not one the pipeline can process."""


class BandSelectionError(PipelineError, ValueError):
    """A band index or band grouping is invalid for the input."""


class EmptyInputError(PipelineError, ValueError):
    """The input has zero bands, rows or columns."""


class OutputExistsError(PipelineError, FileExistsError):
    """The output already exists and overwriting was not requested."""


class OutputNotWritableError(PipelineError, PermissionError):
    """The output location cannot be written."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is invalid."""


class WindowError(PipelineError, ValueError):
    """A read or write window does not lie inside the image."""


class PathConflictError(ConfigError):
    """An output location is, contains or lies inside a location the job reads or writes."""


class InputReadError(PipelineError, OSError):
    """An input could not be read (truncated file, corrupt tile or chunk): names file and window."""


class OutputLockedError(PipelineError, FileExistsError):
    """Another job holds the lease on this output."""


class OutputCorruptError(PipelineError, ValueError):
    """An existing output's metadata cannot be read (names the path)."""
