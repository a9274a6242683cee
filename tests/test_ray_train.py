"""pipeline.training.ray_train: Ray Train (V2) DDP training on GT shards / image folders, resume, S3."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from liif.checkpoint import read_metadata
from liif.train import TrainConfig
from pipeline.errors import ConfigError
from pipeline.training.ray_train import RayTrainOptions, read_final_metrics, run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMOKE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "smoke.yaml"


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**yaml.safe_load(SMOKE.read_text()), **kw})


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> dict[str, str]:
    """Smooth, low-contrast images (easy to fit) and their GT shards (made in-process)."""
    from PIL import Image

    from pipeline.gt import GTConfig, make_gt

    root = tmp_path_factory.mktemp("easy")
    folder = root / "images"
    folder.mkdir()
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    for i in range(3):
        # bright: the untrained model's output (about 0.5) is far off, so the loss drops fast
        img = np.stack([0.8 + 0.1 * xx, 0.8 + 0.1 * yy, 0.85 + 0.05 * (xx - yy) * (i - 1)], -1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"g{i}.png")
    gt = root / "gt"
    make_gt(GTConfig(inputs=(str(folder),), output=str(gt), patch=32, stride=8,
                     scale_range=(1.0, 2.0), lr_size=16, patches_per_shard=12), workers=0)
    return {"folder": str(folder), "gt": str(gt)}


def test_options_validate_with_specific_messages():
    with pytest.raises(ConfigError, match="workers must be a positive integer, got 0"):
        RayTrainOptions(workers=0)
    with pytest.raises(ConfigError, match="run_name 'a/b'"):
        RayTrainOptions(run_name="a/b")
    with pytest.raises(ConfigError, match="needs an s3:// storage_path"):
        RayTrainOptions(storage_path="/tmp/x", s3_endpoint="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="give GT shards .* or image folders .*, not both"):
        run_training(_cfg(), RayTrainOptions(), gt="x", data=["y"])


def test_two_gloo_workers_learn_checkpoint_and_resume(ray_local, easy_data, tmp_path):
    import liif

    opts = RayTrainOptions(workers=2, storage_path=str(tmp_path / "runs"), run_name="gt2",
                           num_to_keep=1)
    first = run_training(_cfg(steps=10, save_every=5, log_every=1), opts, gt=easy_data["gt"])
    assert (first["start_step"], first["step"]) == (0, 10)
    rows = read_final_metrics(opts)
    assert [r["step"] for r in rows] == list(range(1, 11))
    losses = [r["loss"] for r in rows]  # mean over both ranks
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    run_dir = tmp_path / "runs" / "gt2"
    assert (run_dir / "checkpoint_000000010" / "trainer.pt").is_file()
    assert not (run_dir / "checkpoint_000000005").exists()  # num_to_keep=1
    final = Path(first["final"])
    assert final == run_dir / "final.safetensors"
    assert read_metadata(final)["training"]["step"] == 10
    out = liif.upscale(liif.load_model(final), torch.full((3, 10, 10), 0.5), scale=2.5)
    assert out.shape == (3, 25, 25) and torch.isfinite(out).all()

    # the same run name resumes from the step-10 checkpoint and continues to 12
    second = run_training(_cfg(steps=12, save_every=2, log_every=1), opts, gt=easy_data["gt"])
    assert (second["start_step"], second["step"]) == (10, 12)
    assert [r["step"] for r in read_final_metrics(opts)] == list(range(1, 13))
    assert read_metadata(run_dir / "final.safetensors")["training"]["step"] == 12


@pytest.fixture(scope="module")
def moto_s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", key="testing",
                               secret="testing")
        fs.mkdir("liif-runs")
        yield {"endpoint": f"http://{host}:{port}", "fs": fs}
    server.stop()


def test_storage_on_s3_with_folder_sampler_and_validation(ray_local, moto_s3, easy_data,
                                                          tmp_path):
    from PIL import Image

    import liif

    hr_dir = tmp_path / "val" / "benchmark" / "Set5" / "HR"  # a one-image stand-in for Set5
    hr_dir.mkdir(parents=True)
    Image.open(Path(easy_data["folder"]) / "g0.png").save(hr_dir / "g0.png")
    opts = RayTrainOptions(workers=1, storage_path="s3://liif-runs/exp",
                           s3_endpoint=moto_s3["endpoint"], run_name="s3run",
                           val_root=str(tmp_path / "val"), val_images=1, val_scales=(2,))
    s = run_training(_cfg(steps=3, save_every=3, log_every=3, data=[easy_data["folder"]]), opts)
    assert s["final"] == "s3://liif-runs/exp/s3run/final.safetensors"
    assert s["step"] == 3 and "liif-runs/exp/s3run/checkpoint_000000003" in s["checkpoint"]
    fs = moto_s3["fs"]
    (tmp_path / "final.safetensors").write_bytes(fs.cat_file(
        "liif-runs/exp/s3run/final.safetensors"))
    model = liif.load_model(tmp_path / "final.safetensors")
    assert read_metadata(tmp_path / "final.safetensors")["training"]["step"] == 3
    assert sum(p.numel() for p in model.parameters()) > 0
    rows = read_final_metrics(opts)
    assert [r["step"] for r in rows] == [3]
    assert 10 < rows[0]["val_Set5_psnr_x2"] < 80 and s["metrics"]["val_Set5_psnr_x2"] > 10
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_progress_line_names_step_loss_rate_eta_and_validation():
    from liif.train import progress_line

    line = progress_line("run1", 500, {"step": 50, "loss": 0.04567, "lr": 1e-4,
                                       "samples_per_s": 7.25, "seconds": 61.4,
                                       "psnr_set5_x2": 33.1})
    assert line == ("train run1 step 50/500 loss 0.0457 lr 1.00e-04 7.2 samples/s 61 s "
                    "ETA 553 s psnr_set5_x2 33.1")
