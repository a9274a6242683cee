"""pipeline.io.values: value ranges, scaling round trips, band groups and merging, nodata masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BandSelectionError, ConfigError, UnsupportedDtypeError
from pipeline.io.values import (
    SUPPORTED_DTYPES,
    band_groups,
    default_value_range,
    from_unit,
    merge_groups,
    nearest_index,
    nodata_mask,
    parse_value_range,
    to_unit,
    upsample_mask,
    validate_dtype,
)

INT_DTYPES = ["uint8", "uint16", "int16", "int32"]

# ----------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("uint8", (0.0, 255.0)),
        ("uint16", (0.0, 65535.0)),
        ("int16", (-32768.0, 32767.0)),
        ("int32", (-2147483648.0, 2147483647.0)),
        ("float32", (0.0, 1.0)),
        ("float64", (0.0, 1.0)),
        (">u2", (0.0, 65535.0)),
    ],
)
def test_default_value_range(dtype: str, expected: tuple[float, float]) -> None:
    assert default_value_range(dtype) == expected


@pytest.mark.parametrize("dtype", ["int8", "uint32", "bool", "complex64", "float16"])
def test_unsupported_dtype(dtype: str) -> None:
    with pytest.raises(UnsupportedDtypeError, match=f"'{dtype}'.*allowed: uint8, uint16"):
        default_value_range(dtype)


def test_validate_dtype_returns_native_order() -> None:
    assert validate_dtype(">i2") == np.dtype("int16")
    assert validate_dtype(">i2").isnative
    assert len(SUPPORTED_DTYPES) == 6


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["0", "10000"], (0.0, 10000.0)),
        ((0, 1), (0.0, 1.0)),
        ("-1 1", (-1.0, 1.0)),
        ("0,255", (0.0, 255.0)),
    ],
)
def test_parse_value_range(value: object, expected: tuple[float, float]) -> None:
    assert parse_value_range(value) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ((5, 5), r"\(5, 5\) needs LO < HI"),
        ((10, 0), r"\(10, 0\) needs LO < HI"),
        (("a", "b"), r"\('a', 'b'\) must be two numbers"),
        ((0, float("inf")), r"\(0, inf\) must be finite"),
        ((float("nan"), 1), r"\(nan, 1\) must be finite"),
        ((1,), r"\(1,\) must be two numbers"),
        ("0 1 2", "'0 1 2' must be two numbers"),
    ],
)
def test_parse_value_range_errors(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_value_range(value)


# -------------------------------------------------------------------------------- scaling


def test_to_unit_maps_range_without_clipping() -> None:
    x = to_unit(np.array([0, 5000, 10000, 20000], dtype=np.uint16), (0, 10000))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        to_unit(np.array([-32768, 32767], np.int16), (-32768, 32767)), [0.0, 1.0]
    )


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_round_trip_full_range_integers(dtype: str) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    # float32 holds 24 significant bits: an int32 range is exact only up to ~2**23 values
    lo, hi = (info.min, info.max) if info.bits <= 16 else (-(2**22), 2**22)
    arr = rng.integers(lo, hi, size=(3, 17, 23), endpoint=True).astype(dtype)
    arr.flat[:2] = (lo, hi)
    vr = default_value_range(dtype) if info.bits <= 16 else (float(lo), float(hi))
    back = from_unit(to_unit(arr, vr), dtype, vr)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_round_trip_reflectance_range_keeps_values_above_hi() -> None:
    arr = np.array([0, 1, 9999, 10000, 12345, 65535], dtype=np.uint16)
    back = from_unit(to_unit(arr, (0, 10000)), np.uint16, (0, 10000))
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_float(dtype: str) -> None:
    arr = np.random.default_rng(1).normal(0.5, 1.0, size=(2, 9, 11)).astype(dtype)
    back = from_unit(to_unit(arr, (0, 1)), dtype, (0, 1))
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_allclose(back, arr, rtol=1e-6, atol=1e-6)


def test_from_unit_rounds_half_to_even() -> None:
    # value range (0, 4): 0.125 -> 0.5, 0.375 -> 1.5, 0.625 -> 2.5, exactly in binary
    x = np.array([0.125, 0.375, 0.625, 0.8125], dtype=np.float32)
    np.testing.assert_array_equal(from_unit(x, np.uint8, (0, 4)), [0, 2, 2, 3])


@pytest.mark.parametrize(
    ("dtype", "x", "expected"),
    [
        ("uint8", [-0.1, 1.2, 0.5], [0, 255, 128]),
        ("uint16", [-1.0, 2.0], [0, 65535]),
        ("int16", [-0.5, 1.5], [-32768, 32767]),
    ],
)
def test_from_unit_clips_to_dtype_limits(dtype: str, x: list, expected: list) -> None:
    out = from_unit(np.array(x), dtype, default_value_range(dtype))
    np.testing.assert_array_equal(out, expected)


def test_from_unit_clips_to_dtype_not_value_range() -> None:
    out = from_unit(np.array([1.5]), np.uint16, (0, 10000))
    np.testing.assert_array_equal(out, [15000])


def test_from_unit_float_is_rescaled_only() -> None:
    out = from_unit(np.array([-0.5, 1.5], dtype=np.float32), np.float32, (0, 2))
    np.testing.assert_array_equal(out, np.array([-1.0, 3.0], dtype=np.float32))


def test_from_unit_refuses_nan_for_integers() -> None:
    with pytest.raises(ValueError, match="non-finite.*uint8"):
        from_unit(np.array([0.1, np.nan]), np.uint8, (0, 255))


def test_scaling_validates_range() -> None:
    with pytest.raises(ConfigError, match=r"\(1.0, 1.0\) needs LO < HI"):
        to_unit(np.zeros(3), (1.0, 1.0))


# ----------------------------------------------------------------------------- band groups


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [(0, 0, 0)]),
        (2, [(0, 1, 1)]),
        (3, [(0, 1, 2)]),
        (4, [(0, 1, 2), (3, 3, 3)]),
        (5, [(0, 1, 2), (3, 4, 4)]),
        (6, [(0, 1, 2), (3, 4, 5)]),
    ],
)
def test_band_groups_all_bands(n: int, expected: list) -> None:
    assert band_groups(n) == expected


@pytest.mark.parametrize(
    ("n", "bands", "expected"),
    [
        (4, (3, 2, 1), [(3, 2, 1)]),
        (4, (3,), [(3, 3, 3)]),
        (6, (5, 0), [(5, 0, 0)]),
        (6, (0, 2, 4, 5), [(0, 2, 4), (5, 5, 5)]),
        (3, (2, 2, 0, 1, 1), [(2, 2, 0), (1, 1, 1)]),
    ],
)
def test_band_groups_explicit(n: int, bands: tuple, expected: list) -> None:
    assert band_groups(n, bands) == expected


@pytest.mark.parametrize(
    ("n", "bands", "match"),
    [
        (3, (0, 3), r"band index 3 is out of range for 3 band\(s\)"),
        (4, (-1,), r"band index -1 is out of range for 4 band\(s\)"),
        (3, (), r"band selection \(\) is empty"),
        (3, (1.0,), "band index 1.0 is not an integer"),
        (0, None, "band count 0 must be a positive integer"),
    ],
)
def test_band_groups_errors(n: int, bands: tuple | None, match: str) -> None:
    with pytest.raises(BandSelectionError, match=match):
        band_groups(n, bands)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9).flatmap(
        lambda n: st.tuples(
            st.just(n), st.none() | st.lists(st.integers(0, n - 1), min_size=1, max_size=8)
        )
    )
)
def test_band_groups_cover_selection_in_order(case: tuple) -> None:
    n, bands = case
    groups = band_groups(n, bands)
    selected = list(range(n)) if bands is None else bands
    flat = [b for g in groups for b in g]
    assert len(groups) == -(-len(selected) // 3)
    assert flat[: len(selected)] == selected
    assert all(b == selected[-1] for b in flat[len(selected) :])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_merge_groups_restores_bands(n: int) -> None:
    arr = np.random.default_rng(n).random((n, 7, 9)).astype(np.float32)
    groups = band_groups(n)
    outputs = [arr[list(g)] for g in groups]  # an identity "model"
    merged = merge_groups(outputs, groups, tuple(range(n)))
    assert merged.dtype == np.float32 and merged.shape == (n, 7, 9)
    np.testing.assert_allclose(merged, arr, rtol=1e-6)


def test_merge_groups_averages_copies() -> None:
    groups = band_groups(1)
    out = np.stack([np.full((2, 3), v, np.float32) for v in (0.0, 0.3, 0.9)])
    merged = merge_groups([out], groups, (0,))
    np.testing.assert_allclose(merged, np.full((1, 2, 3), 0.4), rtol=1e-6)

    groups = band_groups(5)  # band 4 appears twice in (3, 4, 4)
    outs = [np.zeros((3, 2, 2), np.float32), np.stack([np.full((2, 2), v) for v in (3, 4, 6)])]
    merged = merge_groups(outs, groups, (4, 3))
    np.testing.assert_allclose(merged[:, 0, 0], [5.0, 3.0])


def test_merge_groups_with_explicit_bands() -> None:
    arr = np.random.default_rng(3).random((6, 5, 4)).astype(np.float32)
    bands = (5, 1, 2, 0)
    groups = band_groups(6, bands)
    merged = merge_groups([arr[list(g)] for g in groups], groups, bands)
    np.testing.assert_allclose(merged, arr[list(bands)], rtol=1e-6)


@pytest.mark.parametrize(
    ("outputs", "groups", "out_bands", "match"),
    [
        ([np.zeros((3, 2, 2))], [(0, 1, 2), (3, 3, 3)], (0,), r"got 1 group output\(s\) for 2"),
        ([np.zeros((2, 2, 2))], [(0, 1, 2)], (0,), r"group output 0 has shape \(2, 2, 2\)"),
        (
            [np.zeros((3, 2, 2)), np.zeros((3, 4, 2))],
            [(0, 1, 2), (3, 3, 3)],
            (0,),
            r"group output 1 has shape \(3, 4, 2\)",
        ),
        ([np.zeros((3, 2, 2))], [(0, 1, 2)], (0, 4), r"output band 4 is in no band group"),
        ([np.zeros((3, 2, 2))], [(0, 1)], (0,), r"band group \(0, 1\) must have exactly 3"),
        ([np.zeros((3, 2, 2))], [(0, 1, 2)], (), r"out_bands \(\) is empty"),
        ([], [], (0,), "no band groups to merge"),
    ],
)
def test_merge_groups_errors(outputs: list, groups: list, out_bands: tuple, match: str) -> None:
    with pytest.raises(BandSelectionError, match=match):
        merge_groups(outputs, groups, out_bands)


# ---------------------------------------------------------------------------------- nodata


def test_nodata_mask_needs_all_bands() -> None:
    arr = np.ones((3, 4, 5), dtype=np.uint8)
    arr[:, 0, 0] = 0  # all bands nodata
    arr[0, 1, 1] = 0  # one band only: valid
    arr[:2, 2, 2] = 0  # two of three: valid
    mask = nodata_mask(arr, 0)
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert mask.sum() == 1 and mask[0, 0]


def test_nodata_mask_nan_and_none() -> None:
    arr = np.zeros((2, 3, 3), dtype=np.float32)
    arr[:, 1, 2] = np.nan
    arr[0, 0, 0] = np.nan
    np.testing.assert_array_equal(np.argwhere(nodata_mask(arr, float("nan"))), [[1, 2]])
    assert not nodata_mask(arr, None).any()
    assert not nodata_mask(np.zeros((1, 2, 2), np.uint8), float("nan")).any()
    assert not nodata_mask(np.zeros((1, 2, 2), np.uint8), -9999).any()
    assert nodata_mask(np.full((2, 2, 2), -9999, np.int16), -9999.0).all()


def test_nodata_mask_shape_error() -> None:
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        nodata_mask(np.zeros((4, 5)), 0)


def test_nearest_index_rounds_up_at_ties_and_clips() -> None:
    u = np.array([-3.0, -0.5, -0.49, 0.49, 0.5, 1.5, 2.2, 9.0])
    np.testing.assert_array_equal(nearest_index(u, 4), [0, 0, 0, 0, 1, 2, 2, 3])
    assert nearest_index(u, 4).dtype == np.int64
    with pytest.raises(ValueError, match="n=0"):
        nearest_index(u, 0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upsample_mask_integer_scale_is_pixel_replication(scale: int) -> None:
    mask = np.random.default_rng(scale).random((7, 5)) > 0.5
    # output pixel centres in input-pixel units (pixel i centred at i)
    rows = (np.arange(7 * scale) + 0.5) / scale - 0.5
    cols = (np.arange(5 * scale) + 0.5) / scale - 0.5
    up = upsample_mask(mask, rows, cols)
    assert up.shape == (7 * scale, 5 * scale)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(mask, scale, 0), scale, 1))


def test_upsample_mask_window_and_errors() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[2, 5] = True
    up = upsample_mask(mask, np.array([1.9, 2.4, 3.7]), np.array([4.6, 5.2, 7.0]))
    np.testing.assert_array_equal(up, [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"shape \(1, 4, 6\)"):
        upsample_mask(mask[None], np.zeros(2), np.zeros(2))
