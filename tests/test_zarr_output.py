"""pipeline.io.zarr_output: the Zarr output (its exports: tests/test_exports.py)."""

from __future__ import annotations

import os
import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import pytest
import zarr
from rasterio.crs import CRS

from pipeline.errors import (
    ConfigError,
    InputNotFoundError,
    OutputExistsError,
    OutputNotWritableError,
)
from pipeline.io import zarr_create
from pipeline.io.zarr_create import create_zarr_output, open_zarr_output, output_exists
from pipeline.io.zarr_output import CREATED_BY, OutputSpec, ZarrOutput

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

WKT = CRS.from_epsg(32633).to_wkt()
TRANSFORM = (2.5, 0.0, 500_000.0, 0.0, -2.5, 4_000_000.0)


def _attrs(job: dict | None = None, **extra) -> dict:
    attrs = {
        "scale": [2.0, 2.0],
        "out_shape": [37, 53],
        "in_shape": [19, 27],
        "model": {"name": "liif", "args": {}, "weights_sha256": "ab" * 32},
        "source_uri": "in.tif",
        "crs": WKT,
        "transform": TRANSFORM,
        "value_range": [0, 65535],
        "nodata": 0,
        "job": job if job is not None else {"model": "edsr-baseline-liif", "scale": 2.0},
    }
    attrs.update(extra)
    return attrs


def _create(uri: str, shape=(3, 37, 53), dtype="uint16", chunks=(8, 16), **kw) -> ZarrOutput:
    kw.setdefault("attrs", _attrs())
    kw.setdefault("fill_value", 0)
    return create_zarr_output(OutputSpec(uri), shape=shape, dtype=dtype, chunks=chunks, **kw)


def _tiles(h: int, w: int, th: int, tw: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    return [
        ((r, min(r + th, h)), (c, min(c + tw, w))) for r in range(0, h, th) for c in range(0, w, tw)
    ]


def _write_tiles_threaded(out: ZarrOutput, ref: np.ndarray, th: int, tw: int) -> None:
    tiles = _tiles(ref.shape[1], ref.shape[2], th, tw)
    groups = [tiles[i::4] for i in range(4)]  # each thread owns its own tiles

    def work(own):
        for rows, cols in own:
            out.write(rows, cols, ref[:, slice(*rows), slice(*cols)])
        return len(own)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(work, groups)) == len(tiles)


@pytest.fixture(params=["local", "memory"])
def uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out.zarr")
    return f"memory://sinks-{uuid.uuid4().hex}/out.zarr"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------
# Zarr output


def test_created_output_layout_and_attributes(uri):
    out = _create(uri)
    assert out.shape == (3, 37, 53) and out.dtype == np.uint16
    assert out.chunks == (8, 16) and out.shards is None and out.write_grid == (8, 16)
    attrs = out.attrs
    assert attrs["created_by"] == CREATED_BY
    assert attrs["crs"] == WKT and CRS.from_wkt(attrs["proj:wkt2"]) == CRS.from_wkt(WKT)  # WKT2
    assert attrs["spatial:transform"] == list(TRANSFORM) == attrs["transform"]
    assert attrs["job"] == {"model": "edsr-baseline-liif", "scale": 2.0}
    group = zarr.open_group(uri, mode="r")
    assert group.attrs["created_by"] == CREATED_BY
    arr = group["image"]
    assert arr.chunks == (3, 8, 16)  # all bands in one chunk
    assert arr.metadata.dimension_names == ("band", "y", "x")
    assert output_exists(OutputSpec(uri))
    assert np.all(out.read((0, 37), (0, 53)) == 0)  # nothing written yet: fill value


def test_attrs_without_georeferencing_get_no_geozarr_keys(tmp_path):
    out = _create(str(tmp_path / "o.zarr"), attrs=_attrs(crs=None, transform=None))
    assert "proj:wkt2" not in out.attrs and "spatial:transform" not in out.attrs
    assert out.attrs["crs"] is None


def test_numpy_attribute_values_are_stored_as_json(tmp_path):
    attrs = _attrs(scale=np.array([2.5, 3.0]), nodata=np.uint16(7), transform=np.array(TRANSFORM))
    out = _create(str(tmp_path / "o.zarr"), attrs=attrs)
    assert out.attrs["scale"] == [2.5, 3.0] and out.attrs["nodata"] == 7
    assert out.attrs["transform"] == list(TRANSFORM)


def test_threaded_chunk_aligned_writes_give_the_full_array(uri, rng):
    out = _create(uri)
    ref = rng.integers(1, 65535, size=(3, 37, 53), dtype=np.uint16)
    _write_tiles_threaded(out, ref, th=16, tw=32)  # 2x2 chunks per tile, partial at the edges
    np.testing.assert_array_equal(out.read((0, 37), (0, 53)), ref)
    np.testing.assert_array_equal(out.read((5, 30), (7, 50)), ref[:, 5:30, 7:50])


def test_float64_data_is_narrowed_into_float32_array(tmp_path, rng):
    out = _create(str(tmp_path / "f.zarr"), shape=(1, 9, 11), dtype="float32", chunks=(4, 4))
    data = rng.random((1, 9, 11))
    out.write((0, 9), (0, 11), data)
    np.testing.assert_array_equal(out.read((0, 9), (0, 11)), data.astype(np.float32))


@pytest.mark.parametrize(
    ("rows", "cols", "match"),
    [
        ((4, 16), (0, 16), r"rows \(4, 16\) are not aligned to the chunk grid of 8"),
        ((0, 12), (0, 16), r"rows \(0, 12\) are not aligned"),
        ((0, 8), (16, 40), r"cols \(16, 40\) are not aligned to the chunk grid of 16"),
        ((0, 8), (0, 60), r"cols \(0, 60\) out of range"),
        ((8, 8), (0, 16), r"rows \(8, 8\) out of range"),
    ],
)
def test_unaligned_or_out_of_range_write_raises(tmp_path, rows, cols, match):
    out = _create(str(tmp_path / "o.zarr"))
    data = np.ones((3, max(rows[1] - rows[0], 1), max(cols[1] - cols[0], 1)), np.uint16)
    with pytest.raises(ValueError, match=match):
        out.write(rows, cols, data)
    assert np.all(out.read((0, 37), (0, 53)) == 0)


def test_write_rejects_wrong_shape_and_unsafe_dtype(tmp_path):
    out = _create(str(tmp_path / "o.zarr"))
    with pytest.raises(ValueError, match=r"data shape \(3, 8, 15\) .* need \(3, 8, 16\)"):
        out.write((0, 8), (0, 16), np.ones((3, 8, 15), np.uint16))
    with pytest.raises(ValueError, match="float32 cannot be stored safely as uint16"):
        out.write((0, 8), (0, 16), np.ones((3, 8, 16), np.float32))
    out.write((32, 37), (48, 53), np.ones((3, 5, 5), np.uint8))  # edge chunk, safe upcast
    assert out.read((32, 37), (48, 53)).sum() == 75


def test_sharded_output_written_by_whole_shards(uri, rng):
    out = _create(uri, shape=(2, 45, 70), dtype="float32", chunks=(5, 10), shards=(15, 20))
    assert out.shards == (15, 20) and out.write_grid == (15, 20)
    assert zarr.open_array(uri, path="image", mode="r").shards == (2, 15, 20)
    ref = rng.standard_normal((2, 45, 70)).astype(np.float32)
    _write_tiles_threaded(out, ref, th=15, tw=40)  # two shards wide, last one partial
    np.testing.assert_array_equal(out.read((0, 45), (0, 70)), ref)
    with pytest.raises(ValueError, match="shard grid of 15"):
        out.write((5, 10), (0, 20), ref[:, 5:10, 0:20])  # one chunk inside a shard


def test_pickled_handle_writes_to_the_same_array(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _create("rel.zarr")  # relative paths are made absolute for other processes
    assert out.uri == str(tmp_path / "rel.zarr")
    out.shape  # noqa: B018 - opens the array before pickling
    clone = pickle.loads(pickle.dumps(out))
    clone.write((0, 8), (0, 16), np.full((3, 8, 16), 9, np.uint16))
    assert out.read((0, 8), (0, 16)).min() == 9
    assert open_zarr_output(OutputSpec(str(tmp_path / "rel.zarr"))).shape == (3, 37, 53)


def test_open_missing_output_raises(tmp_path):
    with pytest.raises(InputNotFoundError, match="no Zarr output at"):
        open_zarr_output(OutputSpec(str(tmp_path / "missing.zarr")))


def test_existing_output_without_flags_is_left_untouched(uri, rng):
    out = _create(uri)
    ref = rng.integers(1, 9, size=(3, 8, 16), dtype=np.uint16)
    out.write((0, 8), (0, 16), ref)
    out.manifest.mark_done("t0", {"out_window": [[0, 8], [0, 16]]})
    with pytest.raises(OutputExistsError, match=r"already exists; pass --overwrite .* --resume"):
        _create(uri, shape=(1, 5, 5), dtype="float32", chunks=(4, 4))
    with pytest.raises(FileExistsError):  # also a builtin FileExistsError
        _create(uri)
    again = ZarrOutput(uri)
    assert again.shape == (3, 37, 53) and again.dtype == np.uint16
    np.testing.assert_array_equal(again.read((0, 8), (0, 16)), ref)
    assert again.manifest.done_keys() == {"t0"}


def test_overwrite_replaces_data_and_manifest(uri):
    old = _create(uri)
    old.write((0, 8), (0, 16), np.full((3, 8, 16), 5, np.uint16))
    old.manifest.mark_done("t0", {})
    new = _create(uri, shape=(1, 20, 21), dtype="uint8", chunks=(10, 7), overwrite=True)
    assert new.shape == (1, 20, 21) and new.dtype == np.uint8
    assert np.all(new.read((0, 20), (0, 21)) == 0)
    assert new.manifest.done_keys() == set()


def test_overwrite_refuses_to_delete_a_non_zarr_directory(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an output of this project"):
        _create(str(target), overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"


def test_empty_existing_directory_is_not_an_output(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    assert not output_exists(OutputSpec(str(tmp_path / "empty.zarr")))
    assert _create(str(tmp_path / "empty.zarr")).shape == (3, 37, 53)


def test_resume_keeps_written_data_and_checks_the_fingerprint(uri):
    out = _create(uri, attrs=_attrs(job={"model": "a", "scale": 2.0}))
    out.write((8, 16), (16, 32), np.full((3, 8, 16), 3, np.uint16))
    out.manifest.mark_done("r1_c1", {"out_window": [[8, 16], [16, 32]]})
    resumed = _create(uri, attrs=_attrs(job={"model": "a", "scale": 2.0}), resume=True)
    assert np.all(resumed.read((8, 16), (16, 32)) == 3)
    assert resumed.manifest.done_keys() == {"r1_c1"}
    with pytest.raises(ConfigError, match=r"job fingerprint differs in \['model'\]"):
        _create(uri, attrs=_attrs(job={"model": "b", "scale": 2.0}), resume=True)
    with pytest.raises(ConfigError, match=r"shape is \(3, 37, 53\) but the job needs"):
        _create(uri, shape=(3, 38, 53), attrs=_attrs(job={"model": "a", "scale": 2.0}), resume=True)
    with pytest.raises(
        ConfigError,
        match=r"dtype is uint16 but the job needs uint8; chunks is \(8, 16\) but the job needs "
        r"\(8, 8\); job fingerprint differs in \['model'\]",
    ):
        _create(uri, dtype="uint8", chunks=(8, 8), resume=True)
    assert np.all(ZarrOutput(uri).read((8, 16), (16, 32)) == 3)


def test_resume_without_existing_output_creates_it(tmp_path):
    out = _create(str(tmp_path / "new.zarr"), resume=True)
    assert out.shape == (3, 37, 53)


def test_resume_of_a_non_output_directory_is_a_config_error(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bin").write_bytes(b"1")
    with pytest.raises(ConfigError, match="not a liif-pipeline Zarr output"):
        _create(str(tmp_path / "other"), resume=True)


def test_overwrite_and_resume_together_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="exclude each other"):
        _create(str(tmp_path / "o.zarr"), overwrite=True, resume=True)
    assert not (tmp_path / "o.zarr").exists()


def test_parent_that_is_a_file_is_not_writable(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = blocker / "sub" / "out.zarr"
    with pytest.raises(OutputNotWritableError, match=f"{target}.*is not a directory"):
        _create(str(target))
    with pytest.raises(PermissionError):  # also a builtin PermissionError
        _create(str(target))
    assert blocker.read_text() == "a file"


def test_directory_without_write_access_is_not_writable(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        zarr_create.os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode)
    )
    with pytest.raises(OutputNotWritableError, match=f"directory '{parent}' is not writable"):
        _create(str(parent / "out.zarr"))
    assert os.listdir(parent) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_not_writable(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritableError, match="is not writable"):
            _create(str(parent / "out.zarr"))
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (3, 0, 5)}, r"shape \(C, H, W\) must be 3 positive integers"),
        ({"shape": (3, 5)}, "3 positive integers"),
        ({"chunks": (8, 0)}, r"chunks \(ch, cw\) must be 2 positive integers"),
        ({"chunks": (8.0, 16)}, "2 positive integers"),
        ({"shards": (12, 32)}, r"shards \(12, 32\) must be multiples of chunks \(8, 16\)"),
        ({"dtype": "complex64"}, "dtype complex64 is not allowed"),
        ({"dtype": "not-a-dtype"}, "dtype 'not-a-dtype' is not a NumPy dtype"),
        ({"fill_value": 70000}, r"fill_value 70000 does not fit dtype uint16"),
        ({"fill_value": 1.5}, "does not fit dtype uint16"),
        ({"fill_value": "0"}, "fill_value must be a number"),
        ({"attrs": {"bad": object()}}, r"attribute attrs.bad = .* is not JSON"),
        ({"attrs": {"transform": (1, 2, 3)}}, r"attrs\['transform'\]: transform must have 6"),
        ({"attrs": {"crs": 4326}}, r"attrs\['crs'\] must be a WKT string"),
    ],
)
def test_invalid_creation_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _create(str(tmp_path / "o.zarr"), **kwargs)
    assert not (tmp_path / "o.zarr").exists()


def test_output_spec_validation():
    with pytest.raises(ConfigError, match="non-empty string"):
        OutputSpec("  ")
    with pytest.raises(ConfigError, match="storage_options must be a dict"):
        OutputSpec("x.zarr", storage_options=[("anon", True)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# S3 (moto server on loopback)


@pytest.fixture(scope="module")
def s3(s3_server: dict) -> dict:
    """storage_options for the session's moto S3 server, with bucket ``liif-sinks``."""
    if not s3_server["fs"].exists("liif-sinks"):
        s3_server["fs"].mkdir("liif-sinks")
    return s3_server["options"]


def test_zarr_output_and_manifest_on_s3(s3, rng):
    spec = OutputSpec("s3://liif-sinks/run/out.zarr", storage_options=s3)
    assert not output_exists(spec)
    out = create_zarr_output(
        spec,
        shape=(3, 37, 53),
        dtype="uint16",
        chunks=(8, 16),
        shards=(16, 32),
        fill_value=0,
        attrs=_attrs(),
    )
    ref = rng.integers(1, 65535, size=(3, 16, 32), dtype=np.uint16)
    worker_copy = pickle.loads(pickle.dumps(out))  # what a Ray actor receives
    worker_copy.write((16, 32), (32, 53), ref[:, :, :21])
    worker_copy.manifest.mark_done("r1_c1", {"out_window": [[16, 32], [32, 53]], "worker": "a"})
    assert output_exists(spec)
    reopened = open_zarr_output(spec)
    np.testing.assert_array_equal(reopened.read((16, 32), (32, 53)), ref[:, :, :21])
    assert reopened.manifest.done_keys() == {"r1_c1"}
    assert reopened.manifest.is_done("r1_c1") and not reopened.manifest.is_done("r0_c0")
    assert CRS.from_wkt(reopened.attrs["proj:wkt2"]) == CRS.from_wkt(WKT)
    with pytest.raises(OutputExistsError, match="s3://liif-sinks/run/out.zarr"):
        create_zarr_output(spec, shape=(3, 37, 53), dtype="uint16", chunks=(8, 16))
    fresh = create_zarr_output(spec, shape=(1, 9, 9), dtype="uint8", chunks=(4, 4), overwrite=True)
    assert fresh.shape == (1, 9, 9) and fresh.manifest.done_keys() == set()
    s3fs_ = fsspec.filesystem("s3", **s3)
    s3fs_.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in s3fs_.ls("liif-sinks/run/out.zarr")) == [
        "_manifest",
        "image",
        "zarr.json",
    ]
