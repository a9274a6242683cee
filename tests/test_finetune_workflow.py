"""The fine-tune workflow at smoke size: make_gt on GeoTIFF dates -> jobs.train --init -> jobs.evaluate
on a held-out date, plus the checks that refuse a wrong --init before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jobs import evaluate as evaluate_job
from jobs import make_gt as make_gt_job
from jobs import train as train_job
from liif.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
from liif.train import TrainConfig, check_init, make_model
from pipeline.training.config import load_train_config

SMOKE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "smoke.yaml"
FINETUNE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "finetune-aerial.yaml"


def _scene(path: Path, seed: int) -> Path:
    """A 4-band uint8 'date' of one place: the same fields, a different season (gain, noise)."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:120]
    fields = (np.sin(xx / 5.0) > 0).astype(float) * 0.3 + (np.cos(yy / 7.0) > 0) * 0.2
    base = 0.2 + fields * (0.8 + 0.1 * seed) + 0.05 * np.sin((xx + yy) / 2.0)
    data = np.stack([base, base * 0.9 + 0.05, base * 0.7, 1 - base]) + rng.normal(0, 0.02, (4, 96, 120))
    arr = np.clip(data * 255, 1, 255).astype(np.uint8)
    arr[:, :10, :10] = 0
    with rasterio.open(path, "w", driver="GTiff", width=120, height=96, count=4, dtype="uint8",
                       crs="EPSG:26914", transform=Affine(5, 0, 600000, 0, -5, 5200000),
                       nodata=0) as ds:
        ds.write(arr)
    return path


def _smoke_cfg(**kw: object) -> TrainConfig:
    return TrainConfig.from_dict({**yaml.safe_load(SMOKE.read_text()), **kw})


def _init_checkpoint(path: Path, seed: int = 0) -> Path:
    """Weights of the smoke config's architecture (stand-in for the official ones)."""
    torch.manual_seed(seed)
    return save_checkpoint(make_model(_smoke_cfg()), path)


def test_finetune_config_starts_from_the_bundled_official_weights() -> None:
    cfg = load_train_config(FINETUNE)
    assert cfg.init == "edsr-baseline-liif"
    assert cfg.lr < 1e-4  # a fine-tune rate, below the paper's 1e-4 from scratch
    assert (cfg.inp_size, cfg.scale_min, cfg.scale_max, cfg.sample_q) == (48, 1.0, 4.0, 2304)
    check_init(cfg)  # the bundled model has exactly the config's architecture


def test_check_init_refuses_a_different_architecture(tmp_path: Path, tiny_liif: Path) -> None:
    with pytest.raises(CheckpointError, match="set encoder/model_args") as info:
        check_init(_smoke_cfg(init=str(tiny_liif)))
    assert str(tiny_liif) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        check_init(_smoke_cfg(init=str(tmp_path / "nope.safetensors")))
    check_init(_smoke_cfg(init=str(_init_checkpoint(tmp_path / "ok.safetensors"))))
    check_init(_smoke_cfg())  # no init: nothing to check


def test_train_job_rejects_bad_init_before_starting_ray(tmp_path: Path, tiny_liif: Path,
                                                         capsys) -> None:
    for bad, msg in ((str(tmp_path / "missing.safetensors"), "missing.safetensors"),
                     (str(tiny_liif), "set encoder/model_args"),
                     ("no-such-bundled-name", "no-such-bundled-name")):
        with pytest.raises(SystemExit) as info:
            train_job.main(["--config", str(SMOKE), "--init", bad, "--gt", str(tmp_path)])
        assert info.value.code == 2
        assert msg in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_finetune_workflow_smoke(ray_local, tmp_path: Path, capsys) -> None:
    """GT from two dates (3 of 4 bands) -> Ray Train from --init -> evaluation on a third date."""
    dates = [_scene(tmp_path / f"scene_{y}.tif", i) for i, y in enumerate((2015, 2016, 2019))]
    gt = tmp_path / "gt"
    assert make_gt_job.main(["--input", str(dates[0]), str(dates[1]), "--output", str(gt),
                             "--bands", "0", "1", "2", "--patch", "32", "--random", "8",
                             "--scale-range", "1", "2", "--lr-size", "16", "--workers", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] >= 8
    init = _init_checkpoint(tmp_path / "init.safetensors", seed=3)
    assert train_job.main(["--config", str(SMOKE), "--gt", str(gt), "--init", str(init),
                           "--workers", "1", "--storage-path", str(tmp_path / "runs"),
                           "--run-name", "ft", "--steps", "4", "--set", "lr=1e-5"]) == 0
    final = tmp_path / "runs" / "ft" / "final.safetensors"
    meta = read_metadata(final)
    assert meta["training"]["config"]["init"] == str(init)
    a, b = load_model(init).state_dict(), load_model(final).state_dict()
    deltas = [float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()]
    assert max(deltas) > 0, "fine-tuning changed nothing"
    assert max(deltas) < 1e-3, "4 steps at lr 1e-5 moved weights far: not started from --init?"
    out = tmp_path / "held_out.json"
    capsys.readouterr()
    assert evaluate_job.main(["--model", f"init={init}", f"finetuned={final}", "--raster",
                              f"held-out-2019={dates[2]}", "--window", "48", "--scales", "2", "3",
                              "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["windows"]["held-out-2019"] == 3  # the top-left window touches nodata
    for method in ("bicubic", "init", "finetuned"):
        assert np.isfinite(res["results"]["held-out-2019"][method]["2"])
