"""Whole-image inference with bounded memory: encode once, decode the output in row chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from liif.coords import make_coord, output_size
from liif.fast import _dtype_for, first_layer, render

if TYPE_CHECKING:
    from liif.liif import LIIF


def normalize(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> the paper's input range ``(x - 0.5) / 0.5``."""
    return (img - 0.5) / 0.5


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Model output -> [0, 1], clamped."""
    return (x * 0.5 + 0.5).clamp_(0, 1)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (3, h, w), got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, h, w), got {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be float in [0, 1], got dtype {image.dtype}")


@torch.inference_mode()
def upscale(model: LIIF, image: torch.Tensor, *, scale: float | tuple[float, float] | None = None,
            size: tuple[int, int] | None = None, chunk_pixels: int = 4096,
            precision: str = "fp32", impl: str = "fast") -> torch.Tensor:
    """Super-resolve ``image`` ``(3, h, w)`` in [0, 1] to ``(3, H, W)`` in [0, 1].

    ``scale``: a number or ``(sy, sx)`` (non-integer, anisotropic, < 1 allowed), or ``size=(H, W)``.
    Decoding works on chunks of about ``chunk_pixels`` output pixels, so memory beyond the latent
    grid does not grow with the output size. ``impl="reference"`` uses the paper-literal query.
    """
    _check_image(image)
    _dtype_for(precision)
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl {impl!r} is not one of ('fast', 'reference')")
    if isinstance(chunk_pixels, bool) or not isinstance(chunk_pixels, int) or chunk_pixels <= 0:
        raise ValueError(f"chunk_pixels {chunk_pixels!r} must be a positive integer")
    h, w = image.shape[-2:]
    H, W = output_size((h, w), scale=scale, size=size)
    feat = model.encode(normalize(image.to(next(model.parameters()).dtype)).unsqueeze(0))
    if impl == "fast":
        out = decode(model, feat, in_shape=(h, w), out_shape=(H, W), rows=(0, H), cols=(0, W),
                     chunk_pixels=chunk_pixels, precision=precision)[0]
    elif impl == "reference":
        coord = make_coord((H, W), dtype=feat.dtype, device=feat.device)
        cell = torch.tensor([2 / H, 2 / W], dtype=feat.dtype, device=feat.device).expand_as(coord)
        q = max(1, chunk_pixels)
        out = torch.empty(3, H, W, dtype=torch.float32, device=image.device)
        flat = out.view(3, -1)
        for s in range(0, H * W, q):
            pred = model.query(feat, coord[None, s:s + q], cell[None, s:s + q], impl="reference")
            flat[:, s:s + q] = pred[0].T.float()
    else:
        raise ValueError(f"impl {impl!r} is not one of ('fast', 'reference')")
    return denormalize(out)


def decode(model: LIIF, feat: torch.Tensor, *, in_shape: tuple[int, int], out_shape: tuple[int, int],
           rows: tuple[int, int], cols: tuple[int, int], offset: tuple[int, int] = (0, 0),
           chunk_pixels: int = 4096, precision: str = "fp32",
           first: torch.Tensor | None = None) -> torch.Tensor:
    """Decode output ``rows x cols`` from latents ``feat`` ``(B, C, hf, wf)`` of a window at
    ``offset`` in an image of ``in_shape``; returns ``(B, 3, nr, nc)`` float32 in model range.

    The first-layer map is computed once; pixels are decoded in blocks of about ``chunk_pixels``.
    ``first``: that map (:func:`first_map`) when several sizes decode from the same latents.
    """
    z = first if first is not None else first_map(model, feat, precision)
    (r0, r1), (c0, c1) = rows, cols
    out = torch.empty(feat.shape[0], model.imnet.out_dim, r1 - r0, c1 - c0, dtype=torch.float32,
                      device=feat.device)
    cols_per = max(1, min(c1 - c0, chunk_pixels))
    rows_per = max(1, chunk_pixels // cols_per)
    for a in range(r0, r1, rows_per):
        b = min(r1, a + rows_per)
        for c in range(c0, c1, cols_per):
            d = min(c1, c + cols_per)
            out[:, :, a - r0:b - r0, c - c0:d - c0] = render(
                model, z, in_shape=in_shape, out_shape=out_shape, rows=(a, b), cols=(c, d),
                offset=offset, precision=precision).float()
    return out


def first_map(model: LIIF, feat: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """The hoisted first layer of the decoder over the latent grid, in the decode dtype; it does
    not depend on the output size, so one map serves every size decoded from ``feat``."""
    return first_layer(model, feat).to(_dtype_for(precision))  # gathered per chunk: cast once


def cell_for(out_shape: tuple[int, int], q: int, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """The paper's cell ``(q, 2)`` for an output of ``out_shape``: ``(2 / H, 2 / W)`` per query."""
    H, W = out_shape
    return torch.tensor([2 / H, 2 / W], dtype=dtype, device=device).expand(q, 2)

