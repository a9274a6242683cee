"""TTSR training batches from (LR, HR, reference) triplets: liif.ttsr.data.ref_batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liif.ttsr import ref_batch
from liif.ttsr.infer import prepare_ttsr_inputs
from liif.ttsr.train import BATCH_KEYS


def _triplet(seed: int, h: int = 6, w: int = 5, rh: int = 22, rw: int = 27, c: int = 3):
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (c, h, w)).astype(np.uint8)
    hr = rng.integers(0, 256, (c, 4 * h, 4 * w)).astype(np.uint8)
    ref = rng.integers(0, 256, (c, rh, rw)).astype(np.uint8)
    return lr, hr, ref


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy((x.astype(np.float64) / 255.0).astype(np.float32))
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def test_ref_batch_equals_prepare_ttsr_inputs() -> None:
    trip = [_triplet(0), _triplet(1, rh=23, rw=24)]  # both crop to 20x24
    out = ref_batch(*[[t[k] for t in trip] for k in range(3)], [(0, 255), (0, 255)])
    assert set(out) == set(BATCH_KEYS)
    for i, (lr, hr, ref) in enumerate(trip):
        expected = prepare_ttsr_inputs(_unit(lr), _unit(ref))
        for key, exp in zip(("lr", "lr_up", "ref", "ref_down_up"), expected, strict=True):
            assert torch.equal(out[key][i], exp[0]), key
        assert torch.equal(out["hr"][i], _unit(hr) * 2 - 1)


def test_ref_batch_shapes_dtype_range() -> None:
    trip = [_triplet(s) for s in range(3)]
    out = ref_batch(*[[t[k] for t in trip] for k in range(3)], (0, 255))
    assert out["lr"].shape == (3, 3, 6, 5)
    assert out["lr_up"].shape == out["hr"].shape == (3, 3, 24, 20)
    assert out["ref"].shape == out["ref_down_up"].shape == (3, 3, 20, 24)
    for k, v in out.items():
        assert v.dtype == torch.float32, k
        assert v.min() >= -1 and v.max() <= 1, k


def test_ref_batch_native_units_are_clipped() -> None:
    lr, hr, ref = (x.astype(np.uint16) * 40 for x in _triplet(3))  # up to 10200 > hi
    out = ref_batch([lr], [hr], [ref], [(0.0, 10000.0)])
    unit = np.clip(lr.astype(np.float64) / 10000.0, 0, 1).astype(np.float32)
    assert torch.equal(out["lr"][0], torch.from_numpy(unit) * 2 - 1)
    assert out["hr"].max() == 1.0


def test_one_band_is_replicated() -> None:
    lr, hr, ref = _triplet(4, c=1)
    one = ref_batch([lr], [hr], [ref], (0, 255))
    three = ref_batch([lr.repeat(3, 0)], [hr.repeat(3, 0)], [ref.repeat(3, 0)], (0, 255))
    for k in BATCH_KEYS:
        assert torch.equal(one[k], three[k]), k


def test_ref_batch_errors() -> None:
    lr, hr, ref = _triplet(5)
    with pytest.raises(ValueError, match=r"not 4x its LR"):
        ref_batch([lr], [hr[:, :-1]], [ref], (0, 255))
    _, _, ref2 = _triplet(6, rh=26, rw=27)
    with pytest.raises(ValueError, match=r"\(20, 24\), \(24, 24\)"):
        ref_batch([lr, lr], [hr, hr], [ref, ref2], (0, 255))
    with pytest.raises(ValueError, match="4 bands"):
        ref_batch([np.zeros((4, 6, 5), np.uint8)], [hr], [ref], (0, 255))
    with pytest.raises(ValueError, match="share its size"):
        lr7, hr7, _ = _triplet(7, h=7)
        ref_batch([lr, lr7], [hr, hr7], [ref, ref], (0, 255))
    with pytest.raises(ValueError, match="needs rng"):
        ref_batch([lr], [hr], [ref], (0, 255), augment=True)
    with pytest.raises(ValueError, match=r"lo < hi.*\(5, 5\)"):
        ref_batch([lr], [hr], [ref], [(5, 5)])
    with pytest.raises(ValueError, match="at least 4x4"):
        ref_batch([lr], [hr], [ref[:, :3]], (0, 255))
    with pytest.raises(ValueError, match="same positive number"):
        ref_batch([lr], [hr], [], (0, 255))


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flip/rot90 images of ``x`` (C, H, W) in a fixed order."""
    out = []
    for fh in (False, True):
        y = x.flip(-1) if fh else x
        out += [torch.rot90(y, k, dims=(-2, -1)) for k in range(4)]
    return out


def _which(y: torch.Tensor, x: torch.Tensor) -> int:
    hits = [i for i, d in enumerate(_dihedral(x)) if d.shape == y.shape and torch.equal(d, y)]
    assert len(hits) == 1
    return hits[0]


def test_augment_deterministic_and_consistent() -> None:
    n, h = 24, 4
    rng = np.random.default_rng(0)
    lrs = [rng.integers(0, 256, (3, h, h)).astype(np.uint8) for _ in range(n)]
    hrs = [x.repeat(4, 1).repeat(4, 2) for x in lrs]  # nearest-upsampled LR
    refs = [rng.integers(0, 256, (3, 16, 16)).astype(np.uint8) for _ in range(n)]
    a = ref_batch(lrs, hrs, refs, (0, 255), augment=True, rng=np.random.default_rng(7))
    b = ref_batch(lrs, hrs, refs, (0, 255), augment=True, rng=np.random.default_rng(7))
    c = ref_batch(lrs, hrs, refs, (0, 255), augment=True, rng=np.random.default_rng(8))
    for k in BATCH_KEYS:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["lr"], c["lr"])
    # hr stays the nearest upsampling of lr: the same transform hit both
    assert torch.equal(a["hr"], a["lr"].repeat_interleave(4, -2).repeat_interleave(4, -1))
    lr_t = [_which(a["lr"][i], _unit(lrs[i]) * 2 - 1) for i in range(n)]
    ref_t = [_which(a["ref"][i], _unit(refs[i]) * 2 - 1) for i in range(n)]
    assert lr_t != ref_t  # drawn independently
    assert len(set(lr_t)) > 3 and len(set(ref_t)) > 3
    # lr_up / ref_down_up are computed from the augmented images
    for i in range(n):
        exp = prepare_ttsr_inputs((a["lr"][i] + 1) / 2, (a["ref"][i] + 1) / 2)
        assert torch.allclose(a["lr_up"][i], exp[1][0], atol=1e-6)
        assert torch.allclose(a["ref_down_up"][i], exp[3][0], atol=1e-6)


def test_augment_keeps_non_square_shapes() -> None:
    trip = [_triplet(s, h=6, w=5, rh=20, rw=28) for s in range(8)]
    out = ref_batch(*[[t[k] for t in trip] for k in range(3)], (0, 255), augment=True,
                    rng=np.random.default_rng(1))
    assert out["lr"].shape == (8, 3, 6, 5) and out["hr"].shape == (8, 3, 24, 20)
    assert out["ref"].shape == (8, 3, 20, 28)
