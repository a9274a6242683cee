"""The root of the project's error hierarchy (zarr-python's pattern: one base, builtin mixins).

Every error the project raises for bad input, bad data or a bad configuration derives from
:class:`LiifError` and from the builtin that matches its meaning, so callers catch either. The
jobs turn exactly these into exit code 2 with the message; anything else is a bug and keeps its
traceback. :mod:`pipeline.errors` extends the hierarchy (``PipelineError``).
"""

from __future__ import annotations

__all__ = ["LiifError", "ModelNotFoundError"]


class LiifError(Exception):
    """Base class of every error the project raises on bad input."""


class ModelNotFoundError(LiifError, FileNotFoundError):
    """A model name that is neither a checkpoint file nor a bundled model."""
