"""Training batches from stored (LR, HR) pairs whose HR sizes differ (size-varied ground truth).

The LIIF paper never resizes the ground truth to a common size: each sample keeps its own HR
patch, and only ``sample_q`` random HR pixels (with their coordinates and cells) enter the loss.
:func:`batch_from_pairs` turns such pairs, e.g. rows of the GT shards written by
``pipeline.gt``, into the batch that :func:`liif.train.train_step` takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from liif.coords import make_coord
from liif.errors import LiifError

__all__ = ["PairError", "augment_flips", "batch_from_pairs", "to_unit_tensor"]

ValueRange = tuple[float, float]


class PairError(LiifError, ValueError):
    """An (LR, HR) pair or its value range cannot form a training sample."""


def _as_float_chw(x: torch.Tensor | np.ndarray, what: str, i: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):  # copies (also read-only buffers) into a float array
        x = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise PairError(f"{what}[{i}] must be a tensor or numpy array, got {type(x).__name__}")
    if t.dim() != 3 or min(t.shape) < 1:
        raise PairError(f"{what}[{i}] must be (C, H, W) with C, H, W >= 1, got {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] != 3:
        raise PairError(
            f"{what}[{i}] has {t.shape[0]} channels; the model takes 3 (or 1, replicated): "
            "select three bands when making the ground truth")
    return t.to(torch.float32) if t.dtype != torch.float64 else t


def _check_range(vr: Sequence[float], i: int) -> ValueRange:
    try:
        lo, hi = (float(v) for v in vr)
    except (TypeError, ValueError):
        raise PairError(f"value_ranges[{i}]={vr!r} must be two numbers (lo, hi)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise PairError(f"value_ranges[{i}]={vr!r} needs finite lo < hi")
    return lo, hi


def to_unit_tensor(x: torch.Tensor | np.ndarray, value_range: Sequence[float] = (0.0, 1.0)
                   ) -> torch.Tensor:
    """``(C, H, W)`` values in ``lo..hi`` -> float32 in ``0..1`` (1 band replicated to 3)."""
    lo, hi = _check_range(value_range, 0)
    t = _as_float_chw(x, "x", 0).to(torch.float64)
    return ((t - lo) / (hi - lo)).to(torch.float32)


def augment_flips(x: torch.Tensor, flips: np.ndarray) -> torch.Tensor:
    """Flip rows, flip columns, transpose (each when its flag is set): ``(C, h, w)``; the
    paper's training augmentation, shared by every training sampler."""
    if flips[0]:
        x = x.flip(-2)
    if flips[1]:
        x = x.flip(-1)
    return x.transpose(-2, -1) if flips[2] else x


def batch_from_pairs(
    lr_list: Sequence[torch.Tensor | np.ndarray],
    hr_list: Sequence[torch.Tensor | np.ndarray],
    sample_q: int,
    rng: np.random.Generator,
    *,
    value_ranges: Sequence[Sequence[float]] | Sequence[float] | None = None,
    augment: bool = False,
    clamp_lr: bool = True,
) -> dict[str, torch.Tensor]:
    """A :func:`liif.train.train_step` batch from ``B`` (LR, HR) pairs of varying HR size.

    Args:
        lr_list: ``B`` arrays ``(C, h, w)``, all the same ``(h, w)`` (C = 3, or 1 replicated).
        hr_list: ``B`` arrays ``(C, H_i, W_i)``; each HR keeps its own size.
        sample_q: HR pixels sampled per pair (with replacement only when ``H_i * W_i < sample_q``).
        rng: the generator that picks the pixels (and flips, with ``augment``).
        value_ranges: ``(lo, hi)`` mapped to ``0..1``, one for all pairs or one per pair;
            ``None`` means the values already are in ``0..1``.
        augment: random flips/transpose per pair, the same for LR and HR.
        clamp_lr: clamp the LR input to ``[0, 1]`` (as the on-the-fly sampler does).

    Returns:
        ``inp (B, 3, h, w)``, ``coord (B, Q, 2)`` in [-1, 1] (y, x), ``cell (B, Q, 2)`` =
        ``(2 / H_i, 2 / W_i)``, ``gt (B, Q, 3)`` (float32) and ``scale (B,)`` = ``H_i / h``.
    """
    n = len(lr_list)
    if n == 0 or n != len(hr_list):
        raise PairError(f"need the same positive number of LR and HR arrays, got {n} and "
                        f"{len(hr_list)}")
    if isinstance(sample_q, bool) or not isinstance(sample_q, int | np.integer) or sample_q < 1:
        raise PairError(f"sample_q must be a positive integer, got {sample_q!r}")
    if value_ranges is None:
        ranges: list[ValueRange] = [(0.0, 1.0)] * n
    elif len(value_ranges) == 2 and all(isinstance(v, int | float | np.number)
                                         for v in value_ranges):
        ranges = [_check_range(value_ranges, 0)] * n  # type: ignore[arg-type]
    else:
        if len(value_ranges) != n:
            raise PairError(f"value_ranges has {len(value_ranges)} entries for {n} pairs")
        ranges = [_check_range(vr, i) for i, vr in enumerate(value_ranges)]  # type: ignore[arg-type]

    inps: list[torch.Tensor] = []
    coords: list[torch.Tensor] = []
    cells: list[torch.Tensor] = []
    gts: list[torch.Tensor] = []
    scales: list[float] = []
    for i in range(n):
        lo, hi = ranges[i]
        lr = (_as_float_chw(lr_list[i], "lr_list", i).to(torch.float64) - lo) / (hi - lo)
        hr = (_as_float_chw(hr_list[i], "hr_list", i).to(torch.float64) - lo) / (hi - lo)
        lr, hr = lr.to(torch.float32), hr.to(torch.float32)
        if augment:
            flips = rng.random(3) < 0.5
            lr, hr = augment_flips(lr, flips), augment_flips(hr, flips)
        if inps and lr.shape != inps[0].shape:
            raise PairError(f"LR {i} has shape {tuple(lr.shape)} but LR 0 has "
                            f"{tuple(inps[0].shape)}; every LR of a batch must share its size")
        H, W = hr.shape[-2:]
        coord = make_coord((H, W))
        idx = torch.from_numpy(rng.choice(H * W, sample_q, replace=H * W < sample_q))
        inps.append(lr.clamp(0, 1) if clamp_lr else lr)
        coords.append(coord[idx])
        gts.append(hr.reshape(3, -1).T[idx])
        cells.append(torch.tensor([2 / H, 2 / W], dtype=torch.float32).expand(sample_q, 2))
        scales.append(H / lr.shape[-2])
    return {"inp": torch.stack(inps), "coord": torch.stack(coords),
            "cell": torch.stack(cells).contiguous(), "gt": torch.stack(gts),
            "scale": torch.tensor(scales, dtype=torch.float32)}
