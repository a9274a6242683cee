"""Overview levels written by the tile workers in the same pass: each level equals the block mean
of the full level's valid pixels (nodata-aware), tiles own whole chunks at every level, the
group declares the multiscales convention, and resume verifies the levels too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.io.pyramid import block_means, default_levels, level_chunk, pyramid_grid
from pipeline.io.sources import SourceSpec
from pipeline.io.zarr_output import OutputSpec
from pipeline.upscale import UpscaleConfig, run_upscale


def reference_level(full: np.ndarray, level: int, nodata: float | None) -> np.ndarray:
    """Block means of the valid pixels, computed independently (loops over blocks)."""
    c, h, w = full.shape
    f = 1 << level
    out = np.empty((c, -(-h // f), -(-w // f)), dtype=full.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            block = full[:, i * f:(i + 1) * f, j * f:(j + 1) * f].astype(np.float64)
            valid = np.ones(block.shape[1:], bool)
            if nodata is not None:
                valid &= ~(block == nodata).all(axis=0)
            if full.dtype.kind == "f":
                valid &= np.isfinite(block).all(axis=0)
            if not valid.any():
                out[:, i, j] = nodata
                continue
            m = block[:, valid].mean(axis=1)
            out[:, i, j] = np.rint(m) if full.dtype.kind in "iu" else m
    return out


def test_block_means_are_nodata_aware_and_never_nodata_where_valid() -> None:
    data = np.array([[[0, 0, 10, 20, 7], [0, 0, 30, 40, 9], [1, 2, 255, 255, 3]]], np.uint8)
    lv1, lv2 = block_means(data, 2, nodata=0)
    assert np.array_equal(lv1, reference_level(data, 1, 0))
    assert lv1.tolist() == [[[0, 25, 8], [2, 255, 3]]]
    assert lv2.shape == (1, 1, 2)
    assert block_means(np.ones((1, 2, 2), np.uint8), 1, nodata=1)[0].tolist() == [[[1]]]
    # a block whose valid mean rounds to nodata is nudged off it
    assert block_means(np.array([[[5, 7], [5, 7]]], np.uint16), 1, nodata=6,
                       value_range=(0, 100))[0].tolist() == [[[7]]]


def test_level_chunks_and_grid() -> None:
    assert [level_chunk(256, lv) for lv in range(6)] == [256, 128, 64, 64, 64, 64]
    assert [pyramid_grid(256, lv) for lv in range(6)] == [256, 256, 256, 512, 1024, 2048]
    assert default_levels((1894, 1894), 256, 2048) == 2
    assert default_levels((100_000, 100_000), 256, 2048) == 5  # capped by the tile size
    assert default_levels((400, 300), 256, 2048) == 0


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_job_levels_equal_block_means_of_the_full_level(tmp_path: Path, tiny_liif: Path,
                                                        dtype: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((3, 61, 47))
    data = (img * 250 + 1).astype(dtype) if dtype == "uint8" else img.astype(dtype)
    data[:, 10:30, 5:20] = 0  # a nodata region crossing tiles and level blocks
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, dtype=dtype)
    arr[:] = data
    arr.attrs["nodata"] = 0
    out = tmp_path / "o.zarr"
    s = run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                                  output=OutputSpec(str(out)), scale=4.0, model=str(tiny_liif),
                                  tile=128, chunk=32, overviews=2, executor="in-process",
                                  progress=False))
    assert s["overviews"] == 2
    group = zarr.open_group(str(out), mode="r")
    full = np.asarray(group["image"][...])
    for lv in (1, 2):
        level = np.asarray(group[f"overviews/{lv}"][...])
        ref = reference_level(full, lv, 0.0)
        if dtype == "uint8":
            assert np.abs(level.astype(int) - ref.astype(int)).max() <= 0  # rint == rint
        else:
            assert np.allclose(level, ref, atol=1e-6)
        assert group[f"overviews/{lv}"].chunks[1:] == (level_chunk(32, lv),) * 2
    attrs = dict(group.attrs)
    uuids = {c["uuid"] for c in attrs["zarr_conventions"]}
    assert "d35379db-88df-4056-af3a-620245f8e347" in uuids
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["image", "overviews/1", "overviews/2"]
    assert layout[2]["transform"]["scale"] == [1.0, 4.0, 4.0]
    # resume verifies the levels too: a deleted level chunk gets its tile redone
    victim = next((out / "overviews" / "2" / "c").rglob("*"))
    while victim.is_dir():
        victim = next(victim.iterdir())
    victim.unlink()
    again = run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                                      output=OutputSpec(str(out)), scale=4.0,
                                      model=str(tiny_liif), tile=128, chunk=32, overviews=2,
                                      executor="in-process", progress=False, resume=True))
    assert again["tiles_redone"] == 1
    assert np.array_equal(np.asarray(zarr.open_group(str(out), mode="r")["overviews/2"][...]),
                          level)


def test_levels_of_a_tiled_run_equal_one_tile(tmp_path: Path, tiny_liif: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 40, 40), dtype="uint8")
    arr[:] = np.random.default_rng(2).integers(1, 255, (3, 40, 40), dtype=np.uint8)
    levels = {}
    for tile in (128, 256):
        out = tmp_path / f"t{tile}.zarr"
        run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                                  output=OutputSpec(str(out)), scale=3, model=str(tiny_liif),
                                  tile=tile, chunk=32, overviews=2, executor="in-process",
                                  progress=False, precision="fp32"))
        levels[tile] = np.asarray(zarr.open_group(str(out), mode="r")["overviews/2"][...])
    assert np.array_equal(levels[128], levels[256])


def test_an_explicit_tile_that_cannot_own_level_chunks_is_refused(tmp_path: Path,
                                                                 tiny_liif: Path) -> None:
    from pipeline.errors import ConfigError

    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 40, 40), dtype="uint8")
    arr[:] = 7
    with pytest.raises(ConfigError, match="tile 64 must be a multiple of 256 for 3 overview"):
        run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                                  output=OutputSpec(str(tmp_path / "o.zarr")), scale=3,
                                  model=str(tiny_liif), tile=64, chunk=32, overviews=3,
                                  executor="in-process", progress=False))
    assert not (tmp_path / "o.zarr").exists()
