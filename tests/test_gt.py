"""pipeline.gt (resolution-varied ground truth), jobs.make_gt and liif.pairs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from liif.coords import make_coord
from liif.pairs import PairError, batch_from_pairs
from pipeline.errors import ConfigError, InputNotFoundError, OutputExistsError
from pipeline.gt import (
    MANIFEST,
    SCHEMA,
    GTConfig,
    decode_array,
    expand_inputs,
    grid_windows,
    make_gt,
    pairs_from_batch,
    read_manifest,
    shard_paths,
)

NODATA = 0
CRS = "EPSG:32633"
ORIGIN = (500000.0, 4000000.0, 10.0)  # west, north, pixel size


def _texture(h: int, w: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.35 * np.sin(xx / 3.1 + seed) * np.cos(yy / 4.3)
    return np.clip(base[None] + rng.normal(0, 0.05, (c, h, w)), 0, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """PNG folder (odd sizes), a uint16 GeoTIFF with nodata and flat regions, a zarr array."""
    import rasterio
    import zarr
    from PIL import Image
    from rasterio.transform import Affine

    root = tmp_path_factory.mktemp("gt_inputs")
    png = root / "png"
    (png / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(53, 71), (45, 61)]):
        arr = (_texture(h, w, 3, i) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(arr).save(png / ("sub" if i else "") / f"im{i}.png")
    (png / "notes.txt").write_text("not an image")

    tif = root / "scene.tif"
    img = (_texture(64, 96, 3, 7) * 60000 + 1000).astype(np.uint16)
    img[:, :32, :32] = NODATA        # nodata block (top left)
    img[:, 32:, 64:] = 30000         # flat block (bottom right)
    with rasterio.open(tif, "w", driver="GTiff", width=96, height=64, count=3, dtype="uint16",
                       crs=CRS, transform=Affine(ORIGIN[2], 0, ORIGIN[0], 0, -ORIGIN[2], ORIGIN[1]),
                       nodata=NODATA) as ds:
        ds.write(img)

    zpath = root / "arr.zarr"
    z = zarr.create_array(str(zpath), shape=(3, 50, 70), chunks=(3, 25, 35), dtype="float32")
    z[:] = _texture(50, 70, 3, 3).astype(np.float32)
    return {"png": png, "tif": tif, "zarr": zpath, "tif_array": img}


def _cfg(inputs, out, **kw) -> GTConfig:
    base = dict(patch=32, stride=32, lr_size=8, scale_range=(1.0, 4.0), patches_per_shard=4)
    base.update(kw)
    return GTConfig(inputs=tuple(map(str, inputs)), output=str(out), **base)


def _table(out) -> dict:
    return pq.read_table(shard_paths(str(out))).to_pydict()


def _shard_bytes(out) -> dict[str, bytes]:
    return {Path(p).name: Path(p).read_bytes() for p in shard_paths(str(out))}


# ------------------------------------------------------------------------------- planning


def test_grid_windows_cover_and_shift_the_last_one():
    assert grid_windows((53, 71), 32, 32) == [(0, 0), (0, 32), (0, 39), (21, 0), (21, 32),
                                              (21, 39)]
    assert grid_windows((31, 100), 32, 16) == []
    rows = {r for r, _ in grid_windows((100, 40), 32, 20)}
    assert rows == {0, 20, 40, 60, 68} and len(rows) == math.ceil((100 - 32) / 20) + 1


def test_expand_inputs_folders_globs_and_missing(data):
    found = expand_inputs([str(data["png"])])
    assert [Path(f).name for f in found] == ["im0.png", "im1.png"]  # recursive, no .txt
    assert expand_inputs([str(data["zarr"])]) == [str(data["zarr"])]  # a zarr dir is one input
    glob = expand_inputs([str(data["png"] / "**" / "*.png"), str(data["tif"])])
    assert len(glob) == 3 and glob[-1] == str(data["tif"])
    assert expand_inputs([str(data["tif"]), str(data["tif"])]) == [str(data["tif"])]
    with pytest.raises(InputNotFoundError, match="matches nothing"):
        expand_inputs([str(data["png"] / "*.jpg")])
    with pytest.raises(InputNotFoundError, match="input not found"):
        expand_inputs([str(data["png"] / "missing.png")])


@pytest.mark.parametrize("kw, match", [
    (dict(patch=16, scales=(4.0,)), r"patch 16 is smaller than the largest HR crop"),
    (dict(scale_range=None, scales=()), "scale range"),
    (dict(scales=(0.5,)), r"scale 0.5 must be a finite number >= 1"),
    (dict(jpeg=(0, 50)), r"jpeg \(0, 50\) must lie in \[1, 100\]"),
    (dict(noise=(0.2, 0.1)), "LO <= HI"),
    (dict(lr_dtype="int8"), "lr_dtype 'int8'"),
    (dict(stride=0), "stride must be a positive integer"),
])
def test_config_errors_quote_the_bad_value(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(["x.png"], tmp_path / "o", **kw)


# ------------------------------------------------------------------------ content of shards


def test_png_grid_size_varied_hr_is_an_exact_crop(data, tmp_path):
    from PIL import Image

    out = tmp_path / "gt"
    s = make_gt(_cfg([data["png"]], out), workers=0)
    expected = len(grid_windows((53, 71), 32, 32)) + len(grid_windows((45, 61), 32, 32))
    assert s["candidates"] == s["patches"] == s["samples"] == expected
    t = _table(out)
    assert len(set(round(8 * x) for x in t["scale"])) > 3  # varied HR sizes
    images = {p: np.asarray(Image.open(p)).transpose(2, 0, 1)
              for p in set(t["source_uri"])}
    for i in range(len(t["hr"])):
        side = round(8 * t["scale"][i])
        assert t["hr_shape"][i] == [3, side, side] and t["hr_dtype"][i] == "uint8"
        assert t["lr_shape"][i] == [3, 8, 8] and t["lr_dtype"][i] == "float32"
        r0, r1, c0, c1 = t["window"][i]
        hr = decode_array(t["hr"][i], t["hr_shape"][i], t["hr_dtype"][i])
        np.testing.assert_array_equal(hr, images[t["source_uri"][i]][:, r0:r1, c0:c1])
        lr = decode_array(t["lr"][i], t["lr_shape"][i], t["lr_dtype"][i])
        assert abs(float(lr.mean()) - float(hr.mean())) < 12  # same value units (0..255)
        assert (t["value_lo"][i], t["value_hi"][i]) == (0.0, 255.0)
        assert t["crs"][i] is None and t["transform"][i] is None
        assert t["blur_sigma"][i] is None and t["jpeg_quality"][i] is None


def test_lr_is_antialiased_bicubic_of_the_hr(data, tmp_path):
    from liif.resize import resize_bicubic

    out = tmp_path / "gt"
    make_gt(_cfg([data["zarr"]], out, scales=(2.0, 3.0), scale_range=None), workers=0)
    t = _table(out)
    assert t["hr_dtype"][0] == "float32" and {tuple(s) for s in t["hr_shape"]} == {
        (3, 16, 16), (3, 24, 24)}
    for i in range(len(t["hr"])):
        hr = torch.from_numpy(decode_array(t["hr"][i], t["hr_shape"][i], "float32").copy())
        lr = decode_array(t["lr"][i], t["lr_shape"][i], "float32")
        ref = resize_bicubic(hr.double(), (8, 8)).numpy()
        np.testing.assert_allclose(lr, ref, atol=1e-6)


def test_scale_list_and_range_give_one_sample_each(data, tmp_path):
    out = tmp_path / "gt"
    s = make_gt(_cfg([data["png"] / "im0.png"], out, scales=(2.0, 3.0, 4.0), range_samples=2),
                workers=0)
    assert s["samples"] == 5 * s["patches"]
    t = _table(out)
    by_patch: dict[int, list[float]] = {}
    for p, sc in zip(t["patch_index"], t["scale"], strict=True):
        by_patch.setdefault(p, []).append(sc)
    for scales in by_patch.values():
        assert scales[2:] == [2.0, 3.0, 4.0] and all(1 <= x <= 4 for x in scales[:2])
    assert {tuple(x) for x, sc in zip(t["hr_shape"], t["scale"], strict=True) if sc == 3.0} == {
        (3, 24, 24)}


def test_geotiff_nodata_and_flat_patches_skipped_crs_kept(data, tmp_path):
    from rasterio.crs import CRS as RCRS

    out = tmp_path / "gt"
    s = make_gt(_cfg([data["tif"]], out, stride=16, patches_per_shard=64), workers=0)
    # grid rows {0, 16, 32} x cols {0, 16, 32, 48, 64}: 15 candidates
    assert s["candidates"] == 15
    assert s["skipped_nodata"] == 4  # windows touching the 32x32 nodata block
    assert s["skipped_flat"] == 1    # the window inside the flat block
    assert s["patches"] == 10
    t = _table(out)
    img = data["tif_array"]
    for i in range(len(t["hr"])):
        r0, r1, c0, c1 = t["window"][i]
        hr = decode_array(t["hr"][i], t["hr_shape"][i], t["hr_dtype"][i])
        assert hr.dtype == np.uint16 and (hr != NODATA).any(axis=0).all()
        np.testing.assert_array_equal(hr, img[:, r0:r1, c0:c1])
        assert RCRS.from_wkt(t["crs"][i]) == RCRS.from_user_input(CRS)
        west, north, px = ORIGIN
        assert t["transform"][i] == pytest.approx([px, 0, west + px * c0, 0, -px, north - px * r0])
        assert (t["value_lo"][i], t["value_hi"][i]) == (0.0, 65535.0)


def test_random_mode_is_seeded_and_skips_nothing_valid(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    sa = make_gt(_cfg([data["zarr"]], a, random=7), workers=0)
    make_gt(_cfg([data["zarr"]], b, random=7, seed=1), workers=0)
    assert sa["candidates"] == 7 and sa["patches"] == 7
    wa, wb = _table(a)["window"], _table(b)["window"]
    assert all(0 <= w[0] and w[1] <= 50 and 0 <= w[2] and w[3] <= 70 for w in wa)
    assert wa != wb


def test_degradations_recorded_per_sample_and_applied(data, tmp_path):
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    make_gt(_cfg([data["png"]], clean), workers=0)
    make_gt(_cfg([data["png"]], noisy, blur=(0.5, 1.5), noise=0.02, jpeg=(40, 60)), workers=0)
    c, n = _table(clean), _table(noisy)
    assert c["window"] == n["window"] and c["hr"] == n["hr"]  # same crops, same HR
    assert all(0.5 <= x <= 1.5 for x in n["blur_sigma"]) and len(set(n["blur_sigma"])) > 1
    assert set(n["noise_std"]) == {0.02}
    assert all(40 <= q <= 60 for q in n["jpeg_quality"])
    assert c["lr"] != n["lr"]
    lr = decode_array(n["lr"][0], n["lr_shape"][0], "float32")
    assert np.allclose(lr, np.round(lr))  # JPEG output is 8-bit quantised (0..255 units)


def test_lr_dtype_native_quantises_to_the_source_dtype(data, tmp_path):
    out = tmp_path / "gt"
    make_gt(_cfg([data["tif"]], out, lr_dtype="native"), workers=0)
    t = _table(out)
    assert set(t["lr_dtype"]) == {"uint16"}


# ------------------------------------------------------------------ determinism and resume


def test_same_seed_same_bytes_other_seed_differs(data, tmp_path):
    inputs = [data["png"], data["tif"]]
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        make_gt(_cfg(inputs, tmp_path / name, seed=seed, noise=(0, 0.05)), workers=0)
        runs[name] = _shard_bytes(tmp_path / name)
    assert runs["a"] == runs["b"] and len(runs["a"]) >= 2
    assert runs["a"].keys() == runs["c"].keys() and runs["a"] != runs["c"]
    man = read_manifest(str(tmp_path / "a"))
    assert man["seed"] == 0 and man["complete"] and man["counts"]["shards"] == len(runs["a"])
    assert "output" not in man["config"] and "storage_options" not in man["config"]


@pytest.mark.ray
def test_ray_tasks_give_the_same_bytes_as_in_process(ray_local, data, tmp_path):
    inputs = [data["png"], data["tif"], data["zarr"]]
    make_gt(_cfg(inputs, tmp_path / "local", blur=1.0), workers=0)
    s = make_gt(_cfg(inputs, tmp_path / "ray", blur=1.0), workers=2, cpus_per_task=0.5)
    assert s["shards"] >= 3
    assert _shard_bytes(tmp_path / "ray") == _shard_bytes(tmp_path / "local")


def test_resume_skips_finished_shards(data, tmp_path):
    out = tmp_path / "gt"
    cfg = _cfg([data["png"]], out, patches_per_shard=3)
    first = make_gt(cfg, workers=0)
    before = _shard_bytes(out)
    assert first["shards"] == 4
    # simulate an interruption: the first shard was never written nor marked
    man = json.loads((out / MANIFEST).read_text())
    lost = sorted(man["shards"])[0]
    del man["shards"][lost]
    (out / MANIFEST).write_text(json.dumps(man))
    (out / "shards" / lost).unlink()
    mtimes = {p: os.stat(p).st_mtime_ns for p in shard_paths(str(out))}
    again = make_gt(cfg, workers=0, resume=True)
    assert again["shards_resumed"] == 3 and again["patches_this_run"] == 3
    assert again["patches"] == first["patches"]
    assert _shard_bytes(out) == before
    assert all(os.stat(p).st_mtime_ns == m for p, m in mtimes.items())  # not rewritten
    assert read_manifest(str(out))["complete"]
    # nothing left to do
    assert make_gt(cfg, workers=0, resume=True)["patches_this_run"] == 0
    with pytest.raises(ConfigError, match=r"different config \(seed: 0 -> 1\)"):
        make_gt(_cfg([data["png"]], out, patches_per_shard=3, seed=1), workers=0, resume=True)


def test_existing_output_refused_unless_overwrite(data, tmp_path):
    out = tmp_path / "gt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = _cfg([data["png"] / "im0.png"], out)
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        make_gt(cfg, workers=0)
    with pytest.raises(OutputExistsError, match="not a ground-truth output"):
        make_gt(cfg, workers=0, resume=True)
    with pytest.raises(OutputExistsError, match=r"holds files that are not ground truth \(keep.txt\)"):
        make_gt(cfg, workers=0, overwrite=True)
    assert (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    first = make_gt(cfg, workers=0)
    (out / "shards" / "part-00000.parquet").write_bytes(b"garbage")
    s = make_gt(_cfg([data["png"] / "im0.png"], out, seed=3), workers=0, overwrite=True)
    assert s["samples"] == first["samples"] > 0
    assert read_manifest(str(out))["seed"] == 3
    pq.read_table(shard_paths(str(out))[0])  # the garbage shard was replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_gt(_cfg([data["png"] / "im0.png"], empty), workers=0)["samples"] > 0


# -------------------------------------------------------------------------- reading back


@pytest.mark.ray
def test_readable_by_ray_data_into_training_batches(ray_local, data, tmp_path):
    import ray.data

    out = tmp_path / "gt"
    s = make_gt(_cfg([data["png"], data["tif"]], out), workers=0)
    ds = ray.data.read_parquet(shard_paths(str(out)))
    rows = ds.take_batch(s["samples"] + 5, batch_format="numpy")  # one execution: all rows
    assert len(rows["hr"]) == s["samples"] and set(SCHEMA.names) <= set(rows)
    lr, hr, vr = pairs_from_batch({k: v[:4] for k, v in rows.items()})
    batch = batch_from_pairs(lr, hr, 16, np.random.default_rng(0), value_ranges=vr)
    assert batch["inp"].shape == (4, 3, 8, 8) and batch["gt"].shape == (4, 16, 3)
    assert 0 <= float(batch["gt"].min()) and float(batch["gt"].max()) <= 1


def test_make_gt_job_prints_a_json_summary(data, tmp_path, capsys):
    from jobs.make_gt import main

    out = tmp_path / "gt"
    rc = main(["--input", str(data["png"]), "--output", str(out), "--patch", "32", "--random",
               "3", "--scales", "2", "3", "--lr-size", "8", "--workers", "0", "--noise", "0.01"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["patches"] == 6 and summary["samples"] == 12 and summary["shards"] >= 1
    assert {"seconds", "patches_per_s"} <= set(summary)
    t = _table(out)
    assert set(t["scale"]) == {2.0, 3.0}  # --scales alone: no default range
    assert main(["--input", str(data["png"]), "--output", str(out), "--workers", "0"]) == 2


# ---------------------------------------------------------------------------- liif.pairs


def test_batch_from_pairs_samples_hr_pixels_with_their_coords_and_cells():
    rng = np.random.default_rng(0)
    hr_list = [torch.rand(3, 20, 20) * 255, torch.rand(3, 33, 33) * 255]
    lr_list = [torch.rand(3, 10, 10) * 255, torch.rand(3, 10, 10) * 255]
    b = batch_from_pairs(lr_list, hr_list, 50, rng, value_ranges=(0, 255))
    assert b["inp"].shape == (2, 3, 10, 10) and b["coord"].shape == (2, 50, 2)
    assert b["cell"].shape == (2, 50, 2) and b["gt"].shape == (2, 50, 3)
    assert torch.allclose(b["cell"][1], torch.tensor([2 / 33, 2 / 33]).expand(50, 2))
    assert b["scale"].tolist() == pytest.approx([2.0, 3.3])
    for i, hr in enumerate(hr_list):
        coords = make_coord(hr.shape[-2:])
        pix = hr.reshape(3, -1).T / 255
        for q in range(50):
            j = int(torch.nonzero((coords == b["coord"][i, q]).all(1))[0])
            assert torch.allclose(b["gt"][i, q], pix[j])


def test_batch_from_pairs_single_band_value_ranges_and_errors():
    rng = np.random.default_rng(1)
    hr = np.full((1, 12, 12), 5000, np.uint16)
    lr = np.full((1, 6, 6), 5000.0, np.float32)
    b = batch_from_pairs([lr], [hr], 200, rng, value_ranges=[(0, 10000)])
    assert b["inp"].shape == (1, 3, 6, 6) and torch.allclose(b["gt"], torch.tensor(0.5))
    with pytest.raises(PairError, match="has 4 channels"):
        batch_from_pairs([np.zeros((4, 6, 6))], [np.zeros((4, 12, 12))], 4, rng)
    with pytest.raises(PairError, match="every LR of a batch must share its size"):
        batch_from_pairs([np.zeros((3, 6, 6)), np.zeros((3, 7, 7))],
                         [np.zeros((3, 12, 12))] * 2, 4, rng)
    with pytest.raises(PairError, match=r"value_ranges\[0\]=\(1, 1\)"):
        batch_from_pairs([lr], [hr], 4, rng, value_ranges=[(1, 1)])
    with pytest.raises(PairError, match="sample_q must be a positive integer, got 0"):
        batch_from_pairs([lr], [hr], 0, rng)


def test_train_step_accepts_a_pairs_batch():
    from liif.train import TrainConfig, make_model, make_optimizer, train_step

    cfg = TrainConfig(steps=2, batch_size=2, model_args={
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}})
    model = make_model(cfg)
    opt, _ = make_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    b = batch_from_pairs([torch.rand(3, 8, 8)] * 2, [torch.rand(3, 13, 13), torch.rand(3, 24, 24)],
                         32, rng, augment=True)
    assert math.isfinite(train_step(model, b, opt))


def test_fsspec_urls_for_inputs_globs_and_output(data, tmp_path):
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"memory://gt-{uuid.uuid4().hex}"
    for p in sorted(data["png"].rglob("*.png")):
        fs.pipe_file(f"{base}/in/{p.name}", p.read_bytes())
    out = f"{base}/out"
    s = make_gt(_cfg([f"{base}/in/*.png"], out), workers=0)
    local = make_gt(_cfg([data["png"]], tmp_path / "local"), workers=0)
    assert s["samples"] == local["samples"] > 0
    paths = shard_paths(out)
    assert paths and all(p.startswith(f"{base}/out/shards/part-") for p in paths)
    remote = pq.read_table([p.split("://", 1)[1] for p in paths], filesystem=fs).to_pydict()
    assert remote["hr"] == _table(tmp_path / "local")["hr"]
    uri = remote["source_uri"][0]
    assert uri.startswith("memory://") and fs._strip_protocol(uri) == fs._strip_protocol(
        f"{base}/in/im0.png")
    with pytest.raises(OutputExistsError):
        make_gt(_cfg([f"{base}/in/*.png"], out), workers=0)
