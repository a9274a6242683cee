"""Tests for liif.resize: PIL-compatible antialiased bicubic and MATLAB-compatible imresize."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from liif.resize import (
    ResizeArgumentError,
    imresize_matlab,
    imresize_matlab_uint8,
    matlab_contributions,
    resize_bicubic,
)

SET5 = ("baby", "bird", "butterfly", "head", "woman")


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------- resize_bicubic


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((37, 53), (12, 17)), ((37, 53), (100, 141)), ((37, 53), (37, 20)), ((53, 37), (20, 90))],
)
def test_resize_bicubic_matches_pil_float_mode(in_hw, out_hw):
    img = _rand(2, *in_hw, seed=1)
    out = resize_bicubic(img, out_hw)
    assert out.shape == (2, *out_hw)
    for c in range(2):
        pil = Image.fromarray(img[c].numpy(), mode="F").resize(out_hw[::-1], Image.BICUBIC)
        diff = np.abs(np.asarray(pil, dtype=np.float64) - out[c].double().numpy())
        # Observed: mean ~1e-7, max ~3e-6 (float32 rounding only).
        assert diff.mean() < 1e-5, diff.mean()
        assert diff.max() < 1e-4, diff.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_bicubic_keeps_dtype_and_identity(dtype):
    img = _rand(3, 37, 53, dtype=dtype)
    out = resize_bicubic(img, (37, 53))
    assert out.dtype == dtype
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("out_hw", [(9, 14), (80, 111), (37, 11)])
def test_resize_bicubic_constant_stays_constant(antialias, out_hw):
    img = torch.full((3, 37, 53), 1234.5, dtype=torch.float64)  # uint16-like values, no clamp
    out = resize_bicubic(img, out_hw, antialias=antialias)
    torch.testing.assert_close(out, torch.full_like(out, 1234.5), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_keep_dtype(dtype):
    img = _rand(3, 37, 53, dtype=dtype)
    ref = resize_bicubic(img.float(), (12, 17))
    out = resize_bicubic(img, (12, 17))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=0)
    out_m = imresize_matlab(img, scale=0.3)
    assert out_m.dtype == dtype
    torch.testing.assert_close(
        out_m.float(), imresize_matlab(img.float(), scale=0.3), atol=3e-2, rtol=0
    )


def test_resize_bicubic_batch_matches_single():
    batch = _rand(3, 2, 37, 53, seed=2)
    out = resize_bicubic(batch, (15, 29))
    for i in range(3):
        torch.testing.assert_close(out[i], resize_bicubic(batch[i], (15, 29)), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("img", "size", "match"),
    [
        (torch.zeros(37, 53), (5, 5), r"\(37, 53\)"),
        (torch.zeros(1, 1, 1, 37, 53), (5, 5), r"\(1, 1, 1, 37, 53\)"),
        (torch.zeros(3, 37, 53, dtype=torch.int32), (5, 5), "torch.int32"),
        (torch.zeros(3, 37, 53), (0, 5), r"\(0, 5\)"),
        (torch.zeros(3, 37, 53), (5.0, 5), r"\(5.0, 5\)"),
        (torch.zeros(3, 37, 53), (5, 5, 5), r"\(5, 5, 5\)"),
        (torch.zeros(3, 37, 53), 5, "got 5"),
        (np.zeros((3, 37, 53), np.float32), (5, 5), "ndarray"),
    ],
)
def test_resize_bicubic_bad_args(img, size, match):
    with pytest.raises(ResizeArgumentError, match=match):
        resize_bicubic(img, size)


def test_resize_error_is_value_error():
    with pytest.raises(ValueError, match="positive ints"):
        resize_bicubic(torch.zeros(3, 4, 4), (-1, 2))


# ----------------------------------------------------------------------------- MATLAB imresize


def test_contributions_by_hand_upscale_x2():
    # x = 1 -> u = 0.75; taps at 1-based -1, 0, 1, 2 with distances 1.75, 0.75, -0.25, -1.25.
    expected_w = [-0.0234375, 0.2265625, 0.8671875, -0.0703125]
    idx, w = matlab_contributions(5, 10, 2.0)
    assert idx.shape == w.shape == (10, 4)
    assert idx[0].tolist() == [0, 0, 0, 1]  # replicate: indices clamped
    torch.testing.assert_close(w[0], torch.tensor(expected_w, dtype=torch.float64))
    idx_s, w_s = matlab_contributions(5, 10, 2.0, border="symmetric")
    assert idx_s[0].tolist() == [1, 0, 0, 1]  # mirror: 1-based -1 -> 2, 0 -> 1
    torch.testing.assert_close(w_s, w)
    assert idx[-1].tolist() == [3, 4, 4, 4]
    assert idx_s[-1].tolist() == [3, 4, 4, 3]


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.7, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("border", ["replicate", "symmetric"])
def test_contributions_normalised_and_in_range(scale, border):
    n = 37
    out = math.ceil(n * scale)
    idx, w = matlab_contributions(n, out, scale, border=border)
    assert idx.shape == w.shape and idx.shape[0] == out
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    torch.testing.assert_close(w.sum(dim=1), torch.ones(out, dtype=torch.float64))
    # Antialiasing stretches the kernel: 4/scale (+2 - dropped zero columns) taps.
    assert idx.shape[1] <= math.ceil(4 / min(scale, 1.0)) + 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imresize_identity_at_scale_one(dtype):
    img = _rand(3, 37, 53, dtype=dtype)
    out = imresize_matlab(img, scale=1.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)


@pytest.mark.parametrize("border", ["replicate", "symmetric"])
@pytest.mark.parametrize("kwargs", [{"scale": 0.3}, {"scale": 2.5}, {"size": (80, 11)}])
def test_imresize_constant_stays_constant(border, kwargs):
    img = torch.full((2, 37, 53), 0.4375, dtype=torch.float64)
    out = imresize_matlab(img, border=border, **kwargs)
    torch.testing.assert_close(out, torch.full_like(out, 0.4375), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("scale", "out_hw"), [(0.3, (12, 16)), (1 / 3, (13, 18)), (2.5, (93, 133))]
)
def test_imresize_output_size_is_ceil(scale, out_hw):
    out = imresize_matlab(_rand(1, 37, 53), scale=scale)
    assert out.shape == (1, *out_hw)
    assert out_hw == (math.ceil(37 * scale), math.ceil(53 * scale))


@pytest.mark.parametrize("scale", [2.0, 3.7])
def test_imresize_upscale_reproduces_linear_ramp(scale):
    # Keys' a = -0.5 cubic reproduces linear functions exactly away from the borders,
    # so interior outputs equal MATLAB's source coordinate u = x / s + 0.5 (1 - 1 / s) - 1.
    w_in = 53
    ramp = torch.arange(w_in, dtype=torch.float64).expand(1, 5, w_in)
    out = imresize_matlab(ramp, scale=scale)[0, 2]
    x = torch.arange(1, out.shape[0] + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale) - 1
    interior = (u > 2) & (u < w_in - 3)
    torch.testing.assert_close(out[interior], u[interior], atol=1e-9, rtol=0)


def test_imresize_anisotropic_size():
    img = _rand(3, 37, 53, seed=3, dtype=torch.float64)
    out = imresize_matlab(img, size=(74, 20))
    assert out.shape == (3, 74, 20)
    # Separable: equals resizing one axis at a time through the public API.
    rows = imresize_matlab(img, size=(74, 53))
    torch.testing.assert_close(imresize_matlab(rows, size=(74, 20)), out, atol=1e-12, rtol=0)
    assert not torch.allclose(out, resize_bicubic(img, (74, 20)), atol=1e-3)


def test_imresize_batch_matches_single():
    batch = _rand(2, 3, 37, 53, seed=4)
    out = imresize_matlab(batch, scale=0.4)
    for i in range(2):
        torch.testing.assert_close(out[i], imresize_matlab(batch[i], scale=0.4), atol=0, rtol=0)


def test_imresize_float_does_not_round_or_clip():
    img = _rand(1, 37, 53, seed=5, dtype=torch.float64) * 3.0 - 1.0
    out = imresize_matlab(img, scale=0.5)
    assert out.min() < 0 and out.max() > 1
    assert not torch.equal(out, out.round())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of scale or size"),
        ({"scale": 0.5, "size": (4, 4)}, "exactly one of scale or size"),
        ({"scale": 0.0}, "got 0.0"),
        ({"scale": float("nan")}, "got nan"),
        ({"scale": True}, "got True"),
        ({"size": (4, -4)}, r"\(4, -4\)"),
        ({"scale": 0.5, "border": "wrap"}, "'wrap'"),
    ],
)
def test_imresize_bad_args(kwargs, match):
    with pytest.raises(ResizeArgumentError, match=match):
        imresize_matlab(torch.zeros(3, 37, 53), **kwargs)


def test_imresize_rejects_integer_tensor():
    with pytest.raises(ResizeArgumentError, match="torch.uint8"):
        imresize_matlab(torch.zeros(3, 37, 53, dtype=torch.uint8), scale=0.5)


def test_imresize_uint8_rounds_and_clips():
    rng = np.random.default_rng(6)
    arr = (rng.random((37, 53, 3)) > 0.5).astype(np.uint8) * 255  # overshoot at every edge
    out = imresize_matlab_uint8(arr, 0.5)
    assert out.dtype == np.uint8 and out.shape == (19, 27, 3)
    # The float result overshoots 0..255; the uint8 one is its rounded, saturated version.
    ref = imresize_matlab(torch.from_numpy(arr.transpose(2, 0, 1)).double(), scale=0.5)
    assert ref.min() < 0 and ref.max() > 255
    gray = imresize_matlab_uint8(arr[:, :, 0], 0.5)
    assert gray.shape == (19, 27)
    np.testing.assert_array_equal(gray, out[:, :, 0])


def test_imresize_uint8_round_half_away_from_zero():
    # 2x1 -> 1x1 average of 0 and 1 is 0.5 with MATLAB's symmetric weights; rounds up to 1.
    arr = np.array([[0], [1]], dtype=np.uint8)
    assert imresize_matlab_uint8(arr, 0.5).tolist() == [[1]]


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((37, 53, 3), np.float32), "float32"),
        (np.zeros((2, 37, 53, 3), np.uint8), r"\(2, 37, 53, 3\)"),
        (torch.zeros(37, 53, 3, dtype=torch.uint8), "Tensor"),
    ],
)
def test_imresize_uint8_bad_args(arr, match):
    with pytest.raises(ResizeArgumentError, match=match):
        imresize_matlab_uint8(arr, 0.5)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_imresize_uint8_reproduces_set5_lr_bicubic(shared_data, s):
    root = shared_data / "benchmark" / "Set5"
    for name in SET5:
        hr = np.asarray(Image.open(root / "HR" / f"{name}.png").convert("RGB"))
        h, w = hr.shape[:2]
        hr = hr[: h // s * s, : w // s * s]
        ref_path = root / "LR_bicubic" / f"X{s}" / f"{name}x{s}.png"
        ref = np.asarray(Image.open(ref_path).convert("RGB"))
        lr = imresize_matlab_uint8(hr, 1 / s)
        assert lr.shape == ref.shape, (name, lr.shape, ref.shape)
        mad = np.abs(lr.astype(np.float64) - ref.astype(np.float64)).mean()
        print(f"Set5 {name} x{s}: mean abs diff {mad:.4f} grey levels")
        # Observed: 0.0000 for all 15 images (pixel-exact) with border="replicate".
        assert mad < 0.5, (name, s, mad)
