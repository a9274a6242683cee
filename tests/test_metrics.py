"""Tests for liif.metrics: official-LIIF PSNR, HR cropping and SSIM on Y."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from liif.metrics import (
    DATASETS,
    MetricArgumentError,
    crop_to_multiple,
    psnr,
    rgb_to_y,
    ssim_y,
)

H, W = 37, 53
DIFF_Y = torch.tensor([65.738, 129.057, 25.064], dtype=torch.float64) / 256


def _img(c: int = 3, seed: int = 0, lo: float = 0.2, hi: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(c, H, W, generator=g, dtype=torch.float64)


def _with_border(hr: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """Copy of ``hr`` whose outer ``width``-pixel frame is set to ``value``."""
    out = hr.clone()
    out[..., :width, :] = value
    out[..., -width:, :] = value
    out[..., :, :width] = value
    out[..., :, -width:] = value
    return out


# ----------------------------------------------------------------------------- psnr


@pytest.mark.parametrize("dataset", DATASETS)
def test_identical_images_give_inf(dataset):
    hr = _img()
    assert psnr(hr.clone(), hr, scale=2, dataset=dataset) == float("inf")


def test_known_mse_rgb_no_shave():
    hr = _img()
    d = torch.tensor([0.1, -0.05, 0.02], dtype=torch.float64).view(3, 1, 1)
    mse = (0.1**2 + 0.05**2 + 0.02**2) / 3
    assert psnr(hr + d, hr, dataset="none") == pytest.approx(-10 * math.log10(mse), abs=1e-9)


def test_known_mse_benchmark_uses_y_of_difference():
    hr = _img()
    d = torch.tensor([0.1, -0.05, 0.02], dtype=torch.float64)
    y = float((d * DIFF_Y).sum())
    got = psnr(hr + d.view(3, 1, 1), hr, scale=3, dataset="benchmark")
    assert got == pytest.approx(-20 * math.log10(abs(y)), abs=1e-9)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_y_weight_per_channel(channel):
    hr = _img()
    sr = hr.clone()
    sr[channel] += 0.1
    expected = -20 * math.log10(0.1 * float(DIFF_Y[channel]))
    assert psnr(sr, hr, scale=2) == pytest.approx(expected, abs=1e-9)


def test_div2k_is_rgb():
    hr = _img()
    sr = hr.clone()
    sr[2] += 0.1  # blue only: Y weight would be ~0.098, RGB mse is 0.01 / 3
    expected = -10 * math.log10(0.01 / 3)
    assert psnr(sr, hr, scale=2, dataset="div2k") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_benchmark_shave_removes_scale_pixels(scale):
    hr = _img()
    assert psnr(_with_border(hr, scale, 0.0), hr, scale=scale) == float("inf")
    assert math.isfinite(psnr(_with_border(hr, scale + 1, 0.0), hr, scale=scale))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_div2k_shave_is_scale_plus_six(scale):
    hr = _img()
    sr = _with_border(hr, scale + 6, 0.0)
    assert psnr(sr, hr, scale=scale, dataset="div2k") == float("inf")
    assert math.isfinite(psnr(sr, hr, scale=scale, dataset="benchmark"))
    sr = _with_border(hr, scale + 7, 0.0)
    assert math.isfinite(psnr(sr, hr, scale=scale, dataset="div2k"))


def test_non_integer_scale_shaves_ceil():
    hr = _img()
    assert psnr(_with_border(hr, 3, 0.0), hr, scale=2.5) == float("inf")
    assert math.isfinite(psnr(_with_border(hr, 4, 0.0), hr, scale=2.5))


def test_none_dataset_does_not_shave():
    hr = _img()
    assert math.isfinite(psnr(_with_border(hr, 1, 0.0), hr, dataset="none"))


def test_sr_is_clamped_to_unit_range():
    hr = _img(lo=0.0, hi=1.0)
    hr[:, :10] = 1.0
    hr[:, -10:] = 0.0
    sr = hr.clone()
    sr[:, :10] = 1.7
    sr[:, -10:] = -0.3
    assert psnr(sr, hr, dataset="none") == float("inf")


def test_rgb_range_255_matches_unit_range():
    hr = _img()
    sr = _img(seed=1)
    a = psnr(sr, hr, scale=4)
    b = psnr(sr * 255, hr * 255, scale=4, rgb_range=255)
    assert b == pytest.approx(a, abs=1e-9)


def test_one_channel_is_used_as_y():
    hr = _img(c=1)
    assert psnr(hr + 0.1, hr, scale=2) == pytest.approx(20.0, abs=1e-9)


def test_batched_input_matches_single():
    hr, sr = _img(), _img(seed=1)
    assert psnr(sr[None], hr[None], scale=2) == psnr(sr, hr, scale=2)
    assert ssim_y(sr[None], hr[None], shave=2) == ssim_y(sr, hr, shave=2)


@pytest.mark.parametrize(
    ("sr", "hr", "match"),
    [
        (torch.zeros(2, H, W), torch.zeros(2, H, W), r"\(2, 37, 53\)"),
        (torch.zeros(2, 3, H, W), torch.zeros(2, 3, H, W), "batch of 2"),
        (torch.zeros(H, W), torch.zeros(H, W), r"\(37, 53\)"),
        (torch.zeros(3, H, W), torch.zeros(3, H, W - 1), r"\(3, 37, 52\)"),
        (torch.zeros(3, H, W, dtype=torch.uint8), torch.zeros(3, H, W), "torch.uint8"),
        (np.zeros((3, H, W)), torch.zeros(3, H, W), "ndarray"),
    ],
)
def test_bad_shapes_raise(sr, hr, match):
    with pytest.raises(MetricArgumentError, match=match):
        psnr(sr, hr, scale=2)


def test_bad_dataset_lists_allowed_names():
    hr = _img()
    with pytest.raises(ValueError, match="benchmark.*div2k.*none.*'set5'"):
        psnr(hr, hr, scale=2, dataset="set5")


@pytest.mark.parametrize("scale", [None, 0, -2, float("nan"), True])
def test_benchmark_needs_positive_scale(scale):
    hr = _img()
    with pytest.raises(MetricArgumentError, match="positive scale"):
        psnr(hr, hr, scale=scale)


def test_shave_larger_than_image_raises():
    hr = _img()
    with pytest.raises(MetricArgumentError, match="shave=24"):
        psnr(hr, hr, scale=18, dataset="div2k")


def test_bad_rgb_range_raises():
    hr = _img()
    with pytest.raises(MetricArgumentError, match="rgb_range"):
        psnr(hr, hr, scale=2, rgb_range=0)


# ----------------------------------------------------------------------------- crop_to_multiple


def test_crop_to_multiple_keeps_top_left():
    hr = _img()
    out = crop_to_multiple(hr, 4)
    assert out.shape == (3, 36, 52)
    assert torch.equal(out, hr[:, :36, :52])
    assert crop_to_multiple(hr[None], 3).shape == (1, 3, 36, 51)
    assert crop_to_multiple(hr, 1).shape == hr.shape


@pytest.mark.parametrize("scale", [0, -1, 2.0, True, 38])
def test_crop_to_multiple_bad_scale(scale):
    with pytest.raises(MetricArgumentError, match=str(scale)):
        crop_to_multiple(_img(), scale)


# ----------------------------------------------------------------------------- ssim_y


def test_rgb_to_y_range():
    assert float(rgb_to_y(torch.ones(3, 2, 2, dtype=torch.float64))[0, 0]) == pytest.approx(235.0)
    assert float(rgb_to_y(torch.zeros(3, 2, 2, dtype=torch.float64))[0, 0]) == pytest.approx(16.0)
    grey = _img(c=1)
    torch.testing.assert_close(rgb_to_y(grey), rgb_to_y(grey.expand(3, -1, -1)))


@pytest.mark.parametrize("shave", [0, 3])
def test_ssim_y_matches_skimage(shave):
    hr = _img(lo=0.0, hi=1.0)
    g = torch.Generator().manual_seed(7)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ya, yb = rgb_to_y(sr).numpy(), rgb_to_y(hr).numpy()
    if shave:
        ya, yb = ya[shave:-shave, shave:-shave], yb[shave:-shave, shave:-shave]
    ref = structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    got = ssim_y(sr, hr, shave=shave)
    # Valid-window SSIM equals skimage's (it crops its padded border): observed diff ~1e-16.
    assert got == pytest.approx(ref, abs=1e-9)
    assert 0.5 < got < 0.99


def test_ssim_y_identical_is_one_and_clamps_sr():
    hr = _img(lo=0.0, hi=1.0)
    assert ssim_y(hr.clone(), hr, shave=2) == pytest.approx(1.0, abs=1e-12)
    hr[:, :, :5] = 1.0
    sr = hr.clone()
    sr[:, :, :5] = 1.5
    assert ssim_y(sr, hr, shave=0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_y_shave_removes_border():
    hr = _img()
    sr = _with_border(hr, 4, 0.0)
    assert ssim_y(sr, hr, shave=4) == pytest.approx(1.0, abs=1e-12)
    assert ssim_y(sr, hr, shave=3) < 0.999


@pytest.mark.parametrize(("shave", "match"), [(-1, "-1"), (1.5, "1.5"), (14, "9x25")])
def test_ssim_y_bad_shave(shave, match):
    hr = _img()
    with pytest.raises(MetricArgumentError, match=match):
        ssim_y(hr, hr, shave=shave)


# ----------------------------------------------------------------------------- real data


def test_set5_x4_bicubic_matches_published_figures(shared_data):
    """MATLAB-bicubic x4 on Set5 is published as 28.42 dB / 0.8104 (EDSR, RCAN tables)."""
    from liif.resize import imresize_matlab_uint8

    root = shared_data / "benchmark" / "Set5"
    psnrs, ssims = [], []
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        hr_u8 = np.asarray(Image.open(root / "HR" / f"{name}.png").convert("RGB"))
        hr = crop_to_multiple(torch.from_numpy(hr_u8.transpose(2, 0, 1).copy()), 4) / 255.0
        lr = np.asarray(Image.open(root / "LR_bicubic" / "X4" / f"{name}x4.png").convert("RGB"))
        sr = torch.from_numpy(imresize_matlab_uint8(lr, 4).transpose(2, 0, 1).copy()) / 255.0
        psnrs.append(psnr(sr.double(), hr.double(), scale=4))
        ssims.append(ssim_y(sr.double(), hr.double(), shave=4))
    mean_psnr, mean_ssim = float(np.mean(psnrs)), float(np.mean(ssims))
    print(f"Set5 x4 bicubic: PSNR {mean_psnr:.3f} dB, SSIM {mean_ssim:.4f}")
    # Observed: 28.430 dB, 0.8111.
    assert mean_psnr == pytest.approx(28.42, abs=0.05)
    assert mean_ssim == pytest.approx(0.8104, abs=0.002)
