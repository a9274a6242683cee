"""Defects D4, D9 and D10 of the adversarial sweep (.notes/adv9.md), each fixed at its root.

D4: an unreadable record in an output's ``_manifest/`` means "tile not finished": a resume redoes
    the tile, counts it in ``tiles_redone`` and warns, naming the record (it used to crash with a
    JSONDecodeError traceback).
D9: ``jobs.evaluate --raster`` globs count as the folder they search, as in make_gt and train.
D10: a dangling symbolic link, or a file, where a job must create a folder is a clear exit-2
    error naming the path; nothing is created, least of all where the link points.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import cli_exit, last_json, random_tif, tree_digest, upscale_cli
from PIL import Image

from liif.loop import FolderPathError, check_folder_path, make_run_folder
from pipeline.errors import OutputCorruptError, OutputNotWritableError
from pipeline.io.manifest import TileManifest

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "jobs" / "configs" / "smoke.yaml")


def _exit_code(fn, argv: list[str]) -> int:
    return cli_exit(fn, argv)


def _tif(path: Path, size: int = 32, seed: int = 0) -> Path:
    return random_tif(path, size, seed, low=0)


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------ D4: unreadable records

GARBAGE = {
    "empty": (b"", "is empty"),
    "blank": (b"  \n", "is empty"),
    "torn": (b'{"key": "0_0", "fin', "is not valid JSON"),
    "not_utf8": (b"\xc3\x28\xa0\xa1", "is not valid JSON"),
    "list": (b"[1, 2]", "is not a JSON object"),
    "number": (b"7", "is not a JSON object"),
    "no_keys": (b"{}", "lacks 'key' and 'finished_at'"),
    "no_finished_at": (b'{"key": "0_0"}', "lacks 'finished_at'"),
    "other_tile": (b'{"key": "1_1", "finished_at": "2025-01-01"}', "names tile '1_1'"),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_an_unreadable_record_is_a_named_corrupt_output_error(tmp_path: Path, name: str) -> None:
    m = TileManifest(str(tmp_path / "o.zarr"))
    m.mark_done("0_0", {"worker": "w"})
    payload, why = GARBAGE[name]
    path = tmp_path / "o.zarr" / "_manifest" / "0_0.json"
    path.write_bytes(payload)
    assert m.done_keys() == {"0_0"}  # listed: only reading it tells it is garbage
    with pytest.raises(OutputCorruptError, match=why) as info:
        m.record("0_0")
    assert str(path) in str(info.value)


def test_an_unreadable_record_on_an_object_store_names_its_url() -> None:
    import uuid

    uri = f"memory://adv9-{uuid.uuid4().hex}/o.zarr"
    m = TileManifest(uri)
    m.mark_done("0_0", {"worker": "w"})
    fs, root = m._fs_dir
    fs.pipe_file(f"{root}/0_0.json", b"")
    with pytest.raises(OutputCorruptError, match=r"memory://.*/_manifest/0_0\.json' is empty"):
        m.record("0_0")


def test_files_whose_names_are_not_tile_keys_are_not_records(tmp_path: Path) -> None:
    m = TileManifest(str(tmp_path / "o.zarr"))
    m.mark_done("0_0", {"worker": "w"})
    for name in ("a b.json", "-x.json", "zarr.json"):
        (tmp_path / "o.zarr" / "_manifest" / name).write_text("garbage")
    assert m.done_keys() == {"0_0"}
    assert m.record("0_0")["worker"] == "w"  # a good record still reads


def _upscale_argv(d: Path, model: Path, *extra: str) -> list[str]:
    return ["--input", str(d / "a.tif"), "--output", str(d / "o.zarr"), "--scale", "2",
            "--tile", "32", "--chunk", "16", "--model", str(model), "--executor", "in-process",
            "--no-progress", "--workers", "1", "--threads-per-worker", "1", *extra]


@pytest.mark.parametrize("name", ["empty", "torn", "list", "no_finished_at"])
def test_resume_redoes_a_tile_whose_record_is_unreadable(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    _tif(tmp_path / "a.tif")
    assert upscale_cli(_upscale_argv(tmp_path, tiny_liif)) == 0
    first = last_json(capsys)
    assert first["tiles"] == 4
    want = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image", mode="r")[...])
    record = tmp_path / "o.zarr" / "_manifest" / "0_0.json"
    assert record.is_file()
    record.write_bytes(GARBAGE[name][0])  # a torn record (disk full, copy error)
    with pytest.warns(UserWarning, match=r"_manifest/0_0\.json' .*tile 0_0 is redone"):
        rc = upscale_cli(_upscale_argv(tmp_path, tiny_liif, "--resume"))
    assert rc == 0
    s = last_json(capsys)
    assert (s["tiles_redone"], s["tiles_run"], s["tiles_verified"]) == (1, 1, 3)
    got = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image", mode="r")[...])
    np.testing.assert_array_equal(got, want)
    assert TileManifest(str(tmp_path / "o.zarr")).record("0_0")["key"] == "0_0"  # rewritten
    # and the next resume trusts it again: nothing is redone
    assert upscale_cli(_upscale_argv(tmp_path, tiny_liif, "--resume")) == 0
    s = last_json(capsys)
    assert (s["tiles_redone"], s["tiles_run"], s["tiles_verified"]) == (0, 0, 4)


# --------------------------------------------------------------- D9: evaluate --raster globs


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_evaluate_report_inside_the_folder_a_raster_glob_searches_is_refused(
        tmp_path: Path, tiny_liif: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], flag: str) -> None:
    from jobs.evaluate import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    _tif(tmp_path / "data" / "s.tif", size=64)
    shutil.copy(tiny_liif, tmp_path / "tiny.safetensors")
    before = tree_digest(tmp_path)
    rc = _exit_code(main, ["--model", "tiny.safetensors", "--raster", "r=data/*.tif",
                           "--bands", "0", "1", "2", "--window", "32", "--scales", "2",
                           flag, "data/report.md"])
    err = capsys.readouterr().err
    assert rc == 2, err[-600:]
    assert flag in err and "--raster" in err and "lies inside" in err
    assert tree_digest(tmp_path) == before


def test_evaluate_second_pattern_of_a_raster_row_counts_too(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.evaluate import main

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _tif(tmp_path / sub / "s.tif", size=64)
    rc = _exit_code(main, ["--model", str(tiny_liif), "--raster",
                           f"r={tmp_path}/a/s.tif,{tmp_path}/b/*.tif", "--window", "32",
                           "--scales", "2", "--out", str(tmp_path / "b" / "sub" / "t.md")])
    assert rc == 2 and "lies inside --raster" in capsys.readouterr().err


def test_evaluate_report_beside_the_searched_folder_is_still_written(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.evaluate import main

    (tmp_path / "data").mkdir()
    _tif(tmp_path / "data" / "s.tif", size=64)
    rc = _exit_code(main, ["--model", str(tiny_liif), "--raster", f"r={tmp_path}/data/*.tif",
                           "--window", "32", "--scales", "2", "--limit", "1",
                           "--out", str(tmp_path / "report.md")])
    assert rc == 0, capsys.readouterr().err[-600:]
    assert "r" in (tmp_path / "report.md").read_text()


# ------------------------------------------------ D10: dangling links and files in the way


@pytest.fixture
def blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``dang`` -> ``nowhere`` (a dangling link) and ``afile`` (a plain file), in the cwd."""
    monkeypatch.chdir(tmp_path)
    os.symlink("nowhere", tmp_path / "dang")
    (tmp_path / "afile").write_text("mine\n")
    return tmp_path


def _snapshot(d: Path) -> dict[str, str]:
    """:func:`tree_digest` that records symbolic links (dangling ones too) as their targets."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p)] = (f"link:{os.readlink(p)}" if p.is_symlink() else
                           "dir" if p.is_dir() else tree_digest(p)[str(p)])
    return out


def _unchanged(d: Path, before: dict[str, str]) -> None:
    assert _snapshot(d) == before
    assert not (d / "nowhere").exists() and not os.path.lexists(d / "nowhere")
    assert os.readlink(d / "dang") == "nowhere" and (d / "afile").read_text() == "mine\n"


def test_check_folder_path_refuses_files_and_dangling_links(blocked: Path) -> None:
    d = blocked
    for path, why in (("dang", "'dang' is a symbolic link to 'nowhere', which does not exist"),
                      ("dang/run", f"'{d}/dang' is a symbolic link to 'nowhere'"),
                      ("afile", "'afile' is a file, not a folder"),
                      ("afile/x/run", f"'{d}/afile' is a file, not a folder")):
        with pytest.raises(FolderPathError, match=why) as info:
            check_folder_path(path, role="--flag")
        assert str(info.value).startswith(f"--flag {path!r}") and "--flag" in str(info.value)
        assert isinstance(info.value, OSError)
    os.symlink("afile", d / "tofile")
    with pytest.raises(FolderPathError, match="link to 'afile', which is not a folder"):
        check_folder_path("tofile/run")
    # a file to be written: its folders are checked, and it must not be a dangling link
    with pytest.raises(FolderPathError, match="writing it would create that file"):
        check_folder_path("dang", file=True)
    with pytest.raises(FolderPathError, match="is a file, not a folder"):
        check_folder_path("afile/report.md", file=True)
    # fine: missing folders, existing ones, links to folders, an existing file to replace
    (d / "real").mkdir()
    os.symlink("real", d / "good")
    for ok in ("new/deeper/run", "real", "good/run", str(d / "good")):
        check_folder_path(ok)
    check_folder_path("afile", file=True)
    assert not (d / "nowhere").exists()


def test_save_run_and_make_run_folder_refuse_instead_of_following(blocked: Path) -> None:
    import torch

    from liif.loop import Training, save_run

    before = _snapshot(blocked)
    with pytest.raises(FolderPathError, match="symbolic link"):
        make_run_folder("dang/run")
    model = torch.nn.Linear(1, 1)
    t = Training(model=model, optimizers={"o": torch.optim.SGD(model.parameters(), lr=0.1)})
    with pytest.raises(FolderPathError, match="is a file, not a folder"):
        save_run(Path("afile/run"), t, training={})
    _unchanged(blocked, before)
    make_run_folder("new/run")
    assert (blocked / "new" / "run").is_dir()


@pytest.mark.parametrize("storage", ["dang", "dang/deeper", "afile"])
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_train_with_a_storage_path_in_the_way_exits_2_naming_it(
        blocked: Path, capsys: pytest.CaptureFixture[str], storage: str, backend: str) -> None:
    from jobs.train import main

    _images(blocked / "data")
    before = _snapshot(blocked)
    rc = _exit_code(main, ["--backend", backend, "--steps", "1", "--config", SMOKE, "--data",
                           "data", "--storage-path", storage, "--run-name", "sub"])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "Traceback" not in err
    assert f"--storage-path/--run-name '{storage}/sub'" in err
    assert ("symbolic link to 'nowhere', which does not exist" in err if "dang" in storage
            else "is a file, not a folder" in err)
    _unchanged(blocked, before)


def test_ray_run_training_checks_its_local_run_folder_before_ray(blocked: Path) -> None:
    from liif.train import TrainConfig
    from pipeline.training.ray_train import RayTrainOptions, run_training

    _images(blocked / "data")
    before = _snapshot(blocked)
    options = RayTrainOptions(storage_path="dang", run_name="sub")
    with pytest.raises(FolderPathError, match="storage_path/run_name .*symbolic link"):
        run_training(TrainConfig(steps=1), options, data=["data"])
    _unchanged(blocked, before)


def test_train_ttsr_out_in_a_dangling_link_exits_2(blocked: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train_ttsr import main
    from pipeline.training.ttsr import TTSRTrainConfig, train_ttsr

    (blocked / "gt").mkdir()
    before = _snapshot(blocked)
    with pytest.raises(OutputNotWritableError, match="'dang/run'.*symbolic link"):
        train_ttsr(TTSRTrainConfig(gt=("gt",), out="dang/run", steps=1), samples=[])
    rc = _exit_code(main, ["--gt", "gt", "--out", "afile/run", "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file, not a folder" in err and "Traceback" not in err
    _unchanged(blocked, before)


@pytest.mark.parametrize("output", ["dang", "dang/gt", "afile", "afile/gt"])
def test_make_gt_output_in_the_way_exits_2_and_creates_nothing(
        blocked: Path, capsys: pytest.CaptureFixture[str], output: str) -> None:
    from jobs.make_gt import main

    _images(blocked / "data")
    before = _snapshot(blocked)
    rc = _exit_code(main, ["--input", "data", "--output", output, "--patch", "16", "--scales",
                           "2", "--lr-size", "8", "--workers", "0", "--flat-threshold", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert f"--output {output!r}" in err and "Traceback" not in err
    _unchanged(blocked, before)


@pytest.mark.parametrize("flag", ["--out", "--json"])
@pytest.mark.parametrize("target", ["dang", "dang/report.md", "afile/report.md"])
def test_evaluate_report_in_the_way_exits_2_and_creates_nothing(
        blocked: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str], flag: str,
        target: str) -> None:
    from jobs.evaluate import main

    _tif(blocked / "s.tif", size=64)
    before = _snapshot(blocked)
    rc = _exit_code(main, ["--model", str(tiny_liif), "--raster", "r=s.tif", "--window", "32",
                           "--scales", "2", flag, target])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert f"{flag} {target!r}" in err
    assert "symbolic link to 'nowhere'" in err if "dang" in target else "is a file" in err
    _unchanged(blocked, before)
