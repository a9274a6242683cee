"""LIIF (and TTSR) super-resolution in pure PyTorch: models, checkpoints, inference, metrics.

Public API::

    model = liif.load_model("edsr-baseline-liif")          # or a path; official .pth works too
    sr = liif.upscale(model, img, scale=3.7)                 # img (3, h, w) in [0, 1]
    feat = model.encode((img[None] - 0.5) / 0.5)             # (1, 64, h, w)
    rgb = model.query(feat, coord, cell)                     # coord, cell (B, Q, 2)

The names load on first use (PEP 562), so ``import liif.errors`` (the error hierarchy the
pipeline's pure geometry layer derives from) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LIIF": "liif.liif", "CheckpointError": "liif.checkpoint", "build_model": "liif.checkpoint",
    "bundled_models": "liif.checkpoint", "load_checkpoint": "liif.checkpoint",
    "load_model": "liif.checkpoint", "save_checkpoint": "liif.checkpoint",
    "make_coord": "liif.coords", "output_size": "liif.coords", "upscale": "liif.infer",
    "reference_upscale": "liif.ttsr", "LiifError": "liif.errors",
}

__all__ = [
    "LIIF", "CheckpointError", "LiifError", "build_model", "bundled_models", "load_checkpoint",
    "load_model", "make_coord", "output_size", "reference_upscale", "save_checkpoint", "upscale",
]

if TYPE_CHECKING:
    from liif.checkpoint import (
        CheckpointError,
        build_model,
        bundled_models,
        load_checkpoint,
        load_model,
        save_checkpoint,
    )
    from liif.coords import make_coord, output_size
    from liif.errors import LiifError
    from liif.infer import upscale
    from liif.liif import LIIF
    from liif.ttsr import reference_upscale


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    # submodules (liif.checkpoint, liif.ttsr, ...) the usual way
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'liif' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
