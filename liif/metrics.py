"""Evaluation metrics following the official LIIF protocol (PSNR) and TTSR/EDSR (SSIM on Y).

PSNR (``liif/utils.py: calc_psnr`` of yinboc/liif): ``diff = (sr - hr) / rgb_range`` with ``sr``
clamped first; ``"benchmark"`` sets (Set5/Set14/B100/Urban100) turn the difference into Y with
``[65.738, 129.057, 25.064] / 256`` and shave ``scale`` pixels per side; ``"div2k"`` keeps RGB
and shaves ``scale + 6``. HR images are cropped to a multiple of the scale beforehand
(:func:`crop_to_multiple`). A dataset's figure is the mean of the per-image PSNRs.
"""

from __future__ import annotations

import math

import torch

from liif.errors import LiifError

__all__ = [
    "DATASETS",
    "MetricArgumentError",
    "crop_to_multiple",
    "psnr",
    "rgb_to_y",
    "ssim_y",
]

DATASETS = ("benchmark", "div2k", "none")

# Official LIIF's Y weights, applied to the RGB difference.
_DIFF_Y_COEFFS = (65.738, 129.057, 25.064)
_DIFF_Y_DIV = 256.0
# ITU-R BT.601 luma for [0, 1] RGB -> Y in [16, 235] (MATLAB rgb2ycbcr).
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_RANGE = 255.0


class MetricArgumentError(LiifError, ValueError):
    """An argument of a metric function is outside what the function accepts."""


def _as_chw(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``(C, H, W)`` float64 from ``(C, H, W)`` or ``(1, C, H, W)``, C in {1, 3}."""
    if not isinstance(x, torch.Tensor):
        raise MetricArgumentError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise MetricArgumentError(
                f"{name} must hold one image, (1, C, H, W), got batch of {x.shape[0]} "
                f"(shape {tuple(x.shape)}); average per-image metrics instead"
            )
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise MetricArgumentError(
            f"{name} must be (C, H, W) or (1, C, H, W) with C in (1, 3), got shape {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise MetricArgumentError(
            f"{name} must be a floating tensor with values in [0, rgb_range], got {x.dtype}"
        )
    return x.to(torch.float64)


def _pair(sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_chw(sr, "sr"), _as_chw(hr, "hr")
    if a.shape != b.shape:
        raise MetricArgumentError(
            f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    return a, b.to(a.device)


def _shave(x: torch.Tensor, shave: int) -> torch.Tensor:
    """Drop ``shave`` pixels from each side of the last two axes."""
    h, w = x.shape[-2:]
    if 2 * shave >= h or 2 * shave >= w:
        raise MetricArgumentError(
            f"shave={shave} leaves nothing of a {h}x{w} image; need H, W > {2 * shave}"
        )
    if shave == 0:
        return x
    return x[..., shave : h - shave, shave : w - shave]


def crop_to_multiple(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop ``(..., H, W)`` to ``(..., H // scale * scale, W // scale * scale)``, top-left kept."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise MetricArgumentError(f"scale must be a positive int, got {scale!r}")
    if hr.dim() < 2:
        raise MetricArgumentError(f"hr must have at least 2 dims (H, W), got {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if h < scale or w < scale:
        raise MetricArgumentError(f"hr of size {h}x{w} is smaller than scale={scale}")
    return hr[..., : h // scale * scale, : w // scale * scale]


def psnr(
    sr: torch.Tensor,
    hr: torch.Tensor,
    *,
    scale: float | None = None,
    dataset: str = "benchmark",
    rgb_range: float = 1.0,
) -> float:
    """PSNR in dB of ``sr`` against ``hr``, both ``(C, H, W)`` or ``(1, C, H, W)``, C in {1, 3}.

    ``sr`` is clamped to ``[0, rgb_range]`` first. ``dataset``: ``"benchmark"`` (Y of the
    difference, shave ``ceil(scale)``), ``"div2k"`` (RGB, shave ``ceil(scale) + 6``) or ``"none"``
    (all channels, no shave, ``scale`` ignored). Non-integer scales shave ``ceil(scale)`` (the
    official code only sees integer scales). A 1-channel input is used as Y as it is.
    Identical images give ``inf``.
    """
    if dataset not in DATASETS:
        raise MetricArgumentError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if isinstance(rgb_range, bool) or not (
        isinstance(rgb_range, (int, float)) and math.isfinite(rgb_range) and rgb_range > 0
    ):
        raise MetricArgumentError(f"rgb_range must be a positive number, got {rgb_range!r}")
    a, b = _pair(sr, hr)
    diff = (a.clamp(0.0, float(rgb_range)) - b) / rgb_range
    if dataset != "none":
        if (
            scale is None
            or isinstance(scale, bool)
            or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0)
        ):
            raise MetricArgumentError(
                f"dataset={dataset!r} needs a positive scale for the shave, got {scale!r}"
            )
        shave = math.ceil(scale)
        if dataset == "benchmark":
            if diff.shape[0] == 3:
                coeffs = diff.new_tensor(_DIFF_Y_COEFFS).view(3, 1, 1) / _DIFF_Y_DIV
                diff = (diff * coeffs).sum(dim=0, keepdim=True)
        else:
            shave += 6
        diff = _shave(diff, shave)
    mse = float(diff.pow(2).mean())
    if mse == 0.0:
        return float("inf")
    return -10.0 * math.log10(mse)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Y (BT.601, 16..235) ``(H, W)`` float64 of a ``(3, H, W)`` or ``(1, H, W)`` image in [0, 1].

    A 1-channel image is taken as grey (R = G = B), so Y = 16 + 219 * x.
    """
    x = _as_chw(img, "img")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    coeffs = x.new_tensor(_Y_COEFFS).view(3, 1, 1)
    return (x * coeffs).sum(dim=0) + _Y_OFFSET


def _gaussian_window(device: torch.device) -> torch.Tensor:
    r = _SSIM_WIN // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(t * t) / (2.0 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(..., H, W)``, 'valid' region only (no padding).

    Shifted-slice sums: exact float64 and faster on CPU than a float64 ``conv2d``.
    """
    n = g.shape[0]
    h, w = x.shape[-2:]
    rows = g[0] * x[..., 0 : h - n + 1, :]
    for k in range(1, n):
        rows = rows + g[k] * x[..., k : h - n + 1 + k, :]
    out = g[0] * rows[..., :, 0 : w - n + 1]
    for k in range(1, n):
        out = out + g[k] * rows[..., :, k : w - n + 1 + k]
    return out


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, *, shave: int) -> float:
    """Mean SSIM on Y (data range 255) of ``(C, H, W)`` or ``(1, C, H, W)`` images in [0, 1].

    ``sr`` is clamped to [0, 1]; both are converted with :func:`rgb_to_y`, ``shave`` pixels
    are dropped per side, then SSIM uses an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
    K2 = 0.03, population covariances, and averages over the windows that lie fully inside
    the image (no padding). This equals ``skimage.metrics.structural_similarity(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``, which
    pads but crops the 5-pixel border from its mean, and MATLAB's ``ssim_index``.
    """
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise MetricArgumentError(f"shave must be a non-negative int, got {shave!r}")
    a, b = _pair(sr, hr)
    ya = _shave(rgb_to_y(a.clamp(0.0, 1.0)), shave)
    yb = _shave(rgb_to_y(b), shave)
    h, w = ya.shape
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise MetricArgumentError(
            f"image after shave={shave} is {h}x{w}; SSIM needs at least {_SSIM_WIN}x{_SSIM_WIN}"
        )
    g = _gaussian_window(ya.device)
    # One filtering pass for the five local moments: x, y, x^2, y^2, xy.
    stack = torch.stack([ya, yb, ya * ya, yb * yb, ya * yb])
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter_valid(stack, g)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1 = (_SSIM_K1 * _SSIM_RANGE) ** 2
    c2 = (_SSIM_K2 * _SSIM_RANGE) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((num / den).mean())
