"""TTSR training batches from stored (LR, HR, reference) triplets in native value units.

:func:`ref_batch` turns rows of a reference ground-truth output (``pipeline.gt`` shards with the
``ref`` columns, decoded to numpy) into the batch that :func:`liif.ttsr.ttsr_train_step` takes.
The network inputs are computed exactly as at inference
(:func:`liif.ttsr.infer.ttsr_inputs_from_unit`, shared with ``prepare_ttsr_inputs``), so a
model trained on these batches sees the same ``lr_up`` / ``ref_down_up`` it gets from
:func:`liif.ttsr.reference_upscale`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from liif.ttsr.infer import ttsr_inputs_from_unit
from liif.ttsr.train import BATCH_KEYS

__all__ = ["ref_batch", "to_unit_chw"]

ValueRange = tuple[float, float]


def to_unit_chw(x: np.ndarray, value_range: Sequence[float], what: str = "image") -> torch.Tensor:
    """``(C, H, W)`` numpy array in native units -> float32 tensor ``(3, H, W)`` in [0, 1].

    ``(x - lo) / (hi - lo)`` computed in float64, then clipped to [0, 1] (TTSR's input domain);
    one band is replicated to three. Other band counts, empty or non-finite images raise
    ``ValueError``.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (C, H, W), got {type(x).__name__}")
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"{what} must be (C, H, W) with C, H, W >= 1, got {x.shape}")
    if x.shape[0] not in (1, 3):
        raise ValueError(
            f"{what} has {x.shape[0]} bands; TTSR takes 3 (or 1, replicated): select three "
            "bands when making the ground truth")
    lo, hi = _check_range(value_range, what)
    unit = (x.astype(np.float64) - lo) / (hi - lo)
    if not np.isfinite(unit).all():
        raise ValueError(f"{what} holds non-finite values")
    t = torch.from_numpy(np.clip(unit, 0.0, 1.0).astype(np.float32))
    return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t


def _check_range(vr: Sequence[float], what: str) -> ValueRange:
    try:
        lo, hi = (float(v) for v in vr)
    except (TypeError, ValueError):
        raise ValueError(
            f"value range of {what} must be two numbers (lo, hi), got {vr!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value range of {what} needs finite lo < hi, got {vr!r}")
    return lo, hi


def _ranges(value_ranges: Sequence[Sequence[float]] | Sequence[float], n: int) -> list:
    if len(value_ranges) == 2 and all(isinstance(v, int | float | np.number) for v in value_ranges):
        return [value_ranges] * n
    if len(value_ranges) != n:
        raise ValueError(f"value_ranges has {len(value_ranges)} entries for {n} samples")
    return list(value_ranges)


def _geometry(x: torch.Tensor, flip_h: bool, flip_v: bool, k: int) -> torch.Tensor:
    """Official TTSR order: horizontal flip, vertical flip, then ``rot90`` ``k`` times."""
    if flip_h:
        x = x.flip(-1)
    if flip_v:
        x = x.flip(-2)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def _draw(rng: np.random.Generator, square_lr: bool, square_ref: bool) -> tuple[tuple, tuple]:
    """Independent (flip_h, flip_v, k) draws for (lr, hr) and for ref, in the official order.

    A non-square image only gets ``k`` in {0, 2} so that every sample keeps its shape and the
    batch stays stackable.
    """
    fh_lr, fh_ref, fv_lr, fv_ref = (bool(v) for v in rng.integers(0, 2, size=4))
    k_lr, k_ref = (int(v) for v in rng.integers(0, 4, size=2))
    if not square_lr:
        k_lr = 2 * (k_lr % 2)
    if not square_ref:
        k_ref = 2 * (k_ref % 2)
    return (fh_lr, fv_lr, k_lr), (fh_ref, fv_ref, k_ref)


def ref_batch(
    lr_list: Sequence[np.ndarray],
    hr_list: Sequence[np.ndarray],
    ref_list: Sequence[np.ndarray],
    value_ranges: Sequence[Sequence[float]] | Sequence[float],
    *,
    augment: bool = False,
    rng: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A :func:`liif.ttsr.ttsr_train_step` batch from ``B`` (LR, HR, reference) triplets.

    Args:
        lr_list: ``B`` arrays ``(C, h, w)`` (C = 3, or 1 replicated), all the same ``(h, w)``.
        hr_list: ``B`` arrays ``(C, 4h, 4w)``.
        ref_list: ``B`` arrays ``(C, Hr_i, Wr_i)``; after cropping to multiples of 4 all must
            have the same size.
        value_ranges: ``(lo, hi)`` per sample (or one for all) mapped to [0, 1] for the LR, HR
            and reference of that sample; the unit values are clipped to [0, 1].
        augment: the official TTSR augmentation: random horizontal flip, vertical flip and
            ``rot90`` (k in 0..3), the same for LR and HR, drawn independently for the reference;
            ``lr_up`` and ``ref_down_up`` are computed from the augmented images.
        rng: the generator of the augmentation draws (required with ``augment``).

    Returns:
        float32 tensors in [-1, 1]: ``lr (B, 3, h, w)``, ``lr_up`` and ``hr (B, 3, 4h, 4w)``,
        ``ref`` and ``ref_down_up (B, 3, Hr, Wr)``, Hr and Wr multiples of 4. For each sample the
        LR/ref inputs equal ``prepare_ttsr_inputs(lr, ref)`` bit for bit.
    """
    n = len(lr_list)
    if n == 0 or len(hr_list) != n or len(ref_list) != n:
        raise ValueError(f"need the same positive number of LR, HR and reference arrays, got "
                         f"{n}, {len(hr_list)} and {len(ref_list)}")
    if augment and rng is None:
        raise ValueError("augment=True needs rng (a numpy Generator)")
    ranges = _ranges(value_ranges, n)
    lrs = [to_unit_chw(lr_list[i], ranges[i], f"lr_list[{i}]") for i in range(n)]
    hrs = [to_unit_chw(hr_list[i], ranges[i], f"hr_list[{i}]") for i in range(n)]
    refs = [to_unit_chw(ref_list[i], ranges[i], f"ref_list[{i}]") for i in range(n)]
    lr_sizes = [tuple(t.shape[1:]) for t in lrs]
    if len(set(lr_sizes)) != 1:
        raise ValueError(f"every LR of a batch must share its size, got {lr_sizes}")
    for i, (lr, hr) in enumerate(zip(lrs, hrs, strict=True)):
        if hr.shape[1:] != (4 * lr.shape[1], 4 * lr.shape[2]):
            raise ValueError(f"hr_list[{i}] is {tuple(hr.shape[1:])}, not 4x its LR "
                             f"{tuple(lr.shape[1:])} = {(4 * lr.shape[1], 4 * lr.shape[2])}")
    crop = [((t.shape[1] // 4) * 4, (t.shape[2] // 4) * 4) for t in refs]
    if len(set(crop)) != 1:
        raise ValueError(f"references differ in size after cropping to multiples of 4: {crop} "
                         f"(raw sizes {[tuple(t.shape[1:]) for t in refs]})")
    if min(crop[0]) == 0:
        raise ValueError(f"references must be at least 4x4 pixels, got {tuple(refs[0].shape[1:])}")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in BATCH_KEYS}
    for lr, hr, ref in zip(lrs, hrs, refs, strict=True):
        if augment:
            assert rng is not None
            g_lr, g_ref = _draw(rng, lr.shape[1] == lr.shape[2], crop[0][0] == crop[0][1])
            lr, hr = _geometry(lr, *g_lr), _geometry(hr, *g_lr)
            ref = _geometry(ref, *g_ref)
        lr_b, lr_up, ref_b, ref_down_up = ttsr_inputs_from_unit(lr, ref)
        out["lr"].append(lr_b)
        out["lr_up"].append(lr_up)
        out["hr"].append(hr[None] * 2.0 - 1.0)
        out["ref"].append(ref_b)
        out["ref_down_up"].append(ref_down_up)
    return {k: torch.cat(v).contiguous() for k, v in out.items()}
