"""``ray job submit --working-dir . -- python -m jobs.upscale ...`` on a real local Ray head: the
job exits 0 and its output equals an in-process run of the same job (and the whole image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_tiny_liif as tiny_checkpoint
from PIL import Image

import liif
from pipeline.io.sources import SourceSpec
from pipeline.io.values import to_unit
from pipeline.io.zarr_output import OutputSpec
from pipeline.upscale import UpscaleConfig, run_upscale


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_upscale(submit_job, tmp_path: Path) -> None:
    """Submitted job: exit 0, output exists, equals the in-process run (uint8: equal except at
    exact rounding ties, where it may differ by 1)."""
    rgb = np.random.default_rng(3).integers(0, 256, (27, 35, 3), dtype=np.uint8)
    png = tmp_path / "tiny.png"
    Image.fromarray(rgb).save(png)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "submitted.zarr"
    res = submit_job(["python", "-m", "jobs.upscale", "--input", str(png), "--output", str(out),
                      "--scale", "2", "--model", str(ckpt), "--workers", "1", "--tile", "32",
                      "--chunk", "16", "--no-progress"], timeout=300)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert '"tiles": 6' in res.stdout + res.stderr  # the job's JSON summary reached the log
    assert (out / "image" / "zarr.json").is_file()
    submitted = np.asarray(zarr.open_array(str(out), path="image", mode="r")[...])

    local = tmp_path / "local.zarr"
    run_upscale(UpscaleConfig(source=SourceSpec(str(png)), output=OutputSpec(str(local)),
                              scale=2.0, model=str(ckpt), tile=32, chunk=16, executor="in-process",
                              progress=False))
    expected = np.asarray(zarr.open_array(str(local), path="image", mode="r")[...])
    assert submitted.shape == expected.shape == (3, 54, 70)
    assert submitted.dtype == np.uint8

    img = torch.from_numpy(to_unit(rgb.transpose(2, 0, 1), (0.0, 255.0)))
    ref = liif.upscale(liif.load_model(ckpt), img, scale=2.0).numpy().astype(np.float64) * 255
    near_tie = np.abs(ref - np.floor(ref) - 0.5) < 1e-3
    diff = np.abs(submitted.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and not (diff > 0)[~near_tie].any()
    assert len(np.unique(submitted)) > 50
