"""The official LIIF benchmark protocol on image folders (Set5 / Set14 / B100 ...).

x2, x3, x4: LR made by MATLAB-bicubic ``imresize`` of the HR cropped to a multiple of the scale
(equal to the EDSR ``LR_bicubic`` release; the Set5 copies in ../shared validate it).
x6 and up: the official "implicit downsampled" pairs, as the official ``sr-implicit-downsampled``
wrapper makes them: HR cropped to ``round(floor(H/s) * s)``, LR by PIL's ``Image.BICUBIC`` resize of
the 8-bit HR (torchvision ``ToPILImage`` -> ``Resize`` -> ``ToTensor``), so the LR is 8-bit too.
Y-channel PSNR with shave = scale, mean over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from liif.data import list_images, load_rgb
from liif.infer import upscale
from liif.metrics import crop_to_multiple, psnr
from liif.resize import imresize_matlab, imresize_matlab_uint8, resize_bicubic

if TYPE_CHECKING:
    from liif.liif import LIIF

MATLAB_SCALES = (2, 3, 4)


def official_downsampled_pair(hr_u8: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official x6+ benchmark pair from an 8-bit HR ``(3, H, W)``: float ``(lr, hr)`` in [0, 1].

    ``h_lr = floor(H / s + 1e-9)``, HR cropped to ``round(h_lr * s)``, LR = PIL bicubic (with its
    antialiasing) of the uint8 crop, 8-bit. The official code goes u8 -> ``/ 255`` ->
    ``mul(255).byte()`` -> PIL; that float round trip is the identity on all 256 values (tested),
    so the crop goes to PIL directly.
    """
    from PIL import Image

    if hr_u8.dtype != torch.uint8 or hr_u8.dim() != 3 or hr_u8.shape[0] != 3:
        raise ValueError(f"hr_u8 must be a (3, H, W) uint8 tensor, got {hr_u8.dtype} {tuple(hr_u8.shape)}")
    H, W = hr_u8.shape[-2:]
    h_lr, w_lr = math.floor(H / scale + 1e-9), math.floor(W / scale + 1e-9)
    if h_lr < 1 or w_lr < 1:
        raise ValueError(f"image {H}x{W} is too small for scale {scale!r} (LR would be {h_lr}x{w_lr})")
    hr = hr_u8[:, : round(h_lr * scale), : round(w_lr * scale)]
    im = Image.fromarray(np.ascontiguousarray(hr.permute(1, 2, 0).numpy()))
    lr = np.asarray(im.resize((w_lr, h_lr), Image.Resampling.BICUBIC))
    return (torch.from_numpy(lr.copy()).permute(2, 0, 1).float() / 255, hr.float() / 255)


def benchmark_pair(hr_u8: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) float ``(3, h, w)`` / ``(3, H, W)`` in [0, 1] as the official evaluation makes them."""
    if scale in MATLAB_SCALES:
        hr = crop_to_multiple(hr_u8, scale)
        lr_u8 = imresize_matlab_uint8(hr.permute(1, 2, 0).numpy(), 1 / scale)
        lr = torch.from_numpy(np.ascontiguousarray(lr_u8)).permute(2, 0, 1)
        return lr.float() / 255, hr.float() / 255
    return official_downsampled_pair(hr_u8, scale)


def unit_pair(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark pair for a float HR ``(3, H, W)`` already in [0, 1] (16-bit or float rasters).

    The same geometry as :func:`benchmark_pair` without any 8-bit step: x2-x4 by MATLAB-bicubic
    ``imresize`` of the HR cropped to a multiple of the scale, in float; other scales by the
    official implicit-downsampling crop and antialiased bicubic (PIL's kernel) in float.
    """
    if not hr.is_floating_point() or hr.dim() != 3 or hr.shape[0] != 3:
        raise ValueError(f"hr must be a float (3, H, W) tensor in [0, 1], got {hr.dtype} {tuple(hr.shape)}")
    if scale in MATLAB_SCALES:
        hr = crop_to_multiple(hr, scale)
        lr = imresize_matlab(hr.to(torch.float64), scale=1 / scale).to(hr.dtype)
        return lr.clamp(0, 1), hr
    H, W = hr.shape[-2:]
    h_lr, w_lr = math.floor(H / scale + 1e-9), math.floor(W / scale + 1e-9)
    if h_lr < 1 or w_lr < 1:
        raise ValueError(f"image {H}x{W} is too small for scale {scale!r} (LR would be {h_lr}x{w_lr})")
    hr = hr[:, : round(h_lr * scale), : round(w_lr * scale)]
    return resize_bicubic(hr, (h_lr, w_lr)).clamp(0, 1), hr


def bicubic_upscale(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The bicubic baseline: antialiased bicubic (PIL's kernel) on floats, ``(3, h, w)`` -> ``size``."""
    return resize_bicubic(lr, size).clamp(0, 1)


Method = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def evaluate_images(images: Iterable[torch.Tensor], scales: Sequence[int], methods: dict[str, Method],
                    *, progress: Callable[[int], None] | None = None) -> dict[str, dict[int, float]]:
    """Mean Y-PSNR (benchmark protocol, shave = scale) per method and scale over ``images``.

    Each image is ``(3, H, W)``: uint8 goes through :func:`benchmark_pair` (the official
    protocol), float in [0, 1] through :func:`unit_pair`. Infinite PSNRs (exact matches) are
    left out of the mean; ``progress(i)`` is called after image ``i`` (1-based).
    """
    sums: dict[str, dict[int, list[float]]] = {m: {s: [] for s in scales} for m in methods}
    for i, img in enumerate(images):
        for s in scales:
            lr, hr = benchmark_pair(img, s) if img.dtype == torch.uint8 else unit_pair(img, s)
            for name, fn in methods.items():
                sr = fn(lr, (hr.shape[-2], hr.shape[-1]))
                sums[name][s].append(psnr(sr, hr, scale=s, dataset="benchmark"))
        if progress:
            progress(i + 1)
    return {m: {s: _mean_finite(vals) for s, vals in d.items()} for m, d in sums.items()}


def _mean_finite(vals: list[float]) -> float:
    finite = [v for v in vals if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_folder(folder: str | Path, scales: Sequence[int], methods: dict[str, Method],
                    *, limit: int | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[int, float]]:
    """Mean Y-PSNR per method and scale over the images of ``folder`` (``<set>/HR``)."""
    files = list_images([folder])[:limit]
    name = Path(folder).parent.name if Path(folder).name == "HR" else Path(folder).name
    report = (lambda i: progress(f"{name}: {i}/{len(files)} images")) if progress else None
    return evaluate_images((load_rgb(f) for f in files), scales, methods, progress=report)


def grid_windows(shape: tuple[int, int], size: int, *, stride: int | None = None,
                 region: tuple[int, int, int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """Square evaluation windows ``(r0, r1, c0, c1)`` of side ``size`` on a grid inside ``region``.

    ``shape`` ``(H, W)``; ``region`` ``(r0, c0, r1, c1)`` (half-open pixel bounds, default the
    whole image); ``stride`` defaults to ``size`` (no overlap). Only whole windows: a remainder
    narrower than ``size`` at the bottom/right is left out (it would change the window size).
    """
    H, W = shape
    for v, what in ((size, "size"), (stride if stride is not None else size, "stride")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"window {what} {v!r} must be a positive integer")
    stride = size if stride is None else stride
    r0, c0, r1, c1 = region if region is not None else (0, 0, H, W)
    if not (0 <= r0 < r1 <= H and 0 <= c0 < c1 <= W):
        raise ValueError(f"region {region!r} (r0, c0, r1, c1) is not inside the {H}x{W} image")
    return [(r, r + size, c, c + size) for r in range(r0, r1 - size + 1, stride)
            for c in range(c0, c1 - size + 1, stride)]


def model_method(model: LIIF, *, precision: str = "fp32") -> Method:
    """``liif.upscale`` as an evaluation method: ``(lr (3, h, w), (H, W)) -> (3, H, W)``."""

    def run(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upscale(model, lr, size=size, precision=precision)

    return run


def format_table(results: dict[str, dict[str, dict[int, float]]], scales: Sequence[int]) -> str:
    """Markdown table: one row per (dataset, method), one column per scale."""
    head = "| dataset | method | " + " | ".join(f"x{s}" for s in scales) + " |"
    lines = [head, "|" + "---|" * (len(scales) + 2)]
    for ds, per_method in results.items():
        for m, vals in per_method.items():
            lines.append(f"| {ds} | {m} | " + " | ".join(f"{vals[s]:.2f}" for s in scales) + " |")
    return "\n".join(lines)
