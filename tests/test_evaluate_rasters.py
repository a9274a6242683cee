"""Evaluation on rasters (held-out windows, bands, nodata, value ranges) and the official x6+ pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import evaluate as evaluate_job
from liif.evaluation import (
    benchmark_pair,
    bicubic_upscale,
    evaluate_images,
    grid_windows,
    official_downsampled_pair,
    unit_pair,
)


def _write_tif(path: Path, data: np.ndarray, nodata: float | None = 0) -> Path:
    import rasterio
    from rasterio.transform import Affine

    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       crs="EPSG:32614", transform=Affine(5, 0, 500000, 0, -5, 5200000),
                       nodata=nodata) as ds:
        ds.write(data)
    return path


def _texture(h: int, w: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.3 * np.sin(xx / 3.1 + seed) * np.cos(yy / 4.3)
    return np.stack([base + 0.05 * k for k in range(c)]) + rng.normal(0, 0.03, (c, h, w))


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-band uint8 scene (nodata corner, a flat strip), a uint16 one, a 1-band one."""
    d = tmp_path_factory.mktemp("rasters")
    u8 = np.clip(_texture(100, 130, 4, 0) * 255, 1, 255).astype(np.uint8)
    u8[:, :40, :40] = 0  # nodata: the top-left 48-px window touches it
    u8[:, 48:100, 0:48] = 120  # flat: the bottom-left window is skipped as flat
    u16 = np.clip(_texture(96, 96, 3, 1) * 10000, 1, 10000).astype(np.uint16)
    grey = np.clip(_texture(48, 96, 1, 2) * 255, 0, 255).astype(np.uint8)
    return {"u8": _write_tif(d / "scene_u8.tif", u8), "u16": _write_tif(d / "scene_u16.tif", u16),
            "grey": _write_tif(d / "grey.tif", grey, nodata=None)}


def test_grid_windows() -> None:
    assert grid_windows((100, 130), 48) == [(0, 48, 0, 48), (0, 48, 48, 96), (48, 96, 0, 48),
                                            (48, 96, 48, 96)]
    assert grid_windows((100, 130), 48, stride=41)[-1] == (41, 89, 82, 130)
    assert grid_windows((100, 130), 48, region=(50, 60, 100, 130)) == [(50, 98, 60, 108)]
    assert grid_windows((100, 130), 40, region=(50, 60, 100, 130)) == [(50, 90, 60, 100)]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="window size"):
            grid_windows((10, 10), bad)
    with pytest.raises(ValueError, match="region"):
        grid_windows((10, 10), 4, region=(0, 0, 11, 10))


def test_official_downsampled_pair_is_pil_on_uint8() -> None:
    """x6+: HR cropped to round(floor(H/s) * s), LR = PIL bicubic of the 8-bit crop, 8-bit."""
    from PIL import Image

    v = torch.arange(256, dtype=torch.float32)
    assert torch.equal(((v / 255) * 255).to(torch.uint8), v.to(torch.uint8))  # ToTensor/ToPILImage
    hr = torch.from_numpy(np.clip(_texture(50, 77, 3, 4) * 255, 0, 255).astype(np.uint8))
    lr, crop = official_downsampled_pair(hr, 6)
    assert lr.shape == (3, 8, 12) and crop.shape == (3, 48, 72)
    pil = Image.fromarray(hr[:, :48, :72].permute(1, 2, 0).numpy()).resize((12, 8), Image.BICUBIC)
    assert torch.equal(lr, torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255)
    assert torch.equal(crop, hr[:, :48, :72].float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        official_downsampled_pair(hr.float(), 6)
    with pytest.raises(ValueError, match="too small for scale 100"):
        official_downsampled_pair(hr, 100)


def test_unit_pair_follows_benchmark_geometry_in_float() -> None:
    hr_u8 = torch.from_numpy(np.clip(_texture(50, 77, 3, 5) * 255, 0, 255).astype(np.uint8))
    for s in (2, 3, 4, 6, 8):
        lr8, hr8 = benchmark_pair(hr_u8, s)
        lrf, hrf = unit_pair(hr_u8.float() / 255, s)
        assert lrf.shape == lr8.shape and torch.equal(hrf, hr8)
        assert (lrf - lr8).abs().max() <= 1.0 / 255 + 1e-6  # only the 8-bit rounding differs
    with pytest.raises(ValueError, match="float"):
        unit_pair(hr_u8, 2)


def test_evaluate_images_u8_and_float_agree() -> None:
    hr = torch.from_numpy(np.clip(_texture(48, 48, 3, 6) * 255, 0, 255).astype(np.uint8))
    r8 = evaluate_images([hr], [2, 4], {"bicubic": bicubic_upscale})
    rf = evaluate_images([hr.float() / 255], [2, 4], {"bicubic": bicubic_upscale})
    for s in (2, 4):
        assert 15 < r8["bicubic"][s] < 60
        assert abs(r8["bicubic"][s] - rf["bicubic"][s]) < 0.2
    assert r8["bicubic"][2] > r8["bicubic"][4]
    empty = evaluate_images([], [2], {"bicubic": bicubic_upscale})
    assert math.isnan(empty["bicubic"][2])


def test_raster_windows_skip_nodata_and_flat(rasters: dict[str, Path]) -> None:
    wins = list(evaluate_job.raster_windows(str(rasters["u8"]), bands=None, window=48, stride=None,
                                            region=None, value_range=None, flat_threshold=0.01))
    assert len(wins) == 2  # of 4 grid windows: one touches nodata, one is flat
    assert all(w.dtype == torch.uint8 and w.shape == (3, 48, 48) for w in wins)
    nir = list(evaluate_job.raster_windows(str(rasters["u8"]), bands=[3, 3, 3], window=48,
                                           stride=None, region=None, value_range=None,
                                           flat_threshold=0.0))
    assert len(nir) == 3 and torch.equal(nir[0][0], nir[0][2])  # flat kept with threshold 0
    u16 = list(evaluate_job.raster_windows(str(rasters["u16"]), bands=None, window=48, stride=None,
                                           region=None, value_range=(0, 10000)))
    assert len(u16) == 4 and all(w.dtype == torch.float32 for w in u16)
    assert 0.2 < float(u16[0].mean()) < 0.9  # reflectance mapped by the value range
    grey = list(evaluate_job.raster_windows(str(rasters["grey"]), bands=None, window=48,
                                            stride=None, region=None, value_range=None))
    assert len(grey) == 2 and torch.equal(grey[0][0], grey[0][1])  # 1 band replicated
    with pytest.raises(ValueError, match="2 selected band"):
        list(evaluate_job.raster_windows(str(rasters["u8"]), bands=[0, 1], window=48, stride=None,
                                         region=None, value_range=None))


def test_evaluate_job_on_rasters_with_two_models(rasters: dict[str, Path], tiny_liif: Path,
                                                 tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    rc = evaluate_job.main(["--model", f"a={tiny_liif}", f"b={tiny_liif}", "--raster",
                            f"scenes={rasters['u8']},{rasters['grey']}", "--raster",
                            f"refl={rasters['u16']}", "--window",
                            "48", "--scales", "2", "4", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    for row in ("| scenes | bicubic |", "| scenes | a |", "| scenes | b |", "| refl | a |"):
        assert row in table
    res = json.loads(out.read_text())
    assert res["windows"] == {"scenes": 4, "refl": 4}  # 2 of the u8 scene + 2 grey; 4 uint16
    assert res["results"]["scenes"]["a"] == res["results"]["scenes"]["b"]  # same weights
    rc = evaluate_job.main(["--model", str(tiny_liif), "--raster", f"u8={rasters['u8']}",
                            "--window", "48", "--scales", "2", "--region", "48", "48", "100",
                            "130", "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["windows"] == {"u8": 1}
    assert "liif" in json.loads(out.read_text())["results"]["u8"]


def test_evaluate_job_raster_errors(rasters: dict[str, Path], tiny_liif: Path, tmp_path: Path,
                                    capsys) -> None:
    def run(*args: str) -> int:
        return evaluate_job.main(["--model", str(tiny_liif), "--scales", "2", *args])

    with pytest.raises(SystemExit):
        run("--raster", "no-equals-sign")
    assert "NAME=PATTERN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--raster", f"x={tmp_path}/*.tif")
    assert "matches no file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--raster", f"x={rasters['u8']}", "--raster", f"x={rasters['u8']}")
    assert "used twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--raster", f"x={rasters['u8']}", "--window", "8", "--scales", "12")
    assert "smaller than the largest scale" in capsys.readouterr().err
    assert run("--raster", f"x={rasters['u8']}", "--window", "200") == 2
    assert "no window of 200 px" in capsys.readouterr().err
    assert run("--raster", f"x={tmp_path / 'missing.tif'}") == 2
    assert "missing.tif" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_job.main(["--model", f"bicubic={tiny_liif}", "--raster", f"x={rasters['u8']}"])
    assert "bicubic" in capsys.readouterr().err


def test_raster_globs_with_double_star_search_subfolders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in (tmp_path / "top.tif", tmp_path / "a" / "b" / "deep.tif"):
        p.write_bytes(b"")
    found = evaluate_job._parse_rasters([f"r={tmp_path}/**/*.tif"])["r"]
    assert [Path(f).name for f in found] == ["deep.tif", "top.tif"]
