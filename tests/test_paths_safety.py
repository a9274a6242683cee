"""Every path a job writes is checked against every path it reads, before any work.

Each case runs a real CLI job whose output (``--output``, ``--cog``, ``--preview``,
``--summary``) is another spelling of something the job reads (``--input``, ``--reference``,
``--model``) or writes, usually with ``--overwrite``. It must exit 2 naming both flags, and every
file under the test's folder must keep its bytes (hashed before and after)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import tree_digest, upscale_cli
from PIL import Image
from rasterio.transform import Affine

from pipeline.io.locations import check_disjoint, resolve

COMMON = ["--executor", "in-process", "--no-progress", "--workers", "1", "--threads-per-worker",
          "1"]


@pytest.fixture()
def world(tmp_path: Path, tiny_liif: Path, tiny_ttsr: Path, monkeypatch: pytest.MonkeyPatch
          ) -> dict[str, Path]:
    """A private copy of everything a job reads, under ``tmp_path`` (HOME and cwd point there)."""
    d = tmp_path
    monkeypatch.setenv("HOME", str(d))
    monkeypatch.chdir(d)
    rng = np.random.default_rng(0)
    arr = zarr.create_array(str(d / "in.zarr"), shape=(3, 20, 24), dtype="float32",
                            chunks=(3, 16, 16))
    arr[:] = rng.random((3, 20, 24), dtype=np.float32)
    with rasterio.open(d / "scene.tif", "w", driver="GTiff", width=24, height=20, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=Affine(40.0, 0, 500000, 0, -40.0, 4e6)) as ds:
        ds.write(rng.integers(1, 255, (3, 20, 24), dtype=np.uint8))
    with rasterio.open(d / "ref.tif", "w", driver="GTiff", width=96, height=80, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10.0, 0, 500000, 0, -10.0, 4e6)) as ds:
        ds.write(rng.integers(1, 255, (3, 80, 96), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / "photo.png")
    shutil.copy(tiny_liif, d / "liif.safetensors")
    shutil.copy(tiny_ttsr, d / "ttsr.safetensors")
    (d / "sub").mkdir()
    os.symlink(d / "in.zarr", d / "link.zarr")
    return {"d": d}


def liif_job(d: Path, src: str, out: str, *extra: str) -> list[str]:
    return ["--input", src, "--output", out, "--scale", "2", "--model",
            str(d / "liif.safetensors"), "--tile", "32", "--chunk", "16", *COMMON, *extra]


def ttsr_job(d: Path, out: str, *extra: str) -> list[str]:
    return ["--input", str(d / "scene.tif"), "--reference", str(d / "ref.tif"), "--output", out,
            "--model", str(d / "ttsr.safetensors"), "--chunk", "16", "--tile", "32", *COMMON,
            *extra]


# (name, argv builder, the two flags the message must name)
CASES = {
    # --output is another spelling of the input (the shell does not expand ~ after '=')
    "tilde_after_equals": (lambda d: liif_job(d, str(d / "in.zarr"), "~/in.zarr", "--overwrite"),
                           ("--output", "--input")),
    "file_url": (lambda d: liif_job(d, str(d / "in.zarr"), f"file://{d}/in.zarr", "--overwrite"),
                 ("--output", "--input")),
    "local_url": (lambda d: liif_job(d, str(d / "in.zarr"), f"local://{d}/in.zarr",
                                     "--overwrite"), ("--output", "--input")),
    "file_colon": (lambda d: liif_job(d, str(d / "in.zarr"), f"file:{d}/in.zarr", "--overwrite"),
                   ("--output", "--input")),
    "chained_cache_url": (lambda d: liif_job(d, str(d / "in.zarr"),
                                             f"simplecache::file://{d}/in.zarr", "--overwrite"),
                          ("--output", "--input")),
    "dot_dot": (lambda d: liif_job(d, str(d / "in.zarr"), f"{d}/sub/../in.zarr", "--overwrite"),
                ("--output", "--input")),
    "relative": (lambda d: liif_job(d, str(d / "in.zarr"), "in.zarr", "--overwrite"),
                 ("--output", "--input")),
    "symlink": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "link.zarr"), "--overwrite"),
                ("--output", "--input")),
    "input_via_symlink": (lambda d: liif_job(d, str(d / "link.zarr"), str(d / "in.zarr"),
                                             "--overwrite"), ("--output", "--input")),
    "input_spelled_with_tilde": (lambda d: liif_job(d, "~/in.zarr", f"file://{d}/in.zarr",
                                                    "--overwrite"), ("--output", "--input")),
    "output_contains_input": (lambda d: liif_job(d, str(d / "in.zarr"), str(d), "--overwrite"),
                              ("--output", "--input")),
    "output_inside_input": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "in.zarr" / "o.zarr")),
                            ("--output", "--input")),
    "output_is_model": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "liif.safetensors"),
                                           "--overwrite"), ("--output", "--model")),
    # the single-file outputs
    "cog_is_input": (lambda d: liif_job(d, str(d / "scene.tif"), str(d / "o.zarr"), "--cog",
                                        str(d / "scene.tif"), "--overwrite"), ("--cog", "--input")),
    "cog_is_input_file_url": (lambda d: liif_job(d, str(d / "scene.tif"), str(d / "o.zarr"),
                                                 "--cog", f"file://{d}/scene.tif", "--overwrite"),
                              ("--cog", "--input")),
    "preview_is_input": (lambda d: liif_job(d, str(d / "photo.png"), str(d / "o.zarr"),
                                            "--preview", "~/photo.png", "--overwrite"),
                         ("--preview", "--input")),
    "summary_is_input_no_flag": (lambda d: liif_job(d, str(d / "scene.tif"), str(d / "o.zarr"),
                                                    "--summary", str(d / "scene.tif")),
                                 ("--summary", "--input")),
    "summary_is_model": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"),
                                            "--summary", str(d / "liif.safetensors"),
                                            "--overwrite"), ("--summary", "--model")),
    "summary_inside_input": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"),
                                                "--summary", str(d / "in.zarr" / "zarr.json"),
                                                "--overwrite"), ("--summary", "--input")),
    "cog_equals_summary": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--cog",
                                              str(d / "x.tif"), "--summary", "~/x.tif"),
                           ("--cog", "--summary")),
    "summary_is_a_device": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"),
                                               "--summary", "/dev/null", "--overwrite"),
                            ("--summary", "not a regular file")),
    "cog_inside_output": (lambda d: liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--cog",
                                             str(d / "o.zarr" / "x.tif")), ("--cog", "--output")),
    # TTSR mode
    "ttsr_output_is_reference": (lambda d: ttsr_job(d, str(d / "ref.tif"), "--overwrite"),
                                 ("--output", "--reference")),
    "ttsr_output_is_input": (lambda d: ttsr_job(d, f"file://{d}/scene.tif", "--overwrite"),
                             ("--output", "--input")),
    "ttsr_cog_is_reference": (lambda d: ttsr_job(d, str(d / "o.zarr"), "--cog", "~/ref.tif",
                                                 "--overwrite"), ("--cog", "--reference")),
    "ttsr_preview_is_input": (lambda d: ttsr_job(d, str(d / "o.zarr"), "--preview",
                                                 str(d / "scene.tif"), "--overwrite"),
                              ("--preview", "--input")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_overlapping_a_read_or_written_path_is_refused(
        name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = world["d"]
    build, flags = CASES[name]
    argv = build(d)
    before = tree_digest(d)
    capsys.readouterr()
    rc = upscale_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"{argv}: exit {rc}; {err[-400:]}"
    for flag in flags:
        assert flag in err, f"{flag!r} not in {err!r}"
    assert "Traceback" not in err
    assert tree_digest(d) == before, "a file changed"


def test_summary_in_a_missing_folder_fails_before_work(world: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    d = world["d"]
    before = tree_digest(d)
    rc = upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--summary",
                          "nodir/s.json"))
    err = capsys.readouterr().err
    assert rc == 2 and "nodir" in err and "does not exist" in err
    assert tree_digest(d) == before and not (d / "o.zarr").exists()


def test_existing_summary_obeys_overwrite_and_is_written_whole(
        world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = world["d"]
    (d / "s.json").write_text("keep")
    rc = upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--summary", "s.json"))
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (d / "s.json").read_text() == "keep" and not (d / "o.zarr").exists()
    for flag in ("--overwrite", "--resume"):  # a file we did not write is never replaced
        rc = upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--summary",
                                  "s.json", flag))
        err = capsys.readouterr().err
        assert rc == 2 and "not written by liif-pipeline" in err, err
        assert (d / "s.json").read_text() == "keep" and not (d / "o.zarr").exists()
    (d / "s.json").unlink()
    assert upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--summary",
                                "s.json")) == 0
    first = json.loads((d / "s.json").read_text())
    assert first["created_by"].startswith("liif-pipeline")
    rc = upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "o.zarr"), "--summary", "s.json",
                              "--overwrite"))  # our own summary is replaced
    assert rc == 0
    summary = json.loads((d / "s.json").read_text())
    assert summary["tiles"] >= 1 and summary["out_shape"] == [40, 48]
    assert not [p for p in d.iterdir() if p.name.startswith(".s.json")]  # no temporary left


def test_overwrite_replaces_only_an_output_of_this_project(
        world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A Zarr group someone else made, and a folder of files, survive --overwrite."""
    d = world["d"]
    foreign = zarr.create_group(str(d / "foreign.zarr"), attributes={"owner": "someone"})
    foreign.create_array("data", shape=(4,), dtype="uint8")[:] = 7
    before = tree_digest(d)
    for target in ("foreign.zarr", "sub"):
        (d / "sub" / "keep.txt").write_text("mine") if target == "sub" else None
        before = tree_digest(d)
        rc = upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / target), "--overwrite"))
        err = capsys.readouterr().err
        assert rc == 2 and "not an output of this project" in err, err
        assert tree_digest(d) == before
    # our own output is replaced
    assert upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "ours.zarr"))) == 0
    assert upscale_cli(liif_job(d, str(d / "in.zarr"), str(d / "ours.zarr"), "--overwrite")) == 0


def test_checks_run_before_the_model_loads(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import pipeline.upscale as up

    def no_model(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the path checks")

    monkeypatch.setattr(up, "_model_info", no_model)
    d = world["d"]
    rc = upscale_cli(liif_job(d, str(d / "scene.tif"), str(d / "o.zarr"), "--cog", "scene.tif",
                          "--overwrite"))
    assert rc == 2 and "--cog" in capsys.readouterr().err


# ------------------------------------------------------------------------- the location identity


def test_spellings_of_one_local_path_resolve_to_one_identity(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.zarr").mkdir()
    os.symlink(tmp_path / "a.zarr", tmp_path / "b.zarr")
    base = resolve(str(tmp_path / "a.zarr"))
    for text in ("~/a.zarr", f"file://{tmp_path}/a.zarr", f"local://{tmp_path}/a.zarr",
                 f"file:{tmp_path}/a.zarr", "a.zarr", "./x/../a.zarr", "b.zarr",
                 f"simplecache::file://{tmp_path}/a.zarr", f"filecache::{tmp_path}/a.zarr"):
        loc = resolve(text)
        assert (loc.protocol, loc.path) == ("file", base.path), text
        assert loc.overlaps(base) and base.overlaps(loc)
    assert not resolve("other.zarr").overlaps(base)
    assert resolve(str(tmp_path)).overlaps(base) and resolve("a.zarr/c/0").overlaps(base)


def test_hard_links_are_the_same_file(tmp_path: Path) -> None:
    (tmp_path / "f.tif").write_bytes(b"x")
    os.link(tmp_path / "f.tif", tmp_path / "g.tif")
    assert resolve(str(tmp_path / "g.tif")).overlaps(resolve(str(tmp_path / "f.tif")))


def test_remote_and_gdal_spellings() -> None:
    assert resolve("s3a://bucket/x.zarr/").overlaps(resolve("s3://bucket/x.zarr"))
    assert resolve("/vsis3/bucket/x.zarr/c/0").overlaps(resolve("s3://bucket/x.zarr"))
    assert resolve("blockcache::s3://bucket/k").overlaps(resolve("s3://bucket/k"))
    assert resolve("memory:///a/b").overlaps(resolve("memory://a/b"))
    assert not resolve("s3://bucket/x").overlaps(resolve("memory://bucket/x"))
    a = resolve("s3://b/k", {"endpoint_url": "http://127.0.0.1:1"})
    b = resolve("s3://b/k", {"endpoint_url": "http://127.0.0.1:2"})
    assert not a.overlaps(b) and a.overlaps(resolve("s3://b/k"))
    assert resolve("gs://bucket/k").overlaps(resolve("gcs://bucket/k"))  # even without gcsfs


def test_check_disjoint_names_both_roles(tmp_path: Path) -> None:
    from pipeline.errors import PathConflictError

    with pytest.raises(PathConflictError, match="--cog .* --input"):
        check_disjoint([("--cog", resolve(str(tmp_path / "a.tif")))],
                       [("--input", resolve(f"file://{tmp_path}/a.tif"))])
    check_disjoint([("--cog", resolve(str(tmp_path / "a.tif"))), ("--summary", None)],
                   [("--input", resolve(str(tmp_path / "b.tif")))])


# -------------------------------------------------------------------------------- other jobs


def _images(folder: Path, n: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _exit_code(fn, argv: list[str]) -> int:
    try:
        return fn(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1


OTHER_JOBS = {
    "make_gt_output_is_input": lambda d: ("make_gt", [
        "--input", str(d / "imgs"), "--output", f"file://{d}/imgs", "--overwrite", "--patch", "16",
        "--scales", "2", "--lr-size", "8", "--workers", "0"], ("--output", "--input")),
    "make_gt_output_inside_input": lambda d: ("make_gt", [
        "--input", f"{d}/imgs/*.png", "--output", "~/imgs/gt", "--patch", "16", "--scales", "2",
        "--lr-size", "8", "--workers", "0"], ("--output", "--input")),
    "make_gt_output_is_reference_input": lambda d: ("make_gt", [
        "--input", str(d / "imgs"), "--reference-input", str(d / "scene.tif"), "--output",
        str(d / "scene.tif"), "--overwrite", "--patch", "16", "--scales", "4", "--lr-size", "4",
        "--ref-size", "16", "--workers", "0"], ("--output", "--reference-input")),
    "train_ttsr_out_is_gt": lambda d: ("train_ttsr", [
        "--gt", str(d / "gt"), "--out", str(d / "gt"), "--steps", "1"], ("--out", "--gt")),
    "train_storage_inside_data": lambda d: ("train", [
        "--config", str(REPO / "jobs" / "configs" / "smoke.yaml"), "--data", str(d / "imgs"),
        "--storage-path", "~/imgs", "--run-name", "r"], ("--storage-path", "--data")),
    "train_local_run_folder_is_data": lambda d: ("train", [
        "--backend", "local", "--config", str(REPO / "jobs" / "configs" / "smoke.yaml"),
        "--data", str(d / "imgs"), "--storage-path", str(d), "--run-name", "imgs"],
        ("--storage-path", "--data")),
    "evaluate_json_is_model": lambda d: ("evaluate", [
        "--model", str(d / "liif.safetensors"), "--raster", f"r={d}/scene.tif", "--window", "16",
        "--scales", "2", "--json", "~/liif.safetensors"], ("--json", "--model")),
    "evaluate_out_inside_data": lambda d: ("evaluate", [
        "--model", str(d / "liif.safetensors"), "--data", str(d), "--sets", "imgs",
        "--scales", "2", "--out", str(d / "imgs" / "HR" / "t.md")], ("--out", "--data")),
    "eval_refsr_json_inside_gt": lambda d: ("eval_refsr", [
        "--gt", str(d / "gt"), "--json", f"file://{d}/gt/report.json"], ("--json", "--gt")),
}
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(OTHER_JOBS))
def test_every_job_refuses_outputs_that_overlap_its_inputs(
        name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    d = world["d"]
    _images(d / "imgs")
    _images(d / "imgs" / "HR")
    (d / "gt").mkdir()
    (d / "gt" / "manifest.json").write_text('{"format": "x"}')
    module, argv, flags = OTHER_JOBS[name](d)
    job = importlib.import_module(f"jobs.{module}")
    before = tree_digest(d)
    capsys.readouterr()
    rc = _exit_code(job.main, argv)
    err = capsys.readouterr().err
    assert rc == 2, f"{name}: exit {rc}: {err[-600:]}"
    for flag in flags:
        assert flag in err, f"{flag!r} not in {err[-600:]!r}"
    assert tree_digest(d) == before


def test_make_gt_overwrite_needs_its_marker(world: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A folder holding only a 'shards' folder (no manifest of ours) is not replaced."""
    from jobs.make_gt import main as make_gt_main

    d = world["d"]
    _images(d / "imgs")
    (d / "other" / "shards").mkdir(parents=True)
    (d / "other" / "shards" / "mine.bin").write_bytes(b"1")
    before = tree_digest(d)
    rc = _exit_code(make_gt_main, ["--input", str(d / "imgs"), "--output", str(d / "other"),
                                   "--overwrite", "--patch", "16", "--scales", "2", "--lr-size",
                                   "8", "--workers", "0"])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert tree_digest(d) == before
