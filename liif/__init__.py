"""LIIF (and TTSR) super-resolution in pure PyTorch: models, checkpoints, inference, metrics.

Public API::

    model = liif.load_model("edsr-baseline-liif")          # or a path; official .pth works too
    sr = liif.upscale(model, img, scale=3.7)                 # img (3, h, w) in [0, 1]
    feat = model.encode((img[None] - 0.5) / 0.5)             # (1, 64, h, w)
    rgb = model.query(feat, coord, cell)                     # coord, cell (B, Q, 2)
"""

from liif.checkpoint import (
    CheckpointError,
    build_model,
    bundled_models,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from liif.coords import make_coord, output_size
from liif.infer import upscale
from liif.liif import LIIF

__version__ = "0.1.0"


def reference_upscale(model, lr, ref):  # noqa: ANN001, ANN201 - thin re-export, see liif.ttsr
    """TTSR reference-based x4 upscale; see :func:`liif.ttsr.reference_upscale`."""
    from liif.ttsr import reference_upscale as _impl

    return _impl(model, lr, ref)


__all__ = [
    "LIIF", "CheckpointError", "build_model", "bundled_models", "load_checkpoint", "load_model",
    "make_coord", "output_size", "reference_upscale", "save_checkpoint", "upscale",
]
