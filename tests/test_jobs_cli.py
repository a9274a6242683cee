"""The `liif` command, `jobs.evaluate`, `jobs.train_local` and the demo input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import cli, train
from jobs import evaluate as evaluate_job
from liif import LIIF, save_checkpoint

TINY = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}}
TINY_MLP = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}


@pytest.fixture()
def tiny_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(LIIF(TINY, TINY_MLP), tmp_path / "tiny.safetensors")


def test_cli_usage_and_unknown_command(capsys) -> None:
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def _bench_folder(root: Path) -> Path:
    hr = root / "Mini" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(37, 53), (48, 36)]):
        y, x = np.mgrid[:h, :w]
        img = (127 + 60 * np.sin(x / 4.0 + i)[..., None] + rng.normal(0, 8, (h, w, 3)))
        Image.fromarray(np.clip(img + 30 * np.cos(y / 5.0)[..., None], 0, 255).astype(np.uint8)) \
            .save(hr / f"img{i}.png")
    return root


def test_evaluate_job_table(tmp_path: Path, tiny_ckpt: Path, capsys) -> None:
    data = _bench_folder(tmp_path / "bench")
    out_json = tmp_path / "res.json"
    rc = evaluate_job.main(["--model", str(tiny_ckpt), "--data", str(data), "--sets", "Mini",
                            "--scales", "2", "6", "--json", str(out_json), "--out",
                            str(tmp_path / "t.md")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| Mini | bicubic |" in table and "| Mini | liif |" in table
    res = json.loads(out_json.read_text())["results"]["Mini"]
    for method in ("bicubic", "liif"):
        for s in ("2", "6"):
            assert np.isfinite(res[method][s]) and 5 < res[method][s] < 60
    assert res["bicubic"]["2"] > res["bicubic"]["6"]  # x2 is easier than x6


def test_evaluate_job_errors(tmp_path: Path, tiny_ckpt: Path, capsys) -> None:
    assert evaluate_job.main(["--model", str(tiny_ckpt), "--data", str(tmp_path),
                              "--sets", "Nope"]) == 2
    assert "Nope" in capsys.readouterr().err
    data = _bench_folder(tmp_path / "b")
    assert evaluate_job.main(["--model", str(tmp_path / "missing.safetensors"), "--data",
                              str(data), "--sets", "Mini"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_benchmark_pair_reproduces_matlab_lr(shared_data: Path) -> None:
    from liif.data import load_rgb
    from liif.evaluation import benchmark_pair

    lr, hr = benchmark_pair(load_rgb(shared_data / "benchmark/Set5/HR/bird.png"), 3)
    ref = load_rgb(shared_data / "benchmark/Set5/LR_bicubic/X3/birdx3.png").float() / 255
    assert lr.shape == ref.shape and hr.shape[-2:] == (ref.shape[-2] * 3, ref.shape[-1] * 3)
    assert (lr - ref).abs().max() == 0


def test_train_local_job_runs_and_resumes(tmp_path: Path, capsys) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: ['{imgs}']\nout_dir: {tmp_path / 'run'}\nsteps: 2\nbatch_size: 2\n"
        "inp_size: 12\nscale_min: 1\nscale_max: 3\nsample_q: 32\nsave_every: 2\nlog_every: 1\n"
        "model_args: {encoder_spec: {name: edsr-baseline, args: {no_upsampling: true, "
        "n_resblocks: 1, n_feats: 8}}, imnet_spec: {name: mlp, args: {out_dim: 3, "
        "hidden_list: [16]}}}\n")
    where = ["--backend", "local", "--config", str(cfg), "--storage-path", str(tmp_path),
             "--run-name", "run"]
    assert train.main(where) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["checkpoint"]).is_file()
    assert Path(summary["final"]) == tmp_path / "run" / "final.safetensors"
    assert train.main([*where, "--set", "steps=3"]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.err and '"steps": 3' in captured.out
    assert "train step 3/3" in captured.err and "ETA" in captured.err
    with pytest.raises(SystemExit):
        train.main([*where, "--set", "bogus_key=1"])


def test_demo_input_is_the_bundled_sample(tmp_path: Path) -> None:
    import zarr

    from jobs.upscale import demo_input

    path = demo_input(tmp_path)
    arr = zarr.open_array(str(path), mode="r")
    assert arr.shape == (3, 512, 512) and arr.dtype == np.uint8
    assert demo_input(tmp_path) == path  # reused, not rewritten
