"""A ground-truth output folder is a plain Parquet dataset (pyarrow, pandas, Ray Data read it as it
is), and outputs written before the manifest's rename (``manifest.json``) still read, resume and
overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipeline.errors import OutputExistsError
from pipeline.gt import (
    LEGACY_MANIFEST,
    MANIFEST,
    SCHEMA,
    GTConfig,
    make_gt,
    read_manifest,
    shard_paths,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("gt_images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:90]
    for i in range(2):
        base = 127 + 90 * np.sin(xx / (4 + i)) * np.cos(yy / 6)
        img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 6, (70, 90, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def _cfg(images: Path, out: Path, **kw) -> GTConfig:
    base = dict(patch=32, stride=32, lr_size=8, scale_range=(1.0, 4.0), patches_per_shard=3)
    base.update(kw)
    return GTConfig(inputs=(str(images),), output=str(out), **base)


def _to_legacy(out: Path) -> None:
    """Make ``out`` look like an output written before the rename."""
    (out / MANIFEST).rename(out / LEGACY_MANIFEST)


@pytest.fixture
def gt(images, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "gt"
    summary = make_gt(_cfg(images, out), workers=0)
    assert summary["shards"] >= 2 and summary["samples"] > 0
    return out, summary


def test_manifest_name_is_skipped_by_parquet_readers():
    assert MANIFEST == "_manifest.json" and LEGACY_MANIFEST == "manifest.json"


def test_pyarrow_and_pandas_read_the_folder_as_it_is(gt):
    out, summary = gt
    assert (out / MANIFEST).is_file() and not (out / LEGACY_MANIFEST).exists()
    (out / "shards" / ".part-00000.parquet.0f1e2d3c.tmp").write_bytes(b"half")  # atomic temp
    dataset = pads.dataset(str(out), format="parquet")
    assert sorted(Path(f).name for f in dataset.files) == sorted(
        Path(p).name for p in shard_paths(str(out)))
    assert dataset.count_rows() == summary["samples"]
    assert dataset.schema.remove_metadata().equals(SCHEMA)
    frame = pd.read_parquet(out)
    assert len(frame) == summary["samples"]
    assert frame["sample_id"].is_unique


@pytest.mark.ray
def test_ray_data_reads_the_folder_as_it_is(ray_local, gt):
    out, summary = gt
    (out / "shards" / ".part-00000.parquet.0f1e2d3c.tmp").write_bytes(b"half")  # atomic temp
    ds = ray_local.data.read_parquet(str(out))
    assert ds.count() == summary["samples"]
    assert set(ds.schema().names) == set(SCHEMA.names)


def test_legacy_manifest_blocks_pyarrow_control(gt):
    """Negative control: the old name is what made the folder unreadable."""
    out, _ = gt
    _to_legacy(out)
    with pytest.raises(pa.ArrowInvalid, match="manifest.json"):
        pads.dataset(str(out), format="parquet")


def test_legacy_output_reads_and_resumes_into_the_new_name(images, gt):
    out, summary = gt
    paths = shard_paths(str(out))
    _to_legacy(out)
    assert read_manifest(str(out))["complete"]
    assert shard_paths(str(out)) == paths
    # an interrupted legacy output: one shard lost
    man = json.loads((out / LEGACY_MANIFEST).read_text())
    lost = sorted(man["shards"])[0]
    del man["shards"][lost]
    man["complete"] = False
    (out / LEGACY_MANIFEST).write_text(json.dumps(man))
    (out / "shards" / lost).unlink()
    again = make_gt(_cfg(images, out), workers=0, resume=True)
    assert again["shards_resumed"] == summary["shards"] - 1 and again["patches_this_run"] > 0
    assert (out / MANIFEST).is_file() and not (out / LEGACY_MANIFEST).exists()
    assert read_manifest(str(out))["complete"]
    assert pads.dataset(str(out), format="parquet").count_rows() == summary["samples"]


def test_new_manifest_wins_over_a_leftover_legacy_one(gt):
    out, _ = gt
    (out / LEGACY_MANIFEST).write_text(json.dumps({"format": "stale"}))
    assert read_manifest(str(out))["format"] == "liif-gt/1"


def test_overwrite_recognises_a_legacy_output_by_its_marker(images, gt, tmp_path):
    out, summary = gt
    _to_legacy(out)
    again = make_gt(_cfg(images, out, seed=4), workers=0, overwrite=True)
    assert again["samples"] == summary["samples"]
    assert read_manifest(str(out))["seed"] == 4 and not (out / LEGACY_MANIFEST).exists()
    # a legacy-named file that is not our marker is refused, and the folder is left alone
    other = tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    (other / LEGACY_MANIFEST).write_text(json.dumps({"format": "someone-else/2"}))
    with pytest.raises(OutputExistsError, match="holds no liif-gt/1 _manifest.json"):
        make_gt(_cfg(images, other), workers=0, overwrite=True)
    assert (other / LEGACY_MANIFEST).exists()
