"""An RGBA (LA, palette + transparency, 16-bit RGBA) PNG keeps its alpha as a mask: transparent
pixels are nodata in the output; opaque pixels stay valid whatever their value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import upscale_cli
from PIL import Image

from pipeline.io.sources import open_source, probe_source

COMMON = ["--executor", "in-process", "--workers", "1", "--threads-per-worker", "1",
          "--precision", "fp32", "--no-progress", "--scale", "2"]


def _rgba(tmp_path: Path, transparent: bool = True) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    rgba = rng.integers(1, 255, (20, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:6, 3:9, :3] = 0  # opaque black: valid data, not a hole
    if transparent:
        rgba[10:15, 12:20, 3] = 0
    path = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path, rgba


def test_alpha_zero_pixels_become_nodata_and_opaque_black_stays(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, rgba = _rgba(tmp_path)
    info = probe_source(str(path))
    assert info.shape == (3, 20, 24) and info.nodata is None and info.out_nodata == 0
    with open_source(str(path)) as src:
        valid = src.read_valid((0, 20), (0, 24))
    np.testing.assert_array_equal(valid, rgba[..., 3] != 0)
    out = tmp_path / "o.zarr"
    assert upscale_cli(["--input", str(path), "--output", str(out), "--model", str(tiny_liif),
                 *COMMON]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    arr = zarr.open_group(str(out), mode="r")["image"]
    data = arr[:]
    assert arr.attrs["nodata"] == 0
    hole = (data == 0).all(axis=0)
    # x2: each transparent input pixel is the nearest of exactly 2 x 2 output pixels
    expected = np.repeat(np.repeat(rgba[..., 3] == 0, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(hole, expected)
    assert summary["nodata_pixels"] == int(expected.sum())
    assert not (data[:, ~expected] == 0).any()  # valid pixels never read as nodata


def test_an_opaque_alpha_is_just_dropped(tmp_path: Path, tiny_liif: Path) -> None:
    path, rgba = _rgba(tmp_path, transparent=False)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(rgba[..., :3], "RGB").save(rgb)
    assert probe_source(str(path)).out_nodata is None
    for name, src in (("a.zarr", path), ("b.zarr", rgb)):
        assert upscale_cli(["--input", str(src), "--output", str(tmp_path / name), "--model",
                     str(tiny_liif), *COMMON]) == 0
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["image"]
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["image"]
    np.testing.assert_array_equal(a[:], b[:])
    assert a.attrs["nodata"] is None


def test_la_palette_and_16_bit_alpha_masks(tmp_path: Path) -> None:
    la = np.zeros((8, 9, 2), dtype=np.uint8)
    la[..., 0], la[..., 1] = 100, 255
    la[1:3, 2:4, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    pal = Image.fromarray(np.arange(72, dtype=np.uint8).reshape(8, 9) % 4, "L").convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    import rasterio
    rgba16 = np.full((4, 8, 9), 40000, dtype=np.uint16)
    rgba16[3, 5:7, 1:3] = 0
    with rasterio.open(tmp_path / "rgba16.png", "w", driver="PNG", width=9, height=8, count=4,
                       dtype="uint16") as ds:
        ds.write(rgba16)
    cases = {"la.png": la[..., 1] != 0, "rgba16.png": rgba16[3] != 0,
             "p.png": np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))[..., 3] != 0}
    for name, want in cases.items():
        with open_source(str(tmp_path / name)) as src:
            assert src.has_mask and src.mask_nodata == 0, name
            np.testing.assert_array_equal(src.read_valid((0, 8), (0, 9)), want, err_msg=name)
            assert src.shape[0] in (1, 3)  # the alpha is not a band
