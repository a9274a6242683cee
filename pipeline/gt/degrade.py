"""How an HR patch becomes its LR: blur, antialiased bicubic on floats, noise, JPEG."""


from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from pipeline.gt.config import GTConfig


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(C, H, W)`` float64 (reflect borders; numpy: deterministic)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        n = x.shape[axis]
        acc = np.zeros_like(x)
        for j, wgt in enumerate(k):
            acc += wgt * np.take(xp, np.arange(j, j + n), axis=axis)
        x = acc
    return x


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of a ``(C, h, w)`` unit-range image (RGB if C = 3, else band by band)."""
    from PIL import Image

    q = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    def roundtrip(arr: np.ndarray, mode: str) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(arr, mode=mode).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert(mode))

    if q.shape[0] == 3:
        out = roundtrip(np.ascontiguousarray(q.transpose(1, 2, 0)), "RGB").transpose(2, 0, 1)
    else:
        out = np.stack([roundtrip(np.ascontiguousarray(b), "L") for b in q])
    return out.astype(np.float64) / 255.0


def draw(rng: np.random.Generator, rng_pair: tuple[float, float] | None, *, integer: bool = False
          ) -> float | int | None:
    if rng_pair is None:
        return None
    lo, hi = rng_pair
    if integer:
        return int(rng.integers(lo, hi + 1))
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def make_lr(hr_unit: np.ndarray, cfg: GTConfig, rng: np.random.Generator
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """``(C, H, W)`` unit-scaled HR -> ``(C, lr, lr)`` float64 LR (unit space) + degradations."""
    import torch

    from liif.resize import resize_bicubic

    sigma = draw(rng, cfg.blur)
    std = draw(rng, cfg.noise)
    quality = draw(rng, cfg.jpeg, integer=True)
    x = hr_unit.astype(np.float64)
    if sigma:
        x = _gaussian_blur(x, float(sigma))
    lr = resize_bicubic(torch.from_numpy(x), (cfg.lr_size, cfg.lr_size)).numpy()
    if std:
        lr = lr + rng.normal(0.0, float(std), size=lr.shape)
    if quality is not None:
        lr = _jpeg(lr, int(quality))
    return lr, {"blur_sigma": sigma, "noise_std": std, "jpeg_quality": quality}


