"""The official LIIF benchmark protocol on image folders (Set5 / Set14 / B100 ...).

x2, x3, x4: LR made by MATLAB-bicubic ``imresize`` of the HR cropped to a multiple of the scale
(equal to the EDSR ``LR_bicubic`` release; the Set5 copies in ../shared validate it).
x6 and up: the official "implicit downsampled" pairs (HR cropped to ``round(floor(H/s) * s)``,
antialiased bicubic on floats). Y-channel PSNR with shave = scale, mean over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from liif.data import implicit_downsampled_pair, list_images, load_rgb
from liif.infer import upscale
from liif.metrics import crop_to_multiple, psnr
from liif.resize import imresize_matlab_uint8, resize_bicubic

MATLAB_SCALES = (2, 3, 4)


def benchmark_pair(hr_u8: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) float ``(3, h, w)`` / ``(3, H, W)`` in [0, 1] as the official evaluation makes them."""
    if scale in MATLAB_SCALES:
        hr = crop_to_multiple(hr_u8, scale)
        lr = imresize_matlab_uint8(hr.permute(1, 2, 0).numpy(), 1 / scale)
        lr = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)
        return lr.float() / 255, hr.float() / 255
    return implicit_downsampled_pair(hr_u8.float() / 255, scale)


def bicubic_upscale(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return resize_bicubic(lr, size).clamp(0, 1)


def evaluate_folder(folder: str | Path, scales: Sequence[int],
                    methods: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]],
                    *, limit: int | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[int, float]]:
    """Mean Y-PSNR per method and scale over the images of ``folder``."""
    files = list_images([folder])[:limit]
    sums: dict[str, dict[int, list[float]]] = {m: {s: [] for s in scales} for m in methods}
    for i, f in enumerate(files):
        hr_u8 = load_rgb(f)
        for s in scales:
            lr, hr = benchmark_pair(hr_u8, s)
            for name, fn in methods.items():
                sr = fn(lr, tuple(hr.shape[-2:]))
                sums[name][s].append(psnr(sr, hr, scale=s, dataset="benchmark"))
        if progress:
            name = Path(folder).parent.name if Path(folder).name == "HR" else Path(folder).name
            progress(f"{name}: {i + 1}/{len(files)} images")
    return {m: {s: float(np.mean([v for v in vals if math.isfinite(v)])) for s, vals in d.items()}
            for m, d in sums.items()}


def model_method(model, *, precision: str = "fp32") -> Callable[[torch.Tensor, tuple[int, int]],
                                                                 torch.Tensor]:
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
