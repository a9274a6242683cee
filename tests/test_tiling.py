"""Property and example tests for pipeline.geometry.tiling (pure geometry, no torch/ray)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry.tiling import (
    InvalidParameterError,
    InvalidScaleError,
    InvalidShapeError,
    InvalidWindowError,
    OutputTooLargeError,
    Tile,
    TileIndexError,
    TilePlan,
    TileSizeError,
    TilingError,
    Window,
    check_output_size,
    default_tile_for,
    input_range,
    out_size_for_scale,
    output_positions,
    plan_tiles,
    scale_of,
)

FAST = settings(deadline=None, max_examples=200)
MAX_OUT = 520  # largest output side in property tests (keeps coverage arrays cheap)


def exact_floor_u(n_in: int, n_out: int, j: int) -> int:
    """floor(u_j) in exact rational arithmetic: u_j = (2j + 1) n_in / (2 n_out) - 1/2."""
    return math.floor(Fraction((2 * j + 1) * n_in, 2 * n_out) - Fraction(1, 2))


def needed_latents(n_in: int, n_out: int, j: int, halo: int) -> tuple[int, int]:
    """Inclusive input range output pixel j depends on (exact), clamped to the image."""
    f = exact_floor_u(n_in, n_out, j)
    return max(0, f - 1 - halo), min(n_in - 1, f + 1 + halo)


@st.composite
def sizes(draw: st.DrawFn) -> tuple[tuple[int, int], tuple[int, int]]:
    """(in_shape, out_shape): via a random non-integer/anisotropic scale, or exact out sizes."""
    if draw(st.booleans()):
        scale_y = draw(st.floats(0.3, 31.0, allow_nan=False))
        scale_x = scale_y if draw(st.booleans()) else draw(st.floats(0.3, 31.0, allow_nan=False))
        h = draw(st.integers(1, min(500, max(1, int(MAX_OUT / scale_y)))))
        w = draw(st.integers(1, min(500, max(1, int(MAX_OUT / scale_x)))))
        scale = scale_y if scale_x == scale_y else (scale_y, scale_x)
        return (h, w), out_size_for_scale((h, w), scale)
    h, w = draw(st.integers(1, 500)), draw(st.integers(1, 500))
    return (h, w), (draw(st.integers(1, MAX_OUT)), draw(st.integers(1, MAX_OUT)))


@st.composite
def plans(draw: st.DrawFn) -> TilePlan:
    """Random plans; tiles often do not divide the image and may exceed it."""
    in_shape, out_shape = draw(sizes())
    halo = draw(st.integers(0, 140))
    cy, cx = draw(st.integers(16, 128)), draw(st.integers(16, 128))
    ty, tx = cy * draw(st.integers(1, 4)), cx * draw(st.integers(1, 4))
    if draw(st.booleans()):
        return plan_tiles(in_shape, out_shape, tile=ty, halo=halo, chunk=cy)
    return plan_tiles(in_shape, out_shape, tile=(ty, tx), halo=halo, chunk=(cy, cx))


# --- coordinates --------------------------------------------------------------------------


@given(n_in=st.integers(1, 5000), n_out=st.integers(1, 5000), data=st.data())
@FAST
def test_positions_match_minus_one_one_convention(n_in: int, n_out: int, data: st.DataObject):
    start = data.draw(st.integers(0, n_out - 1))
    stop = data.draw(st.integers(start, n_out))
    u = output_positions(n_in, n_out, start, stop)
    assert u.dtype == np.float64 and u.shape == (stop - start,)
    j = np.arange(start, stop)
    coord = -1 + (2 * j + 1) / n_out
    np.testing.assert_allclose(u, (coord + 1) * n_in / 2 - 0.5, rtol=0, atol=1e-9)


def test_positions_spot_values():
    # x2: centres at -0.25, 0.25, 0.75, ...; x1: identity; x0.5: 0.5, 2.5
    np.testing.assert_array_equal(
        output_positions(3, 6, 0, 6), [-0.25, 0.25, 0.75, 1.25, 1.75, 2.25]
    )
    np.testing.assert_array_equal(output_positions(5, 5, 0, 5), np.arange(5.0))
    np.testing.assert_array_equal(output_positions(4, 2, 0, 2), [0.5, 2.5])
    np.testing.assert_allclose(output_positions(7, 3, 1, 2), [1.5 * 7 / 3 - 0.5], atol=1e-12)
    assert output_positions(4, 8, 3, 3).shape == (0,)


@given(n_in=st.integers(1, 3000), n_out=st.integers(1, 3000))
@FAST
def test_positions_monotone_and_symmetric(n_in: int, n_out: int):
    u = output_positions(n_in, n_out, 0, n_out)
    assert np.all(np.diff(u) > 0)
    np.testing.assert_allclose(u + u[::-1], n_in - 1, atol=1e-9)
    assert u[0] >= -0.5 and u[-1] <= n_in - 0.5


@given(
    n_in=st.integers(1, 4000),
    n_out=st.integers(1, 4000),
    halo=st.integers(0, 150),
    data=st.data(),
)
@FAST
def test_input_range_contains_needed_latents_and_is_tight(
    n_in: int, n_out: int, halo: int, data: st.DataObject
):
    start = data.draw(st.integers(0, n_out - 1))
    stop = data.draw(st.integers(start + 1, n_out))
    a0, a1 = input_range(n_in, n_out, start, stop, halo)
    assert 0 <= a0 < a1 <= n_in
    lo, _ = needed_latents(n_in, n_out, start, halo)
    _, hi = needed_latents(n_in, n_out, stop - 1, halo)
    assert a0 <= lo and hi < a1
    # Never more than the safety margin (+1 for float rounding of floor) beyond what is needed.
    assert a0 >= lo - 2 and a1 - 1 <= hi + 2


def test_input_range_examples():
    # x2, output pixels [0, 4): u = -0.25 .. 1.25, floors -1 .. 1; halo 3 -> [-6, 6] clamped
    assert input_range(100, 200, 0, 4, 3) == (0, 7)
    # interior: u_100 = 49.75, u_109 = 54.25 -> [49 - 5, 54 + 5] = [44, 59]
    assert input_range(100, 200, 100, 110, 3) == (44, 60)
    # right border clamps to the image
    assert input_range(100, 200, 190, 200, 3) == (89, 100)
    assert input_range(1, 1, 0, 1, 36) == (0, 1)


# --- plans --------------------------------------------------------------------------------


@given(plan=plans())
@FAST
def test_every_output_pixel_covered_exactly_once(plan: TilePlan):
    count = np.zeros(plan.out_shape, dtype=np.int32)
    for t in plan.tiles():
        count[t.out_window.slices()] += 1
    assert np.all(count == 1)


@given(plan=plans())
@FAST
def test_windows_inside_image_and_chunk_aligned(plan: TilePlan):
    (h, w), (oh, ow) = plan.in_shape, plan.out_shape
    (th, tw), (ch, cw) = plan.tile_shape, plan.chunk_shape
    image, out_image = Window(0, h, 0, w), Window(0, oh, 0, ow)
    gy, gx = plan.grid_shape
    assert (gy, gx) == (math.ceil(oh / th), math.ceil(ow / tw))
    tiles = plan.tiles()
    assert len(tiles) == len(plan) == gy * gx
    assert [t.index for t in tiles] == [(y, x) for y in range(gy) for x in range(gx)]
    assert len({t.key for t in tiles}) == len(tiles)
    for t in tiles:
        assert image.contains(t.in_window) and t.in_window.size > 0
        assert out_image.contains(t.out_window) and t.out_window.size > 0
        o = t.out_window
        assert o.row0 == t.index[0] * th and o.col0 == t.index[1] * tw
        assert o.row0 % ch == 0 and o.col0 % cw == 0
        assert o.row1 % ch == 0 or o.row1 == oh
        assert o.col1 % cw == 0 or o.col1 == ow
        assert o.shape[0] <= th and o.shape[1] <= tw
        assert plan.tile(*t.index) == t


@given(plan=plans())
@FAST
def test_in_window_holds_every_needed_latent(plan: TilePlan):
    (h, w), (oh, ow), halo = plan.in_shape, plan.out_shape, plan.halo
    # exact (rational) needed input ranges for every output row and column
    rows = np.array([needed_latents(h, oh, r, halo) for r in range(oh)])
    cols = np.array([needed_latents(w, ow, c, halo) for c in range(ow)])
    for t in plan.tiles():
        o, i = t.out_window, t.in_window
        # output pixels on the tile's boundary rows (every column) and boundary cols (every row)
        for r in (o.row0, o.row1 - 1):
            assert i.row0 <= rows[r, 0] and rows[r, 1] < i.row1
            assert (
                i.col0 <= cols[o.col0 : o.col1, 0].min() and cols[o.col0 : o.col1, 1].max() < i.col1
            )
        for c in (o.col0, o.col1 - 1):
            assert i.col0 <= cols[c, 0] and cols[c, 1] < i.col1
            assert (
                i.row0 <= rows[o.row0 : o.row1, 0].min() and rows[o.row0 : o.row1, 1].max() < i.row1
            )


@given(plan=plans())
@FAST
def test_local_positions_lie_in_window(plan: TilePlan):
    t = plan.tile(plan.grid_shape[0] - 1, plan.grid_shape[1] - 1)
    uy, ux = plan.local_positions(t)
    o, i = t.out_window, t.in_window
    np.testing.assert_array_equal(
        uy, output_positions(plan.in_shape[0], plan.out_shape[0], o.row0, o.row1) - i.row0
    )
    np.testing.assert_array_equal(
        ux, output_positions(plan.in_shape[1], plan.out_shape[1], o.col0, o.col1) - i.col0
    )
    assert uy.shape == (o.shape[0],) and ux.shape == (o.shape[1],)
    assert uy.min() >= -0.5 and uy.max() <= i.shape[0] - 0.5
    assert ux.min() >= -0.5 and ux.max() <= i.shape[1] - 0.5


@given(plan=plans())
@FAST
def test_stats_match_brute_force(plan: TilePlan):
    (h, w), (oh, ow) = plan.in_shape, plan.out_shape

    def footprint(n_in: int, n_out: int, j0: int, j1: int) -> int:
        lo = math.floor((j0 + 0.5) * (n_in / n_out) - 0.5 + 0.5)
        hi = math.floor((j1 - 1 + 0.5) * (n_in / n_out) - 0.5 + 0.5)
        return min(hi, n_in - 1) - max(lo, 0) + 1

    tiles = plan.tiles()
    computed = sum(t.in_window.size for t in tiles)
    useful = sum(
        footprint(h, oh, t.out_window.row0, t.out_window.row1)
        * footprint(w, ow, t.out_window.col0, t.out_window.col1)
        for t in tiles
    )
    s = plan.stats()
    assert s["computed_input_pixels"] == computed
    assert s["useful_input_pixels"] == useful
    assert 0 < useful <= computed
    assert s["useful_fraction"] == pytest.approx(useful / computed)
    assert s["tiles"] == len(tiles) and s["output_pixels"] == oh * ow
    json.dumps(s)


def test_image_smaller_than_one_tile():
    plan = plan_tiles((37, 53), (93, 133), tile=512, halo=36, chunk=128)
    assert plan.grid_shape == (1, 1) and len(plan) == 1
    (t,) = plan.tiles()
    assert t.out_window == Window(0, 93, 0, 133)
    assert t.in_window == Window(0, 37, 0, 53)
    assert plan.stats()["useful_fraction"] == 1.0


def test_partial_last_tile_and_anisotropic_example():
    plan = plan_tiles((37, 53), (100, 150), tile=(64, 96), halo=3, chunk=(32, 48))
    assert plan.grid_shape == (2, 2)
    t = plan.tile(1, 1)
    assert t.key == "1_1"
    assert t.out_window == Window(64, 100, 96, 150)
    # rows: u_64 = 64.5*0.37-0.5 = 23.365 -> 23 - 5 = 18; cols: u_96 = 96.5*53/150-0.5 -> 33 - 5
    assert t.in_window == Window(18, 37, 28, 53)


def test_default_tile_reaches_target_on_interior_tiles():
    def footprint(n_in: int, n_out: int, j0: int, j1: int) -> int:
        return math.floor((j1 - 0.5) * n_in / n_out) - math.floor((j0 + 0.5) * n_in / n_out) + 1

    for halo, scale in [(36, 2.0), (36, 3.7), (36, (2.0, 4.0)), (10, 0.5)]:
        tile = default_tile_for(halo, scale)
        assert tile % 256 == 0 and tile < 4096
        in_shape = (4 * 4096, 4 * 4096)
        out_shape = out_size_for_scale(in_shape, scale)
        plan = plan_tiles(in_shape, out_shape, tile=tile, halo=halo, chunk=256)
        o, i = plan.tile(1, 1).out_window, plan.tile(1, 1).in_window
        useful = footprint(in_shape[0], out_shape[0], o.row0, o.row1) * footprint(
            in_shape[1], out_shape[1], o.col0, o.col1
        )
        assert useful / i.size >= 0.85 - 0.01


@given(
    halo=st.integers(0, 200),
    sy=st.floats(0.3, 31.0),
    sx=st.floats(0.3, 31.0),
    chunk=st.integers(1, 512),
    max_mult=st.integers(1, 40),
    target=st.floats(0.05, 0.99),
)
@FAST
def test_default_tile_is_smallest_meeting_target(
    halo: int, sy: float, sx: float, chunk: int, max_mult: int, target: float
):
    max_tile = chunk * max_mult + (chunk // 2)  # not a multiple: rounded down

    def approx(t: int) -> float:
        pad = 2 * (halo + 2)
        return (t / sy) / (t / sy + pad) * (t / sx) / (t / sx + pad)

    t = default_tile_for(halo, (sy, sx), target_useful=target, chunk=chunk, max_tile=max_tile)
    assert t % chunk == 0 and chunk <= t <= max_tile
    if approx(t) >= target:
        assert t == chunk or approx(t - chunk) < target
    else:
        assert t == chunk * max_mult
    if sy == sx:
        assert default_tile_for(halo, sy, target_useful=target, chunk=chunk, max_tile=max_tile) == t


def test_default_tile_examples():
    # EDSR-baseline x4: needs t_in >= ~898 input px -> 3840 output px
    assert default_tile_for(36, 4) == 3840
    assert default_tile_for(36, 2) == 2048
    # RDN x4 cannot reach 0.85 under 4096
    assert default_tile_for(133, 4) == 4096
    assert default_tile_for(0, 1, chunk=64) == 64


# --- sizes --------------------------------------------------------------------------------


def test_out_size_for_scale_examples():
    assert out_size_for_scale((10, 10), 2) == (20, 20)
    assert out_size_for_scale((7, 5), 2.5) == (18, 13)
    assert out_size_for_scale((7, 5), (2.5, 0.5)) == (18, 3)
    assert out_size_for_scale((1, 1), 0.3) == (1, 1)
    assert out_size_for_scale((3, 3), np.float32(0.3)) == (1, 1)
    assert out_size_for_scale((np.int64(4), 4), [1.5, 3]) == (6, 12)
    assert scale_of((10, 20), (25, 10)) == (2.5, 0.5)


@given(
    h=st.integers(1, 10_000),
    w=st.integers(1, 10_000),
    sy=st.floats(0.01, 50.0),
    sx=st.floats(0.01, 50.0),
)
@FAST
def test_out_size_rounds_to_nearest(h: int, w: int, sy: float, sx: float):
    oh, ow = out_size_for_scale((h, w), (sy, sx))
    assert oh == max(1, math.floor(h * sy + 0.5)) and ow == max(1, math.floor(w * sx + 0.5))
    assert oh >= 1 and ow >= 1
    assert abs(oh - h * sy) <= 0.5 + 1e-9 or oh == 1
    ey, ex = scale_of((h, w), (oh, ow))
    assert ey == oh / h and ex == ow / w


def test_check_output_size():
    check_output_size((1000, 1000), 1_000_000)
    with pytest.raises(OutputTooLargeError, match=re.escape("1000 x 1001 = 1,001,000 pixels")) as e:
        check_output_size((1000, 1001), 1_000_000)
    assert "1,000,000" in str(e.value)
    assert isinstance(e.value, ValueError)


# --- windows and tiles --------------------------------------------------------------------


def test_window_basics():
    w = Window(2, 5, 1, 4)
    assert w.shape == (3, 3) and w.size == 9
    a = np.arange(60).reshape(6, 10)
    assert a[w.slices()].shape == (3, 3) and a[w.slices()][0, 0] == 21
    assert Window(np.int64(1), 2, 3, 4).to_dict() == {"row0": 1, "row1": 2, "col0": 3, "col1": 4}
    assert type(Window(np.int64(1), 2, 3, 4).row0) is int
    assert Window(3, 3, 0, 5).size == 0
    assert w.relative_to(Window(1, 6, 0, 10)) == Window(1, 4, 1, 4)
    with pytest.raises(InvalidWindowError, match="is not inside"):
        w.relative_to(Window(3, 6, 0, 10))


windows = st.builds(
    lambda r0, dr, c0, dc: Window(r0, r0 + dr, c0, c0 + dc),
    st.integers(0, 12),
    st.integers(0, 8),
    st.integers(0, 12),
    st.integers(0, 8),
)


@given(a=windows, b=windows)
@FAST
def test_window_intersect_and_contains_match_masks(a: Window, b: Window):
    def mask(w: Window) -> np.ndarray:
        m = np.zeros((24, 24), dtype=bool)
        m[w.slices()] = True
        return m

    ma, mb = mask(a), mask(b)
    inter = a.intersect(b)
    if (ma & mb).any():
        assert inter is not None and np.array_equal(mask(inter), ma & mb)
        assert a.contains(inter) and b.contains(inter)
        assert inter == b.intersect(a)
    else:
        assert inter is None
    if a.size and b.size:
        assert a.contains(b) == bool(not (mb & ~ma).any())
    assert Window.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_tile_and_plan_serialisation_round_trip():
    plan = plan_tiles((37, 53), (111, 80), tile=(64, 32), halo=5, chunk=(32, 16))
    t = plan.tile(1, 2)
    assert t.key == "1_2"
    assert Tile.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert TilePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan_tiles((37, 53), (111, 80), tile=64, halo=5).chunk_shape == (64, 64)
    assert hash(plan) == hash(TilePlan.from_dict(plan.to_dict()))


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "shown"),
    [
        (0, "0"),
        (-2.0, "-2.0"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ("2", "'2'"),
        (True, "True"),
        (None, "None"),
        ((2.0, 0.0), "0.0"),
        ((2.0, 3.0, 4.0), "3 values"),
    ],
)
def test_bad_scales_rejected(scale: object, shown: str):
    with pytest.raises(InvalidScaleError, match=re.escape(shown)) as e:
        out_size_for_scale((10, 10), scale)
    assert isinstance(e.value, ValueError)
    assert "> 0" in str(e.value) or "pair" in str(e.value)
    with pytest.raises(InvalidScaleError, match=re.escape(shown)):
        default_tile_for(36, scale)


def test_scale_overflow_rejected():
    with pytest.raises(InvalidScaleError, match="overflows"):
        out_size_for_scale((10, 10), 1e308)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(tile=96, chunk=64), TileSizeError, "tile 96 is not a multiple of chunk 64"),
        (
            dict(tile=(64, 100), chunk=(32, 32)),
            TileSizeError,
            "tile 100 is not a multiple of chunk 32",
        ),
        (dict(tile=0), TileSizeError, "tile must be an integer >= 1, got 0"),
        (dict(tile=-64, chunk=64), TileSizeError, "got -64"),
        (dict(tile=64.0), TileSizeError, "got 64.0"),
        (dict(tile=64, chunk=0), TileSizeError, "chunk must be an integer >= 1, got 0"),
        (dict(tile=(64, 64, 64)), TileSizeError, "pair"),
        (dict(tile=64, halo=-1), InvalidParameterError, "halo must be an integer >= 0, got -1"),
        (dict(tile=64, halo=1.5), InvalidParameterError, "got 1.5"),
        (dict(tile=64, halo=True), InvalidParameterError, "got True"),
    ],
)
def test_bad_plan_parameters_rejected(kwargs: dict, error: type, pattern: str):
    kwargs.setdefault("halo", 4)
    with pytest.raises(error, match=re.escape(pattern)):
        plan_tiles((37, 53), (74, 106), **kwargs)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "pattern"),
    [
        ((0, 10), (10, 10), "in_shape[0] must be an integer >= 1, got 0"),
        ((10, 10), (10, 0), "out_shape[1] must be an integer >= 1, got 0"),
        ((10,), (10, 10), "got (10,)"),
        ((3, 10, 10), (10, 10), "got (3, 10, 10)"),
        ("ab", (10, 10), "got 'ab'"),
        ((10, 10.5), (10, 10), "got 10.5"),
    ],
)
def test_bad_shapes_rejected(in_shape: object, out_shape: object, pattern: str):
    with pytest.raises(InvalidShapeError, match=re.escape(pattern)):
        plan_tiles(in_shape, out_shape, tile=64, halo=2)


def test_other_errors():
    with pytest.raises(InvalidShapeError, match=re.escape("in_shape[0] must be an integer >= 1")):
        out_size_for_scale((0, 4), 2)
    with pytest.raises(InvalidShapeError, match=re.escape("[5, 4)")):
        output_positions(10, 20, 5, 4)
    with pytest.raises(InvalidShapeError, match=re.escape("stop <= n_out=20")):
        output_positions(10, 20, 0, 21)
    with pytest.raises(InvalidShapeError, match="empty"):
        input_range(10, 20, 3, 3, 1)
    with pytest.raises(InvalidParameterError, match="got -3"):
        input_range(10, 20, 0, 3, -3)
    with pytest.raises(InvalidWindowError, match=re.escape("rows [5, 2)")):
        Window(5, 2, 0, 1)
    with pytest.raises(InvalidWindowError, match="col0 must be an integer >= 0, got -1"):
        Window(0, 1, -1, 1)
    with pytest.raises(InvalidWindowError, match="needs keys"):
        Window.from_dict({"row0": 0, "row1": 1, "col0": 0})
    plan = plan_tiles((10, 10), (20, 20), tile=8, halo=1)
    with pytest.raises(TileIndexError, match=re.escape("(3, 0) outside grid of shape (3, 3)")):
        plan.tile(3, 0)
    with pytest.raises(IndexError):
        plan.tile(0, -1)
    with pytest.raises(InvalidParameterError, match="needs keys"):
        TilePlan.from_dict({"in_shape": [1, 1]})
    with pytest.raises(InvalidParameterError, match="target_useful .* got 1.5"):
        default_tile_for(36, 2, target_useful=1.5)
    with pytest.raises(TileSizeError, match="max_tile 128 is smaller than chunk 256"):
        default_tile_for(36, 2, max_tile=128)
    with pytest.raises(InvalidParameterError, match="limit must be an integer >= 1, got 0"):
        check_output_size((10, 10), 0)
    assert issubclass(OutputTooLargeError, ValueError) and issubclass(TilingError, ValueError)


def test_module_imports_no_heavy_dependencies():
    code = (
        "import sys, pipeline.geometry.tiling; "
        "bad = [m for m in ('torch', 'ray', 'zarr', 'rasterio') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
