"""Defects N6-N9 of the adversarial sweep (.notes/adv10.md), each fixed at its root.

N6: a tile record in ``_manifest/`` that is not a regular file (a folder, a FIFO, a link to a
    folder) is an unreadable record: a resume redoes the tile with a warning and replaces it; a
    folder that holds anything is never deleted, the job stops with exit 2 naming it.
N7: every ``jobs.train`` input (--config, --data, --gt, --val-data, --init) is checked before the
    run folder is created and before Ray starts: exit 2 naming the flag, the path and the fault.
N8: make_gt probes its inputs before it creates (or, under --overwrite, deletes) the output; a
    run that fails before its first shard removes the output folder it created, nothing else.
N9: ``train --gt`` refuses an unfinished make_gt output (``complete: false``): finish it with
    make_gt --resume.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import cli_exit, last_json, random_tif, tree_digest, upscale_cli
from PIL import Image

from pipeline.errors import ConfigError, InputNotFoundError, InputReadError, OutputCorruptError
from pipeline.io.manifest import TileManifest

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "jobs" / "configs" / "smoke.yaml")


def _exit_code(fn, argv: list[str]) -> int:
    return cli_exit(fn, argv)


def _tif(path: Path, size: int = 32, seed: int = 0) -> Path:
    return random_tif(path, size, seed, low=1)


def _images(folder: Path, n: int = 2, size: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return folder


def _snapshot(d: Path) -> dict[str, str]:
    """Every entry under ``d``: links as their targets, FIFOs as such (never opened), files by
    digest, folders as "dir"."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            out[str(p)] = (f"link:{os.readlink(p)}" if stat.S_ISLNK(mode) else
                           "dir" if stat.S_ISDIR(mode) else
                           tree_digest(p)[str(p)] if stat.S_ISREG(mode) else "special")
    return out


# ------------------------------------------------------- N6: records that are not files


def _record(tmp_path: Path) -> tuple[TileManifest, Path]:
    m = TileManifest(str(tmp_path / "o.zarr"))
    m.mark_done("0_0", {"worker": "w"})
    m.mark_done("0_1", {"worker": "w"})
    return m, tmp_path / "o.zarr" / "_manifest" / "0_0.json"


@pytest.mark.parametrize("kind", ["folder", "fifo", "link_to_folder"])
def test_a_record_that_is_not_a_regular_file_is_unreadable_and_replaceable(
        tmp_path: Path, kind: str) -> None:
    m, path = _record(tmp_path)
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        elsewhere.mkdir()
        (elsewhere / "keep.txt").write_text("mine")
        path.symlink_to(elsewhere)
    assert m.done_keys() == {"0_0", "0_1"}
    why = {"folder": "is a folder, not a record file", "fifo": "is a FIFO",
           "link_to_folder": r"is a folder \(through a symbolic link\)"}[kind]
    with pytest.raises(OutputCorruptError, match=why) as info:
        m.record("0_0")  # a FIFO is never opened blocking
    assert str(path) in str(info.value)
    assert m.record("0_1")["worker"] == "w"  # the others still read
    m.forget("0_0")  # the tile is redone: whatever is there goes, never a link's target
    assert not os.path.lexists(path)
    if kind == "link_to_folder":
        assert (elsewhere / "keep.txt").read_text() == "mine"
    m.mark_done("0_0", {"worker": "again"})
    assert m.record("0_0")["worker"] == "again"


def test_mark_done_replaces_an_empty_folder_at_the_record_name(tmp_path: Path) -> None:
    m, path = _record(tmp_path)
    path.unlink()
    path.mkdir()  # no forget first: the rename alone could not replace a folder
    m.mark_done("0_0", {"worker": "again"})
    assert path.is_file() and m.record("0_0")["worker"] == "again"


def test_a_folder_record_that_holds_files_is_never_deleted(tmp_path: Path) -> None:
    m, path = _record(tmp_path)
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    for act in (lambda: m.forget("0_0"), lambda: m.mark_done("0_0", {"worker": "w"})):
        with pytest.raises(OutputCorruptError, match="is a folder that is not empty") as info:
            act()
        assert str(path) in str(info.value) and "--resume" in str(info.value)
    assert (path / "notes.txt").read_text() == "mine"


def test_a_folder_record_on_an_object_store_is_unreadable_then_replaced() -> None:
    m = TileManifest(f"memory://adv10-{uuid.uuid4().hex}/o.zarr")
    m.mark_done("0_1", {"worker": "w"})
    fs, root = m._fs_dir
    fs.pipe_file(f"{root}/0_0.json/inner", b"x")  # a prefix where the record goes
    assert m.done_keys() == {"0_0", "0_1"}
    with pytest.raises(OutputCorruptError, match=r"memory://.*/_manifest/0_0\.json' is a folder"):
        m.record("0_0")
    m.forget("0_0")  # a prefix holding objects stays; the new record is written beside it
    m.mark_done("0_0", {"worker": "again"})
    assert m.record("0_0")["worker"] == "again"
    assert fs.cat_file(f"{root}/0_0.json/inner") == b"x"


def _upscale_argv(d: Path, model: Path, *extra: str) -> list[str]:
    return ["--input", str(d / "a.tif"), "--output", str(d / "o.zarr"), "--scale", "2",
            "--tile", "32", "--chunk", "16", "--model", str(model), "--executor", "in-process",
            "--no-progress", "--workers", "1", "--threads-per-worker", "1", *extra]


def test_resume_redoes_a_tile_whose_record_is_a_folder(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(tmp_path / "a.tif")
    assert upscale_cli(_upscale_argv(tmp_path, tiny_liif)) == 0
    capsys.readouterr()
    want = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image", mode="r")[...])
    record = tmp_path / "o.zarr" / "_manifest" / "1_1.json"
    record.unlink()
    record.mkdir()
    with pytest.warns(UserWarning, match=r"_manifest/1_1\.json' is a folder.*tile 1_1 is redone"):
        rc = upscale_cli(_upscale_argv(tmp_path, tiny_liif, "--resume"))
    out = capsys.readouterr()
    assert rc == 0, out.err[-800:]
    s = json.loads(out.out.strip().splitlines()[-1])
    assert (s["tiles_redone"], s["tiles_run"], s["tiles_verified"]) == (1, 1, 3)
    got = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image", mode="r")[...])
    np.testing.assert_array_equal(got, want)
    assert record.is_file() and TileManifest(str(tmp_path / "o.zarr")).record("1_1")
    assert upscale_cli(_upscale_argv(tmp_path, tiny_liif, "--resume")) == 0
    s = last_json(capsys)
    assert (s["tiles_redone"], s["tiles_run"], s["tiles_verified"]) == (0, 0, 4)


def test_resume_with_a_folder_record_holding_files_exits_2_naming_it(
        tmp_path: Path, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tif(tmp_path / "a.tif")
    assert upscale_cli(_upscale_argv(tmp_path, tiny_liif)) == 0
    capsys.readouterr()
    record = tmp_path / "o.zarr" / "_manifest" / "1_1.json"
    record.unlink()
    record.mkdir()
    (record / "mine.txt").write_text("keep me")
    with pytest.warns(UserWarning, match="is a folder"):
        rc = upscale_cli(_upscale_argv(tmp_path, tiny_liif, "--resume"))
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "Traceback" not in err and str(record) in err and "not empty" in err
    assert (record / "mine.txt").read_text() == "keep me"


# ------------------------------------------------------------------ N7: training inputs


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    os.symlink("nowhere", tmp_path / "dang")
    (tmp_path / "afile.txt").write_text("mine\n")
    (tmp_path / "val" / "benchmark" / "Set5").mkdir(parents=True)  # no HR folder

    def no_ray() -> None:
        raise AssertionError("Ray was started before the inputs were checked")

    import pipeline.run.ray_executor as rx

    monkeypatch.setattr(rx, "ensure_ray", no_ray)
    return tmp_path


CASES = {
    "data_missing": (["--data", "nosuch"], "--data 'nosuch' does not exist"),
    "data_dangling": (["--data", "dang"], "--data 'dang' is a symbolic link to 'nowhere', which "
                                          "does not exist"),
    "data_empty": (["--data", "empty"], "--data 'empty' is a folder that holds no images"),
    "data_not_image": (["--data", "afile.txt"], "--data 'afile.txt' is a file but not an image"),
    "data_second": (["--data", "data", "nosuch"], "--data 'nosuch' does not exist"),
    "gt_missing": (["--gt", "nosuch"], "--gt 'nosuch' does not exist"),
    "gt_dangling": (["--gt", "dang"], "--gt 'dang' is a symbolic link to 'nowhere'"),
    "gt_file": (["--gt", "afile.txt"], "--gt 'afile.txt' is a regular file, not the output "
                                       "folder of make_gt"),
    "gt_not_gt": (["--gt", "data"], "--gt 'data' is not a ground-truth output of make_gt"),
    "val_missing": (["--data", "data", "--val-data", "nosuch"], "--val-data 'nosuch' does not "
                                                               "exist"),
    "val_dangling": (["--data", "data", "--val-data", "dang"], "--val-data 'dang' is a symbolic "
                                                              "link"),
    "val_no_hr": (["--data", "data", "--val-data", "val"], "--val-data 'val' has no folder "
                                                          "benchmark/Set5/HR"),
    "init_missing": (["--data", "data", "--init", "nosuch.safetensors"],
                     "--init 'nosuch.safetensors' does not exist"),
    "init_dangling": (["--data", "data", "--init", "dang"], "--init 'dang' is a symbolic link"),
    "init_folder": (["--data", "data", "--init", "empty"], "--init 'empty' is a folder, not a "
                                                           "weights file"),
    "init_garbage": (["--data", "data", "--init", "afile.txt"], "--init 'afile.txt': "),
}


@pytest.mark.parametrize("backend", ["local", "ray"])
@pytest.mark.parametrize("case", list(CASES))
def test_train_refuses_a_bad_input_before_creating_anything(
        work: Path, capsys: pytest.CaptureFixture[str], case: str, backend: str) -> None:
    from jobs.train import main

    argv, want = CASES[case]
    before = _snapshot(work)
    rc = _exit_code(main, ["--backend", backend, "--steps", "1", "--config", SMOKE, *argv,
                           "--storage-path", "runs", "--run-name", "r1"])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "Traceback" not in err and want in err, err[-800:]
    assert _snapshot(work) == before and not (work / "runs").exists()


@pytest.mark.parametrize("config", ["nosuch.yaml", "dang", "empty"])
def test_train_refuses_a_bad_config_naming_the_flag(
        work: Path, capsys: pytest.CaptureFixture[str], config: str) -> None:
    from jobs.train import main

    before = _snapshot(work)
    rc = _exit_code(main, ["--backend", "local", "--config", config, "--data", "data",
                           "--storage-path", "runs", "--run-name", "r1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert {"nosuch.yaml": "--config 'nosuch.yaml' does not exist",
            "dang": "--config 'dang' is a symbolic link to 'nowhere'",
            "empty": "--config 'empty' is a folder, not a YAML config file"}[config] in err
    assert _snapshot(work) == before


def test_train_config_data_is_checked_too(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train import main

    cfg = work / "c.yaml"
    cfg.write_text(Path(SMOKE).read_text() + "data: [nosuch]\n")
    before = _snapshot(work)
    rc = _exit_code(main, ["--backend", "local", "--config", str(cfg), "--storage-path", "runs",
                           "--run-name", "r1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"data (in --config {str(cfg)!r}) 'nosuch' does not exist" in err
    assert _snapshot(work) == before


def test_local_train_reads_its_images_before_the_run_folder(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.train import main

    _images(work / "tiny", size=8)  # smaller than inp_size 16: the sampler has nothing
    rc = _exit_code(main, ["--backend", "local", "--steps", "1", "--config", SMOKE, "--data",
                           "tiny", "--storage-path", "runs", "--run-name", "r1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "--data ['tiny']" in err, err[-800:]
    assert not (work / "runs").exists()


def test_run_training_checks_its_inputs_before_ray(work: Path) -> None:
    from liif.train import TrainConfig
    from pipeline.training.ray_train import RayTrainOptions, run_training

    before = _snapshot(work)
    options = RayTrainOptions(storage_path="runs", run_name="r1")
    with pytest.raises(InputNotFoundError, match="data 'dang' is a symbolic link"):
        run_training(TrainConfig(steps=1), options, data=["dang"])
    with pytest.raises(InputNotFoundError, match="gt 'nosuch' does not exist"):
        run_training(TrainConfig(steps=1), options, gt="nosuch")
    with pytest.raises(ConfigError, match="val_root 'val' has no folder benchmark/Set5/HR"):
        run_training(TrainConfig(steps=1), RayTrainOptions(
            storage_path="runs", run_name="r1", val_root="val"), data=["data"])
    assert _snapshot(work) == before


# ------------------------------------------------- N8: make_gt creates nothing on refusal


GT_ARGS = ["--patch", "16", "--scales", "2", "--lr-size", "8", "--workers", "0",
           "--flat-threshold", "0"]


def _gt_cli(argv: list[str]) -> int:
    from jobs.make_gt import main

    return _exit_code(main, argv)


@pytest.mark.parametrize("output", ["gt", "new/deeper/gt"])
@pytest.mark.parametrize("bad", ["notzarr", "unfinished"])
def test_make_gt_refusing_an_input_leaves_no_output_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        bad: str, output: str) -> None:
    monkeypatch.chdir(tmp_path)
    if bad == "notzarr":
        (tmp_path / "u.zarr").mkdir()  # no zarr.json: refused when it is opened
    else:  # an output of ours a job is still writing (complete: false)
        g = zarr.open_group(str(tmp_path / "u.zarr"), mode="w")
        g.attrs["created_by"] = "liif-pipeline 0.1.0"
        a = g.create_array("image", shape=(3, 32, 32), dtype="uint8", chunks=(3, 16, 16))
        a.attrs.update({"created_by": "liif-pipeline 0.1.0", "complete": False})
    before = _snapshot(tmp_path)
    rc = _gt_cli(["--input", "u.zarr", "--output", output, *GT_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-800:]
    assert ("not a zarr array or group" if bad == "notzarr" else "unfinished output") in err
    assert _snapshot(tmp_path) == before  # no gt/, no new/, no lease file


def test_make_gt_keeps_an_output_folder_that_existed_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u.zarr").mkdir()
    (tmp_path / "gt").mkdir()  # the user's, empty
    assert _gt_cli(["--input", "u.zarr", "--output", "gt", *GT_ARGS]) == 2
    assert (tmp_path / "gt").is_dir() and not any((tmp_path / "gt").iterdir())


def test_make_gt_overwrite_with_a_bad_input_keeps_the_previous_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "data", n=1, size=32)
    assert _gt_cli(["--input", "data", "--output", "gt", *GT_ARGS]) == 0
    (tmp_path / "u.zarr").mkdir()
    before = tree_digest(tmp_path / "gt")
    assert _gt_cli(["--input", "u.zarr", "--output", "gt", "--overwrite", *GT_ARGS]) == 2
    assert tree_digest(tmp_path / "gt") == before  # probed first, deleted never


def _failing_shards(monkeypatch: pytest.MonkeyPatch, after: int,
                    exc: BaseException) -> None:
    import pipeline.gt.job as job

    real, calls = job.run_shard, []

    def shard(task):
        calls.append(task.name)
        if len(calls) > after:
            raise exc
        return real(task)

    monkeypatch.setattr(job, "run_shard", shard)


def test_make_gt_failing_before_its_first_shard_removes_the_output_it_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "data", n=1, size=32)
    before = _snapshot(tmp_path)
    _failing_shards(monkeypatch, 0, InputReadError("corrupt tile in data/0.png"))
    assert _gt_cli(["--input", "data", "--output", "new/gt", *GT_ARGS]) == 2
    assert "corrupt tile" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before  # its manifest (no shard) and its folders are gone
    (tmp_path / "gt").mkdir()  # one that existed before stays, the manifest in it too
    assert _gt_cli(["--input", "data", "--output", "gt", *GT_ARGS]) == 2
    assert [p.name for p in (tmp_path / "gt").iterdir()] == ["_manifest.json"]


def _interrupted_gt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A make_gt run really stopped after the first of its 4 shards (Ctrl-C)."""
    _images(tmp_path / "data", n=1, size=32)
    args = ["--input", "data", "--output", "gt", "--patches-per-shard", "1", *GT_ARGS]
    with monkeypatch.context() as mp:
        _failing_shards(mp, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            _gt_cli(args)
    return tmp_path / "gt"


def test_make_gt_keeps_the_finished_shards_of_a_run_that_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gt = _interrupted_gt(tmp_path, monkeypatch)
    man = json.loads((gt / "_manifest.json").read_text())
    assert man["complete"] is False and len(man["shards"]) == 1 and man["planned_shards"] == 4
    assert len(list((gt / "shards").iterdir())) == 1


# --------------------------------------------------------- N9: an unfinished GT output


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_train_refuses_an_unfinished_gt_output_saying_how_to_finish_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        backend: str) -> None:
    from jobs.train import main

    monkeypatch.chdir(tmp_path)
    gt = _interrupted_gt(tmp_path, monkeypatch)
    import pipeline.run.ray_executor as rx

    monkeypatch.setattr(rx, "ensure_ray", lambda: pytest.fail("Ray started"))
    capsys.readouterr()
    before = _snapshot(tmp_path)
    argv = ["--backend", backend, "--steps", "1", "--config", SMOKE, "--gt", "gt",
            "--storage-path", "runs", "--run-name", "r1"]
    rc = _exit_code(main, argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-800:]
    assert "--gt 'gt' is an unfinished make_gt output" in err and "complete: false" in err
    assert "1 of 4 planned shards" in err and "--resume" in err
    assert _snapshot(tmp_path) == before
    # finished with --resume as the message says, it trains
    assert _gt_cli(["--input", "data", "--output", "gt", "--patches-per-shard", "1", "--resume",
                    *GT_ARGS]) == 0
    assert json.loads((gt / "_manifest.json").read_text())["complete"] is True
    if backend == "local":
        assert _exit_code(main, argv) == 0
        assert (tmp_path / "runs" / "r1" / "final.safetensors").is_file()


def test_the_gt_readers_refuse_an_unfinished_output_and_accept_older_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.training.data import GTShardSampler, gt_shards

    monkeypatch.chdir(tmp_path)
    gt = _interrupted_gt(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="unfinished make_gt output"):
        GTShardSampler(str(gt), sample_q=4)
    man = json.loads((gt / "_manifest.json").read_text())
    del man["complete"]  # a manifest without the key (written before it existed): trusted
    (gt / "_manifest.json").write_text(json.dumps(man))
    assert [Path(p).name for p in gt_shards(str(gt))] == ["part-00000.parquet"]
    shutil.rmtree(gt / "shards")  # listed but gone
    with pytest.raises(ConfigError, match="lists shards that are missing"):
        gt_shards(str(gt), role="--gt")
    (gt / "_manifest.json").write_text("{torn")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        gt_shards(str(gt), role="--gt")
