"""pipeline.io.manifest: done-tile records inside the output group."""

from __future__ import annotations

import json
import os
import pickle
import uuid
import warnings

import numpy as np
import pytest
import zarr

from pipeline.io.manifest import TileManifest
from pipeline.io.zarr_create import create_zarr_output
from pipeline.io.zarr_output import OutputSpec


@pytest.fixture(params=["local", "memory"])
def uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out.zarr")
    return f"memory://manifest-{uuid.uuid4().hex}/out.zarr"


def _record(i: int) -> dict:
    return {"out_window": [[0, 8 * i], [0, 16]], "seconds": 0.5 * i, "worker": f"w{i}"}


def test_mark_is_done_done_keys_and_clear(uri):
    m = TileManifest(uri)
    assert m.done_keys() == set()  # no directory yet
    assert not m.is_done("r0_c0")
    m.clear()  # nothing to clear is fine
    stored = m.mark_done("r0_c0", _record(1))
    m.mark_done("r0_c1", _record(2))
    assert m.is_done("r0_c0") and m.is_done("r0_c1") and not m.is_done("r1_c0")
    assert m.done_keys() == {"r0_c0", "r0_c1"}
    assert set(stored) == {"key", "out_window", "seconds", "worker", "finished_at"}
    assert stored["key"] == "r0_c0"
    assert m.record("r0_c1")["worker"] == "w2"
    assert m.record("r9_c9") is None
    # a fresh handle (another process) sees the same records
    assert TileManifest(uri).done_keys() == {"r0_c0", "r0_c1"}
    m.clear()
    assert m.done_keys() == set() and not m.is_done("r0_c0")


def test_record_file_is_plain_json_at_documented_path(tmp_path):
    uri = str(tmp_path / "out.zarr")
    TileManifest(uri).mark_done("tile-7", {**_record(3), "finished_at": "2025-01-01T00:00:00"})
    path = tmp_path / "out.zarr" / "_manifest" / "tile-7.json"
    rec = json.loads(path.read_text())
    assert rec == {
        "key": "tile-7",
        "out_window": [[0, 24], [0, 16]],
        "seconds": 1.5,
        "worker": "w3",
        "finished_at": "2025-01-01T00:00:00",
    }
    # no temporary files left behind
    assert os.listdir(path.parent) == ["tile-7.json"]


def test_stale_temporary_files_are_ignored_and_cleared(tmp_path):
    uri = str(tmp_path / "out.zarr")
    m = TileManifest(uri)
    m.mark_done("a", _record(1))
    (tmp_path / "out.zarr" / "_manifest" / ".b.0123.tmp").write_text("{")
    assert m.done_keys() == {"a"}
    m.clear()
    assert os.listdir(tmp_path / "out.zarr" / "_manifest") == []


def test_marking_again_replaces_the_record(uri):
    m = TileManifest(uri)
    m.mark_done("t", _record(1))
    m.mark_done("t", _record(2))
    assert m.done_keys() == {"t"}
    assert m.record("t")["worker"] == "w2"


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "-x", "zarr", "a b", 3])
def test_bad_keys_are_rejected(tmp_path, key):
    m = TileManifest(str(tmp_path / "out.zarr"))
    with pytest.raises(ValueError, match="invalid tile key"):
        m.mark_done(key, _record(1))


def test_bad_records_are_rejected(tmp_path):
    m = TileManifest(str(tmp_path / "out.zarr"))
    with pytest.raises(ValueError, match="record\\['key'\\] is 'other'"):
        m.mark_done("t", {"key": "other"})
    with pytest.raises(ValueError, match="not plain JSON"):
        m.mark_done("t", {"seconds": float("nan")})
    with pytest.raises(ValueError, match="not plain JSON"):
        m.mark_done("t", {"worker": object()})
    assert m.done_keys() == set()


def test_manifest_pickles_without_filesystem_state(tmp_path):
    m = TileManifest(str(tmp_path / "out.zarr"), {"anon": True})
    m.done_keys()  # creates the cached filesystem
    m2 = pickle.loads(pickle.dumps(m))
    assert (m2.uri, m2.storage_options) == (m.uri, m.storage_options)


def test_zarr_group_still_opens_with_manifest_records(uri):
    out = create_zarr_output(
        OutputSpec(uri), shape=(2, 9, 11), dtype="uint8", chunks=(4, 4), fill_value=0, attrs={}
    )
    out.write((0, 4), (0, 4), np.full((2, 4, 4), 7, np.uint8))
    out.manifest.mark_done("r0_c0", _record(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # listing the group must not warn about _manifest
        group = zarr.open_group(uri, mode="r")
        assert sorted(group.keys()) == ["_manifest", "image"]
        assert [name for name, _ in group.arrays()] == ["image"]
    assert np.asarray(group["image"][:, :4, :4]).tolist() == np.full((2, 4, 4), 7).tolist()
    assert out.manifest.done_keys() == {"r0_c0"}
    # clearing keeps the subgroup metadata
    out.manifest.clear()
    assert sorted(zarr.open_group(uri, mode="r").keys()) == ["_manifest", "image"]
