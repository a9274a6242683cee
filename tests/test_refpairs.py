"""Reference pairs for TTSR training: synthetic views (GT excluded) and co-registered rasters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import make_gt as make_gt_job
from pipeline.errors import ConfigError
from pipeline.gt import GTConfig, decode_array, make_gt, shard_paths
from pipeline.gt.refpairs import (
    ViewParams,
    raster_window,
    relight,
    rotated_square,
    sample_view,
    squares_disjoint,
    synth_view,
    write_overlap_pair,
)

CRS = "EPSG:32633"


def _ramp(h: int, w: int) -> np.ndarray:
    """``(2, H, W)``: channel 0 = x, channel 1 = y of the pixel centre (torch's bicubic,
    a = -0.75, reproduces a ramp to within a few hundredths of a pixel)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return np.stack([xx / w, yy / h])


def _texture(h: int, w: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.3 * np.sin(xx / 2.3 + seed) * np.cos(yy / 3.7)
    return np.clip(base[None] + rng.normal(0, 0.05, (c, h, w)), 0, 1)


def _table(out: Path) -> dict:
    return pq.read_table(shard_paths(str(out))).to_pydict()


# ------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("angle", [0.0, 17.0, -33.0, 90.0])
@pytest.mark.parametrize("zoom", [0.8, 1.0, 1.25])
def test_sample_view_and_rotated_square_share_one_geometry(angle, zoom):
    h, w, r = 120, 140, 16
    center = (61.3, 70.9)
    view = sample_view(_ramp(h, w), center, zoom, angle, r)
    corners = rotated_square(center, r * zoom, angle)
    # the view's corner pixel centres lie half a (zoomed) pixel inside the footprint corners
    inset = (r - 1) / r
    for (i, j), k in (((0, 0), 0), ((0, r - 1), 1), ((r - 1, r - 1), 2), ((r - 1, 0), 3)):
        y = center[0] + inset * (corners[k][0] - center[0])
        x = center[1] + inset * (corners[k][1] - center[1])
        assert view[0, i, j] * w == pytest.approx(x, abs=0.05)   # a sign error moves pixels
        assert view[1, i, j] * h == pytest.approx(y, abs=0.05)


def test_squares_disjoint_separating_axis():
    box = np.array([(10, 10), (10, 20), (20, 20), (20, 10)], dtype=float)
    assert not squares_disjoint(box, rotated_square((15, 15), 4, 30))       # inside
    assert not squares_disjoint(box, rotated_square((15, 22), 6, 0))        # overlapping
    assert squares_disjoint(box, rotated_square((15, 30), 6, 0))            # apart
    # a diamond near the corner: bounding boxes overlap, the shapes do not
    assert squares_disjoint(box, rotated_square((23.5, 23.5), 6, 45))
    assert not squares_disjoint(box, rotated_square((15, 23), 6, 0), gap=2.0)  # 1 px apart


def test_synth_view_never_sees_the_excluded_window_or_nodata():
    h, w = 150, 170
    img = _texture(h, w, 3, 1)
    img[0] = 0.0
    exclude = (40, 80, 60, 100)
    img[0, 40:80, 60:100] = 1.0          # marker inside the GT window
    invalid = np.zeros((h, w), bool)
    invalid[120:, :] = True              # nodata rows
    img[2] = 0.0
    img[2, 120:, :] = 1.0                # marker under the nodata
    params = ViewParams(tries=200)
    found = 0
    for seed in range(40):
        out = synth_view(img, exclude, 32, params, np.random.default_rng(seed), invalid=invalid)
        if out is None:
            continue
        found += 1
        view, info = out
        assert view.shape == (3, 32, 32) and 0.0 <= view.min() and view.max() <= 1.0
        assert view[0].max() == 0.0, info          # exactly nothing from the GT window
        foot = rotated_square(tuple(info["center"]), 32 * info["zoom"], info["angle"])
        assert view[2].max() == 0.0, info          # nor from nodata
        assert foot[:, 0].max() < 120 and foot.min() > 0 and foot[:, 1].max() < w
        ex = np.array([(40, 60), (40, 100), (80, 100), (80, 60)], float)
        assert squares_disjoint(foot, ex, gap=2.0)
        assert params.zoom[0] <= info["zoom"] <= params.zoom[1]
        assert params.angle[0] <= info["angle"] <= params.angle[1]
    assert found >= 35


def test_synth_view_is_seeded_relit_and_gives_up_when_there_is_no_room():
    img = _texture(100, 100, 3, 2)
    a = synth_view(img, (0, 10, 0, 10), 24, ViewParams(), np.random.default_rng(5))
    b = synth_view(img, (0, 10, 0, 10), 24, ViewParams(), np.random.default_rng(5))
    assert a is not None and b is not None
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    # a view as big as the image cannot avoid the GT window
    assert synth_view(img, (40, 60, 40, 60), 90, ViewParams(tries=10),
                      np.random.default_rng(0)) is None
    x = np.full((2, 2, 2), 0.25)
    np.testing.assert_allclose(relight(x, 2.0, 0.5, [1.0, 0.5]),
                               np.stack([np.full((2, 2), 1.0), np.full((2, 2), 0.5)]))


@pytest.mark.parametrize("kw, match", [
    (dict(zoom=(1.2, 1.1)), "zoom"),
    (dict(angle=(-200, 0)), "angle"),
    (dict(gain=(0, 1)), "gain"),
    (dict(tries=0), "tries"),
    (dict(gamma="x"), "gamma"),
])
def test_view_params_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        ViewParams(**kw)


def test_raster_window_centres_on_the_gt_footprint():
    # reference raster: 2 m pixels, origin (1000, 5000); GT crop: 1 m pixels
    ref_t = (2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)
    hr_t = (1.0, 0.0, 1100.0, 0.0, -1.0, 4900.0)   # crop centre (1116, 4884) for a 32 px crop
    win = raster_window(hr_t, 32, ref_t, (200, 200), 16)
    assert win == (50, 66, 50, 66)                 # centre col (1116-1000)/2 = 58, row 58
    assert raster_window(hr_t, 32, ref_t, (200, 200), 16, shift=(3, -2)) == (53, 69, 48, 64)
    assert raster_window(hr_t, 32, ref_t, (60, 200), 16) is None   # leaves the raster
    with pytest.raises(ConfigError, match="not invertible"):
        raster_window(hr_t, 32, (0, 0, 0, 0, 0, 0), (10, 10), 4)


# ----------------------------------------------------------------------- overlapping rasters


@pytest.fixture()
def rgbn(tmp_path: Path) -> Path:
    import rasterio
    from rasterio.transform import Affine

    path = tmp_path / "rgbn.tif"
    img = (_texture(120, 200, 4, 3) * 250 + 1).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=200, height=120, count=4, dtype="uint8",
                       crs=CRS, transform=Affine(5.0, 0, 600000.0, 0, -5.0, 5200000.0),
                       nodata=0) as ds:
        ds.write(img)
    return path


def test_overlap_pair_is_coregistered_with_other_bands(rgbn, tmp_path):
    import rasterio

    a, b = write_overlap_pair(str(rgbn), str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                              split=0.7, bands_a=(0, 1, 2), bands_b=(3, 0, 1))
    with rasterio.open(rgbn) as s, rasterio.open(a) as da, rasterio.open(b) as db:
        full = s.read()
        assert (da.width, db.width) == (140, 140) and da.count == db.count == 3
        assert da.crs == db.crs == s.crs and db.nodata == 0
        np.testing.assert_array_equal(da.read(), full[:3, :, :140])
        np.testing.assert_array_equal(db.read(), full[[3, 0, 1], :, 60:])
        assert db.transform.c == s.transform.c + 60 * 5.0
    with pytest.raises(ConfigError, match="exists"):
        write_overlap_pair(str(rgbn), a, str(tmp_path / "c.tif"))
    with pytest.raises(ConfigError, match="split"):
        write_overlap_pair(str(rgbn), str(tmp_path / "d.tif"), str(tmp_path / "e.tif"), split=0.4)
    with pytest.raises(ConfigError, match="bands_b"):
        write_overlap_pair(str(rgbn), str(tmp_path / "d.tif"), str(tmp_path / "e.tif"),
                           bands_b=(4,))


# ------------------------------------------------------------------------------ GT job


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("ref_png")
    for i in range(2):
        arr = (_texture(110, 130, 3, i) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(arr).save(root / f"im{i}.png")
    return root


def _ref_cfg(inputs, out, **kw) -> GTConfig:
    base = dict(patch=24, stride=24, lr_size=6, scales=(4.0,), scale_range=None,
                reference="view", ref_size=20, patches_per_shard=8)
    base.update(kw)
    return GTConfig(inputs=tuple(map(str, inputs)), output=str(out), **base)


def test_gt_view_references_exclude_the_gt_and_are_deterministic(pngs, tmp_path):
    s1 = make_gt(_ref_cfg([pngs], tmp_path / "g1"), workers=0)
    s2 = make_gt(_ref_cfg([pngs], tmp_path / "g2"), workers=0)
    assert s1["samples"] > 10 and s1["samples"] + s1["skipped_no_reference"] == s1["patches"]
    t = _table(tmp_path / "g1")
    assert [pq.read_table(p).to_pydict()["ref"] for p in shard_paths(str(tmp_path / "g1"))] == \
        [pq.read_table(p).to_pydict()["ref"] for p in shard_paths(str(tmp_path / "g2"))]
    assert s2["samples"] == s1["samples"]
    for i in range(len(t["ref"])):
        ref = decode_array(t["ref"][i], t["ref_shape"][i], t["ref_dtype"][i])
        hr = decode_array(t["hr"][i], t["hr_shape"][i], t["hr_dtype"][i])
        assert ref.shape == (3, 20, 20) and ref.dtype == hr.dtype == np.uint8
        assert hr.shape == (3, 24, 24) and t["lr_shape"][i] == [3, 6, 6]
        assert t["ref_kind"][i] == "view" and t["ref_uri"][i] == t["source_uri"][i]
        info = json.loads(t["ref_params"][i])
        r0, r1, c0, c1 = t["window"][i]
        foot = rotated_square(tuple(info["center"]), 20 * info["zoom"], info["angle"])
        gt = np.array([(r0, c0), (r0, c1), (r1, c1), (r1, c0)], float)
        assert squares_disjoint(foot, gt, gap=2.0)   # in source pixels: the GT is excluded
    other = make_gt(_ref_cfg([pngs], tmp_path / "g3", seed=1), workers=0)
    assert other["samples"] > 0
    assert _table(tmp_path / "g3")["ref"] != t["ref"]


def test_gt_without_reference_has_null_reference_columns(pngs, tmp_path):
    make_gt(GTConfig(inputs=(str(pngs),), output=str(tmp_path / "g"), patch=24, lr_size=6,
                     scales=(2.0,), scale_range=None), workers=0)
    t = _table(tmp_path / "g")
    assert t["ref"] and all(v is None for v in t["ref"]) and all(v is None for v in t["ref_kind"])


def test_gt_raster_references_are_the_coregistered_window(rgbn, tmp_path):
    import rasterio

    a, b = write_overlap_pair(str(rgbn), str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                              split=0.7, bands_a=(0, 1, 2), bands_b=(3, 0, 1))
    cfg = GTConfig(inputs=(a,), output=str(tmp_path / "g"), patch=24, stride=24, lr_size=6,
                   scales=(4.0,), scale_range=None, reference_input=b, ref_size=16, ref_shift=2)
    s = make_gt(cfg, workers=0)
    assert s["samples"] > 0 and s["skipped_no_reference"] > 0   # left part has no reference
    t = _table(tmp_path / "g")
    with rasterio.open(b) as db:
        bimg = db.read()
        for i in range(len(t["ref"])):
            ref = decode_array(t["ref"][i], t["ref_shape"][i], t["ref_dtype"][i])
            r0, r1, c0, c1 = t["ref_window"][i]
            np.testing.assert_array_equal(ref, bimg[:, r0:r1, c0:c1])
            shift = json.loads(t["ref_params"][i])["shift"]
            assert max(abs(v) for v in shift) <= 2
            # the window centre (unshifted) is the GT crop's centre in B's pixel grid
            gr0, gr1, gc0, gc1 = t["window"][i]
            assert (r0 + r1) / 2 - shift[0] == pytest.approx((gr0 + gr1) / 2, abs=0.5)
            assert (c0 + c1) / 2 - shift[1] == pytest.approx((gc0 + gc1) / 2 - 60, abs=0.5)
            assert t["ref_kind"][i] == "raster" and t["ref_uri"][i] == b


def test_gt_reference_input_must_match_crs_and_bands(rgbn, tmp_path):
    import rasterio
    from rasterio.transform import Affine

    other = tmp_path / "other.tif"
    with rasterio.open(other, "w", driver="GTiff", width=50, height=50, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.1, 0, 10, 0, -0.1, 50)) as ds:
        ds.write(np.ones((3, 50, 50), np.uint8))
    base = dict(output=str(tmp_path / "g"), patch=24, lr_size=6, scales=(4.0,),
                scale_range=None)
    with pytest.raises(ConfigError, match="different CRS"):
        make_gt(GTConfig(inputs=(str(rgbn),), bands=(0, 1, 2), reference_input=str(other),
                         **base), workers=0)
    with pytest.raises(ConfigError, match="must match"):
        make_gt(GTConfig(inputs=(str(rgbn),), reference_input=str(rgbn),
                         reference_bands=(0, 1, 2), **base), workers=0)


@pytest.mark.parametrize("kw, match", [
    (dict(scales=(2.0,)), "x4"),
    (dict(scales=(4.0,), scale_range=(1.0, 4.0)), "x4"),
    (dict(ref_size=18), "multiple of 4"),
    (dict(ref_size=8), "multiple of 4"),
    (dict(reference="other"), "is not 'view'"),
    (dict(reference_input="x.tif"), "not both"),
    (dict(reference=None, reference_input="x.tif", ref_shift=-1), "ref_shift"),
])
def test_reference_config_errors(kw, match, tmp_path):
    base = dict(inputs=("x",), output=str(tmp_path / "o"), patch=24, lr_size=6,
                scales=(4.0,), scale_range=None, reference="view", ref_size=20)
    base.update(kw)
    with pytest.raises(ConfigError, match=match):
        GTConfig(**base)


def test_make_gt_cli_reference_flags(pngs, tmp_path, capsys):
    rc = make_gt_job.main(["--input", str(pngs), "--output", str(tmp_path / "g"), "--patch", "24",
                           "--lr-size", "6", "--scales", "4", "--reference", "view",
                           "--ref-size", "20", "--workers", "0"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] > 0
    with pytest.raises(SystemExit) as e:
        make_gt_job.main(["--input", str(pngs), "--output", str(tmp_path / "h"), "--patch", "24",
                          "--lr-size", "6", "--scales", "2", "--reference", "view",
                          "--workers", "0"])
    assert e.value.code == 2
    assert "x4" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
    assert math.isfinite(summary["seconds"])
