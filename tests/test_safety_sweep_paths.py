"""Defects found by the adversarial data-safety sweep (paths, ownership, unfinished inputs,
resume after a hidden in-place edit). Each test failed on the code before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import last_json, tree_digest, upscale_cli
from rasterio.transform import from_origin

from pipeline.io.locations import read_extent, resolve

COMMON = ["--executor", "in-process", "--no-progress", "--threads-per-worker", "1",
          "--precision", "fp32"]


@pytest.fixture
def d(tmp_path: Path, tiny_liif: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.safetensors").write_bytes(tiny_liif.read_bytes())
    return tmp_path


def _tif(path: Path, data: np.ndarray) -> str:
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c, dtype=data.dtype,
                       crs="EPSG:32618", transform=from_origin(0, 0, 1, 1)) as ds:
        ds.write(data)
    return str(path)


def job(inp: str, out: str, *extra: str) -> list[str]:
    return ["--input", inp, "--output", out, "--scale", "2", "--model", "m.safetensors",
            *COMMON, *extra]


# ------------------------------------------------------------- what a read covers (D1, D2)

def test_read_extent_of_zarr_metadata_is_its_folder_and_of_a_file_its_sidecars() -> None:
    (folder, note), = read_extent(resolve("/data/in.zarr/zarr.json"))
    assert folder.path == "/data/in.zarr" and "Zarr store" in note
    assert read_extent(resolve("s3://b/x.zarr/.zarray"))[0][0].path == "b/x.zarr"
    names = {loc.name for loc, _ in read_extent(resolve("/data/a.tif"))}
    assert {"a.tif", "a.tif.aux.xml", "a.tif.ovr", "a.tif.msk", "a.aux", "a.tfw", "a.tifw",
            "a.wld", "a.prj"} <= names
    assert "a.png" not in names and "a.tif.x4.zarr" not in names


@pytest.mark.parametrize("meta", ["zarr.json", ".zarray"])
@pytest.mark.parametrize("flag", ["--summary", "--preview", "--output"])
def test_an_output_inside_a_zarr_given_by_its_metadata_file_is_refused(
        d: Path, meta: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    fmt = 3 if meta == "zarr.json" else 2
    z = zarr.create_array(str(d / "in.zarr"), shape=(3, 32, 32), chunks=(3, 16, 16),
                          dtype="uint8", zarr_format=fmt)
    z[:] = 7
    chunk = "c/0/0/0" if fmt == 3 else "0.0.0"
    target = f"in.zarr/{chunk}" if flag != "--output" else "in.zarr/sub.zarr"
    argv = job(f"in.zarr/{meta}", "out.zarr" if flag != "--output" else target,
               "--resume" if flag == "--preview" else "--overwrite")
    if flag != "--output":
        argv += [flag, target]
    before = tree_digest(d / "in.zarr")
    rc = upscale_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Zarr store" in err and flag in err, err
    assert tree_digest(d / "in.zarr") == before
    np.testing.assert_array_equal(zarr.open_array(str(d / "in.zarr"))[:], 7)


def test_a_gdal_sidecar_of_the_input_is_never_written(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.full((3, 32, 32), 9, np.uint8))
    aux = ("<PAMDataset>" + "".join(f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue>'
                                    "</PAMRasterBand>" for b in (1, 2, 3)) + "</PAMDataset>")
    (d / "a.tif.aux.xml").write_text(aux)
    for flag, target in (("--summary", "a.tif.aux.xml"), ("--preview", "a.tif.ovr"),
                         ("--summary", "a.tfw"), ("--cog", "a.tif.msk")):
        before = tree_digest(d)
        rc = upscale_cli(job("a.tif", "o.zarr", flag, target, "--overwrite"))
        err = capsys.readouterr().err
        assert rc == 2 and "sidecar" in err and flag in err, err
        assert tree_digest(d) == before
    with rasterio.open(d / "a.tif") as ds:
        assert ds.nodata == 0
    assert upscale_cli(job("a.tif", "o.zarr", "--summary", "a.json")) == 0  # other names: fine


# ------------------------------------------------- an unfinished output as an input (D3)

def test_an_unfinished_output_is_refused_as_an_input_until_it_is_finished(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    _tif(d / "big.tif", rng.integers(1, 256, (3, 64, 64), dtype=np.uint8))
    base = job("big.tif", "o.zarr", "--tile", "32", "--chunk", "32")
    assert upscale_cli(base) == 0
    assert zarr.open_group(str(d / "o.zarr"))["image"].attrs["complete"] is True
    capsys.readouterr()
    # what an interrupted run leaves: the last tile not done, its chunk missing
    os.remove(d / "o.zarr" / "_manifest" / "3_3.json")
    os.remove(d / "o.zarr" / "image" / "c" / "0" / "3" / "3")
    img = zarr.open_group(str(d / "o.zarr"))["image"]
    img.attrs["complete"] = False  # as the engine marks it while it runs
    for spelling in ("o.zarr", "o.zarr/zarr.json", "o.zarr/image"):
        rc = upscale_cli(job(spelling, f"p{len(spelling)}.zarr", "--scale", "1"))
        err = capsys.readouterr().err
        assert rc == 2 and "unfinished output" in err and "--resume" in err, err
    assert upscale_cli(base + ["--resume"]) == 0  # finishing it makes it an input again
    capsys.readouterr()
    assert upscale_cli(job("o.zarr", "p.zarr", "--scale", "1")) == 0


def test_an_interrupted_job_leaves_its_output_marked_unfinished(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.run.executors import make_executor
    from pipeline.upscale import UpscaleConfig, run_upscale

    seen = []

    def interrupting(cfg: object, job: object, worker_cls: type) -> object:
        ex = make_executor(cfg, job, worker_cls)
        run = ex.run

        def run_two(work: object, progress: object, **kw: object) -> object:
            seen.append(zarr.open_group(str(d / "o.zarr"))["image"].attrs["complete"])
            run(list(work)[:2], progress, **kw)
            raise KeyboardInterrupt
        ex.run = run_two
        return ex

    _tif(d / "big.tif", np.random.default_rng(1).integers(1, 256, (3, 64, 64), dtype=np.uint8))
    cfg = UpscaleConfig(source=SourceSpec("big.tif"), output=OutputSpec(str(d / "o.zarr")),
                        scale=2, model="m.safetensors", tile=64, chunk=32, overviews=1,
                        executor="in-process", progress=False, precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        run_upscale(cfg, executor_factory=interrupting)
    assert seen == [False]  # marked before the first tile
    group = zarr.open_group(str(d / "o.zarr"))
    assert group["image"].attrs["complete"] is False
    assert group["overviews/1"].attrs["complete"] is False  # the pyramid too
    for extra in ([], ["--array-path", "overviews/1"], ["--array-path", "image"]):
        rc = upscale_cli(job("o.zarr", "p.zarr", "--scale", "1", *extra))
        assert rc == 2 and "unfinished output" in capsys.readouterr().err, extra
    cfg_resume = UpscaleConfig(source=SourceSpec("big.tif"), output=OutputSpec(str(d / "o.zarr")),
                               scale=2, model="m.safetensors", tile=64, chunk=32, overviews=1,
                               executor="in-process", progress=False, precision="fp32",
                               resume=True)
    run_upscale(cfg_resume)
    assert zarr.open_group(str(d / "o.zarr"))["overviews/1"].attrs["complete"] is True


# --------------------------------------------------- only our own files are replaced (D6, D7)

@pytest.mark.parametrize("flag", ["--summary", "--preview", "--compare"])
@pytest.mark.parametrize("mode", ["--resume", "--overwrite"])
def test_a_file_we_did_not_write_is_never_replaced(
        d: Path, flag: str, mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.random.default_rng(2).integers(1, 256, (3, 32, 32), dtype=np.uint8))
    (d / "notes.txt").write_text("precious")
    before = tree_digest(d)
    rc = upscale_cli(job("a.tif", "new.zarr", flag, "notes.txt", mode))
    err = capsys.readouterr().err
    assert rc == 2 and "not written by liif-pipeline" in err, err
    assert tree_digest(d) == before


def test_our_own_exports_are_replaced_on_overwrite_and_resume(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.random.default_rng(3).integers(1, 256, (3, 32, 32), dtype=np.uint8))
    outs = ["--summary", "s.json", "--preview", "p.png", "--compare", "c.png",
            "--cog", "c.tif"]
    assert upscale_cli(job("a.tif", "o.zarr", *outs)) == 0
    first = last_json(capsys)
    assert json.loads((d / "s.json").read_text())["created_by"].startswith("liif-pipeline")
    assert upscale_cli(job("a.tif", "o.zarr", *outs, "--overwrite")) == 0
    assert last_json(capsys)["out_shape"] == first["out_shape"]
    assert upscale_cli(job("a.tif", "o.zarr", *outs[:6], "--resume")) == 0


def test_a_foreign_geotiff_is_not_replaced_by_output_tif(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.full((3, 32, 32), 9, np.uint8))
    _tif(d / "precious.tif", np.full((3, 32, 32), 200, np.uint8))
    before = tree_digest(d / "precious.tif")
    rc = upscale_cli(job("a.tif", "precious.tif", "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 2 and "not written by liif-pipeline" in err, err
    assert tree_digest(d / "precious.tif") == before
    assert upscale_cli(job("a.tif", "ours.tif")) == 0
    assert upscale_cli(job("a.tif", "ours.tif", "--overwrite")) == 0  # ours: replaced


# ------------------------------------------- resume after an edit the identity misses (D8)

def test_resume_redoes_tiles_whose_input_changed_even_when_size_time_and_samples_match(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8)
    _tif(d / "big.tif", data)
    argv = job("big.tif", "o.zarr", "--tile", "64", "--chunk", "32")
    assert upscale_cli(argv) == 0
    capsys.readouterr()
    os.remove(d / "o.zarr" / "_manifest" / "3_0.json")  # as if tile 3_0 had not finished
    st = os.stat(d / "big.tif")
    with rasterio.open(d / "big.tif", "r+") as ds:  # an edit between the sampled windows
        a = ds.read()
        a[:, 84:90, 36:44] ^= 255  # outside the 9 sampled 32-px windows
        ds.write(a)
    os.utime(d / "big.tif", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(d / "big.tif").st_size == st.st_size
    with pytest.warns(UserWarning, match="input pixels they read changed"):
        assert upscale_cli(argv + ["--resume"]) == 0
    s = last_json(capsys)
    assert s["tiles_redone_input_changed"] >= 1
    assert upscale_cli(job("big.tif", "fresh.zarr", "--tile", "64", "--chunk", "32")) == 0
    a = zarr.open_group(str(d / "o.zarr"))["image"][:]
    b = zarr.open_group(str(d / "fresh.zarr"))["image"][:]
    np.testing.assert_array_equal(a, b)


# ------------------------------------- the mark counts only where its format puts it (N2)

def test_only_a_mark_in_its_place_makes_a_file_ours(d: Path) -> None:
    from pipeline.io.atomic import written_by_us

    _tif(d / "a.tif", np.random.default_rng(4).integers(1, 256, (3, 32, 32), dtype=np.uint8))
    assert upscale_cli(job("a.tif", "o.zarr", "--summary", "s.json", "--preview", "p.png",
                           "--cog", "c.tif")) == 0
    ours = {n: written_by_us(resolve(str(d / n))) for n in ("s.json", "p.png", "c.tif")}
    assert ours == {"s.json": True, "p.png": True, "c.tif": True}
    (d / "notes.md").write_text("my notes\n" * 30 + "created_by: liif-pipeline is great\n")
    (d / "nested.json").write_text(json.dumps({"me": {"created_by": "liif-pipeline 0.1.0"}}))
    (d / "late.json").write_text('{"a": 1, "created_by": "liif-pipeline 0.1.0"}')
    for name in ("notes.md", "nested.json", "late.json", "o.zarr/zarr.json",
                 "o.zarr/image/zarr.json", "a.tif"):
        assert not written_by_us(resolve(str(d / name))), name


@pytest.mark.parametrize("target", ["prev.zarr/image/zarr.json", "notes.md"])
def test_files_that_merely_contain_the_words_are_never_replaced(
        d: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.random.default_rng(5).integers(1, 256, (3, 32, 32), dtype=np.uint8))
    assert upscale_cli(job("a.tif", "prev.zarr")) == 0
    (d / "notes.md").write_text("notes\n" * 30 + "created_by: liif-pipeline\n")
    capsys.readouterr()
    before = tree_digest(d)
    for mode in ("--overwrite", "--resume"):
        rc = upscale_cli(job("a.tif", f"o{mode}.zarr", "--summary", target, mode))
        err = capsys.readouterr().err
        assert rc == 2 and "not written by liif-pipeline" in err, err
        assert tree_digest(d) == before


# ------------------------------------------ sidecars in any case; edits of a sidecar (N4, N5)

def test_sidecars_in_other_letter_cases_and_names_are_refused(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(d / "a.tif", np.full((3, 32, 32), 9, np.uint8))
    _tif(d / ".b.tif", np.full((3, 32, 32), 9, np.uint8))
    _tif(d / "scene", np.full((3, 32, 32), 9, np.uint8))  # a GeoTIFF without extension
    for inp, target in (("a.tif", "a.TFW"), ("a.tif", "A.TFW"), ("a.tif", "a.tif.OVR"),
                        ("a.tif", "a.tif.MSK"), (".b.tif", ".b.tif.aux.xml"),
                        ("scene", "scene.aux.xml"), ("scene", "scene.ovr")):
        before = tree_digest(d)
        rc = upscale_cli(job(inp, "o.zarr", "--cog", target, "--overwrite"))
        err = capsys.readouterr().err
        assert rc == 2 and "sidecar" in err, (inp, target, err)
        assert tree_digest(d) == before


def test_resume_refuses_after_a_sidecar_changed_how_the_input_reads(
        d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.random.default_rng(6).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    _tif(d / "a.tif", data)
    argv = job("a.tif", "o.zarr", "--tile", "64", "--chunk", "32")
    assert upscale_cli(argv) == 0
    os.remove(d / "o.zarr" / "_manifest" / "1_1.json")  # as if one tile had not finished
    capsys.readouterr()
    (d / "a.tif.aux.xml").write_text(
        "<PAMDataset>" + "".join(f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue>'
                                 "</PAMRasterBand>" for b in (1, 2, 3)) + "</PAMDataset>")
    with rasterio.open(d / "a.tif") as ds:
        assert ds.nodata == 0  # GDAL reads the new nodata from the sidecar
    before = tree_digest(d / "o.zarr")
    rc = upscale_cli(argv + ["--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot resume" in err and ("nodata" in err or "size" in err), err
    assert tree_digest(d / "o.zarr") == before
