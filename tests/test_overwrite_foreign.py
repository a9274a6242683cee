"""``--overwrite`` of an output this project made never deletes what the user put inside it.

Before it deletes anything, the output is listed in full; an entry this project does not write
there (a file or folder at group level or inside one of our groups or arrays, a dot file, a
symbolic link, wherever it points) makes the job refuse (exit 2) naming it, and every byte under
the test's folder stays as it was. An output holding only what we write (also the temporary
files of our atomic writers) is still replaced (:mod:`pipeline.io.ownership`; adversarial sweep
adv9 D5).

What is ours is read from the output itself, not guessed from the shape of names (adv10 N3): a
user's Zarr array under ``scales/`` or ``overviews/``, an overview level beyond the image's
``overviews`` count, a chunk-named file outside its array's chunk grid and a GT shard the
manifest does not list are all foreign; an array of ours (or a manifest) whose metadata cannot
be read is refused, never guessed at."""

from __future__ import annotations

import json
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
SH = ("--scale", "2", "4", "--overviews", "1", "--shard", "32")  # 80 x 96: 3 x 3 shards
FLAGS = {"v3": V3, "v2": V2, "sh": SH}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_liif: Path) -> dict[str, Path]:
    """One output of each layout (v3, v2 and sharded v3, each with a further product and an
    overview), made once; each test copies the one it needs."""
    d = tmp_path_factory.mktemp("made")
    _scene(d / "scene.tif")
    shutil.copy(tiny_liif, d / "liif.safetensors")
    for name, flags in FLAGS.items():
        assert upscale_cli(_job(d, d / f"{name}.zarr", *flags)) == 0
    return {"d": d, **{name: d / f"{name}.zarr" for name in FLAGS}}


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


def _user_array(o: Path, path: str) -> None:
    """The user's own Zarr array at ``path`` in our output: its own metadata, no created_by."""
    a = zarr.open_group(str(o), mode="r+").create_array(path, shape=(8, 8), dtype="f4",
                                                          chunks=(8, 8))
    a[:] = 1


def _put(o: Path, rel: str, data: str = "mine") -> None:
    (o / rel).parent.mkdir(parents=True, exist_ok=True)
    (o / rel).write_text(data)


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
    # adv10 N3: names that look like ours, but the output's own metadata does not hold them
    "user_array_under_scales": ("v3", lambda o, d: _user_array(o, "scales/ndvi/image"),
                                "scales/ndvi/"),
    "v2_user_array_under_scales": ("v2", lambda o, d: _user_array(o, "scales/ndvi/image"),
                                   "scales/ndvi/"),
    "sharded_user_array_under_scales": ("sh", lambda o, d: _user_array(o, "scales/ndvi/image"),
                                        "scales/ndvi/"),
    "user_array_beside_a_product": ("v3", lambda o, d: _user_array(o, "scales/x2/mask"),
                                    "scales/x2/mask/"),
    "unreadable_user_array_under_scales": ("v3", lambda o, d: _put(
        o, "scales/ndvi/image/zarr.json", "{not json"), "scales/ndvi/"),
    "user_array_as_an_overview_beyond_the_levels": ("v3", lambda o, d: _user_array(
        o, "overviews/5"), "overviews/5/"),
    "v2_user_array_as_an_overview_beyond_the_levels": ("v2", lambda o, d: _user_array(
        o, "overviews/2"), "overviews/2/"),
    "folder_as_an_overview_beyond_the_levels": ("v3", lambda o, d: _put(
        o, "overviews/5/zarr.json", "{}"), "overviews/5/"),
    "product_overview_the_product_does_not_have": ("v3", lambda o, d: _user_array(
        o, "scales/x2/overviews/1"), "scales/x2/overviews/1/"),
    "chunk_named_file_outside_the_grid": ("v3", lambda o, d: _put(o, "image/c/0/99/99"),
                                          "image/c/0/99/"),
    "chunk_named_file_past_the_last_column": ("v3", lambda o, d: _put(o, "image/c/0/4/6"),
                                              "image/c/0/4/6"),
    "chunk_named_file_of_a_band_chunk_that_does_not_exist": (
        "v3", lambda o, d: _put(o, "image/c/1/0/0"), "image/c/1/"),
    "chunk_named_file_with_a_leading_zero": ("v3", lambda o, d: _put(o, "image/c/0/0/01"),
                                             "image/c/0/0/01"),
    "zarr_temporary_named_outside_the_grid": ("v3", lambda o, d: _put(
        o, f"image/c/0/0/6.{HEX}.partial"), f"image/c/0/0/6.{HEX}.partial"),
    "chunk_outside_the_grid_of_an_overview": ("v3", lambda o, d: _put(o, "overviews/1/c/0/3/0"),
                                              "overviews/1/c/0/3/"),
    "chunk_outside_the_grid_of_a_product": ("v3", lambda o, d: _put(
        o, "scales/x2/image/c/0/0/3"), "scales/x2/image/c/0/0/3"),
    "v2_metadata_name_in_a_v3_array": ("v3", lambda o, d: _put(o, "image/.zarray", "{}"),
                                       "image/.zarray"),
    "shard_key_outside_the_shard_grid": ("sh", lambda o, d: _put(o, "image/c/0/0/3"),
                                         "image/c/0/0/3"),
    "chunk_key_of_the_chunk_grid_in_a_sharded_array": ("sh", lambda o, d: _put(
        o, "image/c/0/4/5"), "image/c/0/4/"),
    "v2_chunk_named_file_outside_the_grid": ("v2", lambda o, d: _put(o, "image/9.9.9"),
                                             "image/9.9.9"),
    "v2_chunk_named_file_past_the_last_row": ("v2", lambda o, d: _put(o, "image/0.5.0"),
                                              "image/0.5.0"),
    "v2_chunk_named_folder_in_a_dot_separated_array": ("v2", lambda o, d: _put(
        o, "image/0/0/0"), "image/0/"),
    "v2_coordinate_chunk_outside_its_grid": ("v2", lambda o, d: _put(o, "x/1"), "x/1"),
    "v2_coordinates_of_a_product_outside_its_grid": ("v2", lambda o, d: _put(
        o, "scales/x2/y/0.0"), "scales/x2/y/0.0"),
    "v2_array_metadata_at_group_level": ("v2", lambda o, d: _put(o, ".zarray", "{}"),
                                         ".zarray"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_overwrite_refuses_an_output_holding_user_files(
        case: str, made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout, add, named = FOREIGN[case]
    o = _copy(made, layout, d)
    add(o, d)
    before = tree_digest(d)
    capsys.readouterr()
    rc = upscale_cli(_job(d, o, *FLAGS[layout], "--overwrite"))
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


def _arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array of the output (the folders holding an array's metadata) -> its values."""
    out = {}
    for meta in sorted([*root.rglob("zarr.json"), *root.rglob(".zarray")]):
        if meta.name == ".zarray" or json.loads(meta.read_text())["node_type"] == "array":
            name = str(meta.parent.relative_to(root))
            out[name] = zarr.open_array(str(meta.parent), mode="r")[:]
    return out


@pytest.mark.parametrize("layout", sorted(FLAGS))
def test_our_own_output_is_still_replaced(layout: str, made: dict[str, Path], d: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Products, overviews, the v2 coordinates, shards, manifest records and the temporary files
    a killed job leaves (ours and zarr's, inside the chunk grid) are all ours: --overwrite
    replaces the output, and the result is what a fresh run writes."""
    flags = FLAGS[layout]
    o = _copy(made, layout, d)
    v2 = layout == "v2"
    leftovers = [o / "_manifest" / f".0_0.json.{HEX}.tmp",  # pipeline.io.atomic.write_bytes
                 o / f".zattrs.{HEX}.partial" if v2 else o / f"zarr.{HEX}.partial",
                 o / "image" / f"0.1.{HEX}.partial" if v2  # zarr's temporary of chunk 0.1.<n>
                 else o / "image" / "c" / "0" / "0" / f"1.{HEX}.partial",
                 o / "overviews" / "1" / (f".zarray.{HEX}.partial" if v2
                                          else f"zarr.{HEX}.partial"),
                 o / "scales" / "x2" / "image" / (f"0.2.{HEX}.partial" if v2  # 3 x 3 chunks
                                                  else f"c/0/2/2.{HEX}.partial" if layout == "v3"
                                                  else f"c/0/1/1.{HEX}.partial")]  # 2 x 2 shards
    if v2:
        leftovers.append(o / "x" / f"0.{HEX}.partial")
    for p in leftovers:
        p.write_bytes(b"torn")
    assert zarr_foreign(list_tree(resolve(str(o)))) == []
    assert upscale_cli(_job(d, o, *flags, "--overwrite")) == 0, capsys.readouterr().err[-800:]
    assert not any(p.exists() for p in leftovers)
    fresh = d / "fresh.zarr"
    assert upscale_cli(_job(d, fresh, *flags)) == 0
    assert _names(o) == _names(fresh)
    a, b = _arrays(o), _arrays(fresh)
    assert sorted(a) == sorted(b) and {"image", "overviews/1", "scales/x2/image"} <= set(a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (d / "outside" / "keep.txt").read_text() == "precious"


def _garble(o: Path, rel: str) -> None:
    (o / rel).write_text('{"zarr_format": 3, "node_type": "arr')  # truncated


def _drop(o: Path, rel: str) -> None:
    (o / rel).unlink()


# (layout, what breaks: fn(output), the array the message must name)
CORRUPT: dict[str, tuple[str, Callable[[Path], object], str]] = {
    "image_metadata_truncated": ("v3", lambda o: _garble(o, "image/zarr.json"), "'image'"),
    "overview_metadata_truncated": ("v3", lambda o: _garble(o, "overviews/1/zarr.json"),
                                    "'overviews/1'"),
    "listed_product_metadata_truncated": ("v3", lambda o: _garble(
        o, "scales/x2/image/zarr.json"), "'scales/x2/image'"),
    "listed_product_metadata_missing": ("v3", lambda o: _drop(o, "scales/x2/image/zarr.json"),
                                        "'scales/x2/image'"),
    "image_chunk_grid_of_another_kind": ("v3", lambda o: (o / "image" / "zarr.json").write_text(
        (o / "image" / "zarr.json").read_text().replace('"regular"', '"rectilinear"')),
        "'image'"),
    "image_overviews_attribute_not_a_count": ("v3", lambda o: (
        o / "image" / "zarr.json").write_text((o / "image" / "zarr.json").read_text().replace(
            '"overviews": 1', '"overviews": "one"')), "'image'"),
    "sharded_image_metadata_truncated": ("sh", lambda o: _garble(o, "image/zarr.json"),
                                         "'image'"),
    "v2_image_metadata_truncated": ("v2", lambda o: _garble(o, "image/.zarray"), "'image'"),
    "v2_image_attributes_truncated": ("v2", lambda o: _garble(o, "image/.zattrs"), "'image'"),
    "v2_coordinates_metadata_missing": ("v2", lambda o: _drop(o, "x/.zarray"), "'x'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_overwrite_refuses_an_output_whose_metadata_cannot_be_read(
        case: str, made: dict[str, Path], d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What an array of ours holds is read from its metadata; if that cannot be read, nothing
    is guessed: the job refuses (exit 2), names the array, and deletes nothing."""
    layout, breaks, named = CORRUPT[case]
    o = _copy(made, layout, d)
    breaks(o)
    before = tree_digest(d)
    capsys.readouterr()
    rc = upscale_cli(_job(d, o, *FLAGS[layout], "--overwrite"))
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "cannot be read" in err and named in err, err[-800:]
    assert "delete the output yourself" in err and "Traceback" not in err
    assert tree_digest(d) == before


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
    # adv10 N3: shaped like a shard, but the manifest neither lists nor plans it (1 shard)
    "shard_the_manifest_does_not_list": (lambda o, d: (o / "shards" / "part-00099.parquet")
                                         .write_text("x"), "shards/part-00099.parquet"),
    "shard_named_with_another_width": (lambda o, d: (o / "shards" / "part-0.parquet")
                                       .write_text("x"), "shards/part-0.parquet"),
    "temporary_of_a_shard_the_manifest_does_not_list": (
        lambda o, d: (o / "shards" / f".part-00099.parquet.{HEX}.tmp").write_text("x"),
        f"shards/.part-00099.parquet.{HEX}.tmp"),
    "unlisted_shard_beside_a_legacy_manifest": (
        lambda o, d: ((o / "_manifest.json").rename(o / "manifest.json"),
                      (o / "shards" / "part-00099.parquet").write_text("x")),
        "shards/part-00099.parquet"),
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


def _gt_tables(out: Path) -> dict[str, object]:
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p) for p in sorted((out / "shards").iterdir())}


@pytest.mark.parametrize("manifest", ["_manifest.json", "manifest.json"])
def test_make_gt_overwrite_still_replaces_its_own_output(
        manifest: str, gt: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """The shards the manifest lists or plans (a run killed after writing a shard, before
    recording it, leaves a planned one unlisted) and the temporary files of ours are replaced;
    the result is what a fresh run writes. Also for an output written before the manifest's
    rename (``manifest.json``)."""
    out = gt["out"]
    doc = json.loads((out / "_manifest.json").read_text())
    assert doc["planned_shards"] == 1 and list(doc["shards"]) == ["part-00000.parquet"]
    doc["shards"] = {}  # killed after writing part-00000.parquet, before recording it
    (out / "_manifest.json").unlink()
    (out / manifest).write_text(json.dumps(doc))
    leftovers = [out / f".{manifest}.{HEX}.tmp",
                 out / "shards" / f".part-00000.parquet.{HEX}.tmp"]
    for p in leftovers:
        p.write_bytes(b"torn")
    assert _gt_main([*gt["argv"], "--overwrite"]) == 0, capsys.readouterr().err[-800:]
    assert not any(p.exists() for p in leftovers)
    assert (out / "_manifest.json").is_file() and not (out / "manifest.json").exists()
    fresh = gt["d"] / "fresh"
    argv = list(gt["argv"])
    argv[argv.index("--output") + 1] = str(fresh)
    assert _gt_main(argv) == 0
    assert sorted(p.name for p in out.rglob("*")) == sorted(p.name for p in fresh.rglob("*"))
    a, b = _gt_tables(out), _gt_tables(fresh)
    assert list(a) == ["part-00000.parquet"] and list(a) == list(b)
    assert all(a[k].equals(b[k]) for k in a)  # type: ignore[attr-defined]


def test_make_gt_overwrite_of_a_manifest_without_a_shard_list_goes_by_the_names(
        gt: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest that lists no shards at all says nothing about them: the shard names decide
    (``shards/part-<n>.parquet``), as before the shard lists were read."""
    out = gt["out"]
    doc = json.loads((out / "_manifest.json").read_text())
    del doc["shards"]
    (out / "_manifest.json").write_text(json.dumps(doc))
    (out / "shards" / "part-00099.parquet").write_bytes(b"torn")
    assert _gt_main([*gt["argv"], "--overwrite"]) == 0, capsys.readouterr().err[-800:]
    assert not (out / "shards" / "part-00099.parquet").exists()


GT_CORRUPT: dict[str, Callable[[Path], object]] = {
    "truncated": lambda o: (o / "_manifest.json").write_text('{"format": "liif-gt/1", "sh'),
    "not_an_object": lambda o: (o / "_manifest.json").write_text("[1, 2]"),
    "shards_not_records": lambda o: (o / "_manifest.json").write_text(json.dumps(
        {"format": "liif-gt/1", "planned_shards": 1, "shards": ["part-00000.parquet"]})),
    "planned_shards_not_a_count": lambda o: (o / "_manifest.json").write_text(json.dumps(
        {"format": "liif-gt/1", "planned_shards": "1", "shards": {}})),
    "legacy_manifest_truncated": lambda o: (o / "manifest.json").write_text("{"),
    "not_utf8": lambda o: (o / "_manifest.json").write_bytes(b"\xff\xfe{}"),
}


@pytest.mark.parametrize("case", sorted(GT_CORRUPT))
def test_make_gt_overwrite_refuses_a_manifest_it_cannot_parse(
        case: str, gt: dict, capsys: pytest.CaptureFixture[str]) -> None:
    GT_CORRUPT[case](gt["out"])
    before = tree_digest(gt["d"])
    capsys.readouterr()
    rc = _gt_main([*gt["argv"], "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err[-800:]
    assert "manifest cannot be parsed" in err and "delete the output yourself" in err, err[-800:]
    assert "Traceback" not in err
    assert tree_digest(gt["d"]) == before


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
