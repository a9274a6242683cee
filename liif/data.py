"""Training data for LIIF: image folders and the paper's implicit-downsampling sampler.

A sample (the paper's recipe, "sr-implicit-downsampled"): draw a scale ``s ~ U(scale_min,
scale_max)``, crop an HR patch of ``round(inp_size * s)`` pixels, downscale it to ``inp_size`` with
antialiased bicubic (on floats), flip/transpose at random, and keep ``sample_q`` random HR pixels with
their coordinates and cells. Patches of the same batch share neither scale nor HR size: the HR
ground truth keeps its own size per sample (size-varied GT) and only ``sample_q`` pixels enter the
loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from liif.coords import make_coord
from liif.pairs import augment_flips
from liif.resize import resize_bicubic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(roots: Sequence[str | Path]) -> list[Path]:
    """All image files under ``roots`` (recursive), sorted for determinism."""
    files: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        found = [root] if root.is_file() else [p for p in root.rglob("*")
                                               if p.suffix.lower() in IMAGE_SUFFIXES]
        files += found
    if not files:
        raise FileNotFoundError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {list(map(str, roots))}")
    return sorted(files)


def load_rgb(path: str | Path) -> torch.Tensor:
    """Any PIL-readable image -> ``(3, H, W)`` uint8 tensor."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class SamplerConfig:
    inp_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304
    augment: bool = True

    def __post_init__(self) -> None:
        if self.inp_size <= 0 or self.sample_q <= 0:
            raise ValueError(f"inp_size {self.inp_size} and sample_q {self.sample_q} must be > 0")
        if not (0 < self.scale_min <= self.scale_max):
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")


def to_pixel_samples(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(3, H, W)`` -> coords ``(H*W, 2)`` in [-1, 1] and rgb ``(H*W, 3)``."""
    return make_coord(img.shape[-2:]), img.reshape(3, -1).T


def sample_patch(img: torch.Tensor, cfg: SamplerConfig, rng: np.random.Generator) -> dict:
    """One training sample from a ``(3, H, W)`` float image in [0, 1] (big enough for the crop)."""
    s = rng.uniform(cfg.scale_min, cfg.scale_max)
    w_hr = round(cfg.inp_size * s)
    H, W = img.shape[-2:]
    y0 = int(rng.integers(0, H - w_hr + 1))
    x0 = int(rng.integers(0, W - w_hr + 1))
    hr = img[:, y0:y0 + w_hr, x0:x0 + w_hr]
    lr = resize_bicubic(hr, (cfg.inp_size, cfg.inp_size)).clamp(0, 1)
    if cfg.augment:
        flips = rng.random(3) < 0.5
        lr, hr = augment_flips(lr, flips), augment_flips(hr, flips)
    coord, rgb = to_pixel_samples(hr.contiguous())
    idx = torch.from_numpy(rng.choice(len(coord), cfg.sample_q, replace=len(coord) < cfg.sample_q))
    cell = torch.tensor([2 / hr.shape[-2], 2 / hr.shape[-1]]).expand(cfg.sample_q, 2).clone()
    return {"inp": lr, "coord": coord[idx], "cell": cell, "gt": rgb[idx], "scale": s}


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


class ImageFolderSampler:
    """Random LIIF training batches from images held in memory as uint8.

    Images smaller than the largest HR crop are still used at the scales they allow.
    """

    def __init__(self, roots: Sequence[str | Path] | None = None, cfg: SamplerConfig | None = None,
                 *, images: Sequence[torch.Tensor] | None = None) -> None:
        self.cfg = cfg or SamplerConfig()
        if images is None:
            if roots is None:
                raise ValueError("give image folders (roots) or in-memory images")
            images = [load_rgb(p) for p in list_images(roots)]
        self.images = [im for im in images if min(im.shape[-2:]) >= self.cfg.inp_size]
        if not self.images:
            raise ValueError(f"no image is at least {self.cfg.inp_size} px on its short side")

    def batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        out: list[dict] = []
        while len(out) < batch_size:
            im = self.images[int(rng.integers(len(self.images)))]
            short = min(im.shape[-2:])
            smax = min(self.cfg.scale_max, (short - 0.5) / self.cfg.inp_size)
            if smax < self.cfg.scale_min:
                continue
            cfg = SamplerConfig(self.cfg.inp_size, self.cfg.scale_min, smax, self.cfg.sample_q,
                                self.cfg.augment)
            out.append(sample_patch(im.float() / 255.0, cfg, rng))
        return collate(out)


def implicit_downsampled_pair(hr: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation pair as the official LIIF x6+ benchmarks make it.

    ``h_lr = floor(H / s + 1e-9)``, HR cropped to ``round(h_lr * s)``, LR = bicubic (antialiased).
    """
    H, W = hr.shape[-2:]
    h_lr, w_lr = math.floor(H / scale + 1e-9), math.floor(W / scale + 1e-9)
    hr = hr[:, : round(h_lr * scale), : round(w_lr * scale)]
    return resize_bicubic(hr, (h_lr, w_lr)).clamp(0, 1), hr
