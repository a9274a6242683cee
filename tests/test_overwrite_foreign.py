"""``--overwrite`` of an output this project made never deletes what the user put inside it.

Before it deletes anything, the output is listed in full; an entry this project does not write
there (a file or folder at group level or inside one of our groups or arrays, a dot file, a
symbolic link, wherever it points) makes the job refuse (exit 2) naming it, and every byte under
the test's folder stays as it was. An output holding only what we write (also the temporary
files of our atomic writers) is still replaced (:mod:`pipeline.io.ownership`; adversarial sweep
adv9 D5)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
import zarr
from conftest import tree_digest, upscale_cli
from PIL import Image
from rasterio.transform import Affine

from pipeline.errors import OutputExistsError
from pipeline.io.locations import resolve
from pipeline.io.ownership import list_tree, remove_listed, zarr_foreign

COMMON = ["--executor", "in-process", "--no-progress", "--workers", "1", "--threads-per-worker",
          "1"]
HEX = "0123456789abcdef" * 2  # a uuid4().hex-shaped token


def _scene(path: Path) -> None:
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=24, height=20, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(40.0, 0, 500000, 0, -40.0, 4e6)) as ds:
        ds.write(rng.integers(1, 255, (3, 20, 24), dtype=np.uint8))


def _job(d: Path, out: Path | str, *extra: str) -> list[str]:
    return ["--input", str(d / "scene.tif"), "--output", str(out), "--model",
            str(d / "liif.safetensors"), "--tile", "32", "--chunk", "16", *COMMON, *extra]


V3 = ("--scale", "2", "4", "--overviews", "1")
V2 = ("--scale", "2", "4", "--overviews", "1", "--zarr-format", "2")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_liif: Path) -> dict[str, Path]:
    """One output of each layout (v3 and v2, each with a further product and an overview),
    made once; each test copies the one it needs."""
    d = tmp_path_factory.mktemp("made")
    _scene(d / "scene.tif")
    shutil.copy(tiny_liif, d / "liif.safetensors")
    for name, flags in (("v3", V3), ("v2", V2)):
        assert upscale_cli(_job(d, d / f"{name}.zarr", *flags)) == 0
    return {"d": d, "v3": d / "v3.zarr", "v2": d / "v2.zarr"}


@pytest.fixture()
def d(tmp_path: Path, made: dict[str, Path]) -> Path:
    """A private folder: the scene, the model, and ``outside/keep.txt`` (a link's target)."""
    shutil.copy(made["d"] / "scene.tif", tmp_path / "scene.tif")
    shutil.copy(made["d"] / "liif.safetensors", tmp_path / "liif.safetensors")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("precious")
    return tmp_path


def _copy(made: dict[str, Path], layout: str, d: Path) -> Path:
    out = d / "o.zarr"
    shutil.copytree(made[layout], out, symlinks=True)
    return out


def _link_chunk(o: Path, rel: str, target: Path) -> None:
    chunk = o / rel
    assert chunk.is_file(), f"{rel} is not a chunk of this output"
    chunk.unlink()
    os.symlink(target, chunk)


# (layout, what the user adds: fn(output, test folder), what the message must name)
Added = Callable[[Path, Path], object]
FOREIGN: dict[str, tuple[str, Added, str]] = {
    "file_at_group_level": ("v3", lambda o, d: (o / "mynotes.txt").write_text("mine"),
                            "mynotes.txt"),
    "file_inside_image": ("v3", lambda o, d: (o / "image" / "notes.txt").write_text("mine"),
                          "image/notes.txt"),
    "file_among_chunks": ("v3", lambda o, d: (o / "image" / "c" / "todo.md").write_text("mine"),
                          "image/c/todo.md"),
    "user_subfolder": ("v3", lambda o, d: ((o / "analysis").mkdir(),
                                           (o / "analysis" / "plot.csv").write_text("1,2")),
                       "analysis/"),
    "empty_user_subfolder": ("v3", lambda o, d: (o / "analysis").mkdir(), "analysis/"),
    "dot_file": ("v3", lambda o, d: (o / ".mynotes").write_text("mine"), ".mynotes"),
    "file_in_manifest_group": ("v3", lambda o, d: (o / "_manifest" / "notes.txt").write_text("x"),
                               "_manifest/notes.txt"),
    "file_in_product_group": ("v3", lambda o, d: (o / "scales" / "x2" / "README").write_text("x"),
                              "scales/x2/README"),
    "file_in_overviews_group": ("v3", lambda o, d: (o / "overviews" / "n.txt").write_text("x"),
                                "overviews/n.txt"),
    "symlink_to_a_file_outside": ("v3", lambda o, d: os.symlink(d / "outside" / "keep.txt",
                                                                 o / "link.txt"),
                                  "link.txt (symlink)"),
    "symlink_to_a_folder_outside": ("v3", lambda o, d: os.symlink(d / "outside", o / "ext"),
                                    "ext (symlink)"),
    "dot_symlink": ("v3", lambda o, d: os.symlink(d / "outside", o / ".cache"),
                    ".cache (symlink)"),
    "symlink_in_place_of_a_chunk": ("v3", lambda o, d: _link_chunk(o, "image/c/0/0/0",
                                                                   d / "outside" / "keep.txt"),
                                    "image/c/0/0/0 (symlink)"),
    "v2_file_at_group_level": ("v2", lambda o, d: (o / "mynotes.txt").write_text("mine"),
                               "mynotes.txt"),
    "v2_file_inside_coordinates": ("v2", lambda o, d: (o / "x" / "notes.txt").write_text("mine"),
                                   "x/notes.txt"),
    "v2_symlink_in_place_of_a_chunk": ("v2", lambda o, d: _link_chunk(
        o, "image/0.0.0", d / "outside" / "keep.txt"), "image/0.0.0 (symlink)"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_overwrite_refuses_an_output_holding_user_files(
        case: str, made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout, add, named = FOREIGN[case]
    o = _copy(made, layout, d)
    add(o, d)
    before = tree_digest(d)
    capsys.readouterr()
    rc = upscale_cli(_job(d, o, *(V3 if layout == "v3" else V2), "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert named in err and "did not write" in err, err[-800:]
    assert "move them out of it" in err and "delete the output yourself" in err
    assert tree_digest(d) == before  # nothing deleted or written, links and targets included
    assert (d / "outside" / "keep.txt").read_text() == "precious"


def test_foreign_entries_are_named_once_and_the_first_few_only(
        made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    o = _copy(made, "v3", d)
    (o / "analysis").mkdir()
    for i in range(3):
        (o / "analysis" / f"{i}.csv").write_text("x")
    for i in range(7):
        (o / f"note{i}.txt").write_text("x")
    before = tree_digest(d)
    assert upscale_cli(_job(d, o, *V3, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "analysis/," in err and "analysis/0.csv" not in err  # the folder, not its files
    assert "and 3 more" in err  # 8 foreign entries: 5 named
    assert tree_digest(d) == before


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("layout", ["v3", "v2"])
def test_our_own_output_is_still_replaced(layout: str, made: dict[str, Path], d: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Products, overviews, the v2 coordinates, manifest records and the temporary files a
    killed job leaves (ours and zarr's) are all ours: --overwrite replaces the output, and the
    result is what a fresh run writes."""
    flags = V3 if layout == "v3" else V2
    o = _copy(made, layout, d)
    leftovers = [o / "_manifest" / f".0_0.json.{HEX}.tmp",  # pipeline.io.atomic.write_bytes
                 o / f"zarr.{HEX}.partial" if layout == "v3" else o / f".zattrs.{HEX}.partial",
                 (o / "image" / "c" / "0" / "0" / f"1.{HEX}.partial") if layout == "v3"
                 else o / "image" / f"0.1.{HEX}.partial"]
    for p in leftovers:
        p.write_bytes(b"torn")
    assert zarr_foreign(list_tree(resolve(str(o)))) == []
    assert upscale_cli(_job(d, o, *flags, "--overwrite")) == 0, capsys.readouterr().err[-800:]
    assert not any(p.exists() for p in leftovers)
    fresh = d / "fresh.zarr"
    assert upscale_cli(_job(d, fresh, *flags)) == 0
    assert _names(o) == _names(fresh)
    a, b = zarr.open_group(str(o), mode="r"), zarr.open_group(str(fresh), mode="r")
    for arr in ("image", "overviews/1", "scales/x2/image"):
        np.testing.assert_array_equal(a[arr][:], b[arr][:])
    assert (d / "outside" / "keep.txt").read_text() == "precious"


def test_overwrite_with_another_layout_leaves_nothing_stale(
        made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    o = _copy(made, "v3", d)
    assert upscale_cli(_job(d, o, "--scale", "3", "--shard", "32", "--overwrite")) == 0, \
        capsys.readouterr().err[-800:]
    assert not (o / "scales").exists() and not (o / "overviews").exists()
    assert zarr.open_array(str(o / "image"), mode="r").shape == (3, 60, 72)
    # the sharded output is ours too
    assert upscale_cli(_job(d, o, "--scale", "3", "--shard", "32", "--overwrite")) == 0


def test_output_reached_through_a_symlink_is_replaced_and_its_link_kept(
        made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = _copy(made, "v3", d)
    os.symlink(real, d / "link.zarr")
    assert upscale_cli(_job(d, d / "link.zarr", *V3, "--overwrite")) == 0, \
        capsys.readouterr().err[-800:]
    assert (d / "link.zarr").is_symlink() and (real / "zarr.json").is_file()


# ----------------------------------------------------------------------------- fsspec stores


def _memory_output(shape: tuple[int, int, int] = (3, 16, 16)) -> tuple[str, object]:
    from pipeline.io.zarr_create import create_zarr_output
    from pipeline.io.zarr_output import OutputSpec

    uri = f"memory://d5-{uuid.uuid4().hex}/o.zarr"
    out = create_zarr_output(OutputSpec(uri), shape=shape, dtype="uint8", chunks=(8, 8),
                             overviews=1, products=[("scales/x2", (32, 32), {})])
    out.write((0, 16), (0, 16), np.full(shape, 7, np.uint8))  # type: ignore[attr-defined]
    out.manifest.mark_done("0_0", {"out_window": [[0, 16], [0, 16]]})  # type: ignore[attr-defined]
    return uri, out


@pytest.mark.parametrize("where", ["mynotes.txt", ".mynotes", "image/notes.txt",
                                   "analysis/plot.csv"])
def test_memory_output_with_a_user_file_is_refused(where: str) -> None:
    from pipeline.io.zarr_create import check_output_target, create_zarr_output
    from pipeline.io.zarr_output import OutputSpec

    uri, _ = _memory_output()
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{uri}/{where}", b"mine")
    before = sorted(fs.find(uri))
    spec = OutputSpec(uri)
    with pytest.raises(OutputExistsError, match=r"did not write \(" + where.split("/")[0]):
        check_output_target(spec, overwrite=True)
    with pytest.raises(OutputExistsError, match="delete the output yourself"):
        create_zarr_output(spec, shape=(1, 4, 4), dtype="uint8", chunks=(4, 4), overwrite=True)
    assert sorted(fs.find(uri)) == before and fs.cat_file(f"{uri}/{where}") == b"mine"


def test_memory_output_of_ours_is_replaced() -> None:
    from pipeline.io.zarr_create import create_zarr_output
    from pipeline.io.zarr_output import OutputSpec

    uri, _ = _memory_output()
    fs = fsspec.filesystem("memory")
    new = create_zarr_output(OutputSpec(uri), shape=(1, 4, 4), dtype="uint8", chunks=(4, 4),
                             overwrite=True)
    assert new.shape == (1, 4, 4)
    left = {p.split("o.zarr/", 1)[1] for p in fs.find(uri)}
    assert not any(p.startswith(("scales", "overviews")) for p in left), left
    assert not any(p.endswith("0_0.json") for p in left), left


def test_s3_output_with_a_user_file_is_refused(s3_server: dict) -> None:
    from pipeline.io.zarr_create import create_zarr_output
    from pipeline.io.zarr_output import OutputSpec

    fs, opts = s3_server["fs"], s3_server["options"]
    uri = f"s3://liif-test/d5-{uuid.uuid4().hex}/o.zarr"
    spec = OutputSpec(uri, storage_options=opts)
    create_zarr_output(spec, shape=(1, 8, 8), dtype="uint8", chunks=(4, 4), overviews=1)
    fs.pipe_file(f"{uri}/analysis/plot.csv", b"1,2")
    with pytest.raises(OutputExistsError, match=r"did not write \(analysis/\)"):
        create_zarr_output(spec, shape=(1, 8, 8), dtype="uint8", chunks=(4, 4), overwrite=True)
    fs.invalidate_cache()
    assert fs.cat_file(f"{uri}/analysis/plot.csv") == b"1,2"
    fs.rm_file(f"{uri}/analysis/plot.csv")
    new = create_zarr_output(spec, shape=(1, 2, 2), dtype="uint8", chunks=(2, 2), overwrite=True)
    assert new.shape == (1, 2, 2)
    fs.invalidate_cache()
    assert not fs.exists(f"{uri}/overviews/1/zarr.json")


# ----------------------------------------------------------------------------- the delete


def test_delete_keeps_what_appeared_after_the_listing_and_never_follows_a_link(
        made: dict[str, Path], d: Path) -> None:
    o = _copy(made, "v3", d)
    loc = resolve(str(o))
    tree = list_tree(loc)
    assert zarr_foreign(tree) == []
    (o / "late.txt").write_text("mine")  # added after the check
    shutil.rmtree(o / "overviews" / "1")  # a listed folder replaced by a link to elsewhere
    os.symlink(d / "outside", o / "overviews" / "1")
    with pytest.raises(OutputExistsError, match=r"late\.txt.*were kept"):
        remove_listed(loc, tree)
    assert (o / "late.txt").read_text() == "mine"
    assert (o / "overviews" / "1").is_symlink()
    assert (d / "outside" / "keep.txt").read_text() == "precious"
    assert not (o / "image").exists() and not (o / "zarr.json").exists()  # ours went


# ----------------------------------------------------------------------------- make_gt


def _gt_main(argv: list[str]) -> int:
    from jobs.make_gt import main

    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1


@pytest.fixture()
def gt(tmp_path: Path) -> dict[str, Path | list[str]]:
    """A GT output made by make_gt, the folder it was made from and the argv to remake it."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("precious")
    out = tmp_path / "gt"
    argv = ["--input", str(imgs), "--output", str(out), "--patch", "16", "--scales", "2",
            "--lr-size", "8", "--workers", "0"]
    assert _gt_main(argv) == 0
    assert (out / "_manifest.json").is_file() and (out / "shards").is_dir()
    return {"d": tmp_path, "out": out, "argv": argv}


GT_FOREIGN: dict[str, tuple[Added, str]] = {
    "dot_file": (lambda o, d: (o / ".mynotes").write_text("mine"), ".mynotes"),
    "dot_symlink": (lambda o, d: os.symlink(d / "outside", o / ".cache"), ".cache (symlink)"),
    "dot_symlink_to_a_file": (lambda o, d: os.symlink(d / "outside" / "keep.txt", o / ".k"),
                              ".k (symlink)"),
    "symlink_in_shards": (lambda o, d: os.symlink(d / "outside", o / "shards" / "extra"),
                          "shards/extra (symlink)"),
    "dot_file_in_shards": (lambda o, d: (o / "shards" / ".notes").write_text("x"),
                           "shards/.notes"),
    "file_in_shards": (lambda o, d: (o / "shards" / "mine.parquet").write_text("x"),
                       "shards/mine.parquet"),
    "dot_folder": (lambda o, d: ((o / ".git").mkdir(), (o / ".git" / "HEAD").write_text("x")),
                   ".git/"),
}


@pytest.mark.parametrize("case", sorted(GT_FOREIGN))
def test_make_gt_overwrite_refuses_a_gt_folder_holding_user_files(
        case: str, gt: dict, capsys: pytest.CaptureFixture[str]) -> None:
    add, named = GT_FOREIGN[case]
    add(gt["out"], gt["d"])
    before = tree_digest(gt["d"])
    capsys.readouterr()
    rc = _gt_main([*gt["argv"], "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "holds files that are not ground truth" in err and named in err, err[-800:]
    assert "move them out of it" in err
    assert tree_digest(gt["d"]) == before
    assert (gt["d"] / "outside" / "keep.txt").read_text() == "precious"


def test_make_gt_overwrite_still_replaces_its_own_output(
        gt: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = gt["out"]
    leftovers = [out / f"._manifest.json.{HEX}.tmp", out / "shards" / f".part-00007.parquet.{HEX}.tmp",
                 out / "shards" / "part-00099.parquet"]
    for p in leftovers:
        p.write_bytes(b"torn")
    assert _gt_main([*gt["argv"], "--overwrite"]) == 0, capsys.readouterr().err[-800:]
    assert not any(p.exists() for p in leftovers)
    assert (out / "_manifest.json").is_file()


def test_make_gt_overwrite_on_memory_refuses_a_dot_file(gt: dict) -> None:
    from pipeline.gt.config import GTConfig
    from pipeline.gt.job import make_gt

    fs = fsspec.filesystem("memory")
    out = f"memory://gt-{uuid.uuid4().hex}/gt"
    cfg = GTConfig(inputs=(str(gt["d"] / "imgs"),), output=out, patch=16, scales=(2.0,),
                   scale_range=None, lr_size=8)
    assert make_gt(cfg, workers=0)["samples"] > 0
    fs.pipe_file(f"{out}/.mynotes", b"mine")
    before = sorted(fs.find(out))
    with pytest.raises(OutputExistsError, match=r"not ground truth \(\.mynotes\)"):
        make_gt(cfg, workers=0, overwrite=True)
    assert sorted(fs.find(out)) == before
    fs.rm_file(f"{out}/.mynotes")
    assert make_gt(cfg, workers=0, overwrite=True)["samples"] > 0
    assert not fs.exists(f"{out}/.mynotes")
