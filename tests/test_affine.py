"""pipeline.geometry.affine against rasterio.Affine arithmetic."""

from __future__ import annotations

import pytest
from rasterio.transform import Affine, array_bounds

from pipeline.geometry.affine import as_transform, bounds, scaled_transform, window_transform

# north-up UTM-like, and a rotated/sheared one
TRANSFORMS = [
    (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0),
    (0.5, 0.1, -73.25, -0.2, -0.5, 40.75),
]
SHAPES = [((37, 53), (74, 106)), ((37, 53), (111, 212)), ((37, 53), (50, 61)), ((5, 7), (5, 7))]


@pytest.mark.parametrize("t", TRANSFORMS)
@pytest.mark.parametrize(("in_shape", "out_shape"), SHAPES)
def test_scaled_transform_matches_affine(t, in_shape, out_shape):
    (h, w), (big_h, big_w) = in_shape, out_shape
    expected = Affine(*t) @ Affine.scale(w / big_w, h / big_h)
    got = scaled_transform(t, in_shape, out_shape)
    assert got == pytest.approx(tuple(expected)[:6], rel=1e-12, abs=1e-9)
    # top-left corner unchanged, bottom-right corner maps to the input's bottom-right
    assert Affine(*got) @ (0, 0) == pytest.approx(Affine(*t) @ (0, 0))
    assert Affine(*got) @ (big_w, big_h) == pytest.approx(Affine(*t) @ (w, h))


@pytest.mark.parametrize(("in_shape", "out_shape"), SHAPES)
def test_output_bounds_equal_input_bounds(in_shape, out_shape):
    t = TRANSFORMS[0]
    out_t = scaled_transform(t, in_shape, out_shape)
    assert bounds(out_t, out_shape) == pytest.approx(bounds(t, in_shape))
    assert bounds(out_t, out_shape) == pytest.approx(array_bounds(*out_shape, Affine(*out_t)))


def test_bounds_of_rotated_transform_enclose_all_corners():
    t = TRANSFORMS[1]
    left, bottom, right, top = bounds(t, (37, 53))
    for col, row in ((0, 0), (53, 0), (0, 37), (53, 37)):
        x, y = Affine(*t) @ (col, row)
        assert left <= x <= right and bottom <= y <= top


@pytest.mark.parametrize("t", TRANSFORMS)
@pytest.mark.parametrize(("row0", "col0"), [(0, 0), (16, 48), (35, 3)])
def test_window_transform_matches_affine_translation(t, row0, col0):
    expected = Affine(*t) @ Affine.translation(col0, row0)
    assert window_transform(t, row0, col0) == pytest.approx(tuple(expected)[:6])
    # pixel (0, 0) of the window is pixel (col0, row0) of the raster
    assert Affine(*window_transform(t, row0, col0)) @ (0, 0) == pytest.approx(
        Affine(*t) @ (col0, row0)
    )


def test_as_transform_accepts_affine_and_nine_tuple():
    a = Affine(*TRANSFORMS[0])
    assert as_transform(a) == TRANSFORMS[0]  # Affine iterates 9 values
    assert as_transform(list(TRANSFORMS[1])) == TRANSFORMS[1]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ((1.0, 0.0, 0.0, 0.0, -1.0), "6 elements"),
        ((1, 0, 0, 0, -1, 0, 0, 1, 1), "end with 0, 0, 1"),
        ((1, 0, float("nan"), 0, -1, 0), "finite"),
        ("abcdef", "6 numbers"),
        (None, "6 numbers"),
    ],
)
def test_as_transform_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        as_transform(bad)


@pytest.mark.parametrize("shape", [(0, 5), (5, -1), (2.5, 3), (1, 2, 3)])
def test_scaled_transform_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="positive integers"):
        scaled_transform(TRANSFORMS[0], shape, (10, 10))
    with pytest.raises(ValueError, match="positive integers"):
        scaled_transform(TRANSFORMS[0], (10, 10), shape)
