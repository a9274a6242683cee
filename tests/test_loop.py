"""liif.loop: the one training loop and run-folder layout (both backends and both families use
it); old run folders still resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from liif.checkpoint import save_checkpoint
from liif.loop import ResumeError, Training, load_run, read_metrics, run_loop, save_run
from liif.train import TrainConfig, liif_step, make_training

SMALL = {"encoder_spec": {"name": "edsr-baseline",
                          "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
         "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}}


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, inp_size=8, sample_q=16, save_every=2,
                       log_every=1, model_args=SMALL, milestones=(0.5,))


def _batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        yield {"inp": torch.from_numpy(rng.random((2, 3, 8, 8), dtype=np.float32)),
               "coord": torch.from_numpy(rng.uniform(-1, 1, (2, 16, 2)).astype(np.float32)),
               "cell": torch.full((2, 16, 2), 0.1),
               "gt": torch.from_numpy(rng.random((2, 16, 3), dtype=np.float32))}


def _train(t: Training, cfg: TrainConfig, folder: Path, batches, steps: int | None = None) -> dict:
    return run_loop(t, liif_step(cfg, t), batches, steps=steps or cfg.steps, log_every=1,
                    save_every=2,
                    samples_per_step=2, on_log=lambda r: None,
                    on_save=lambda r: save_run(folder, t, training={"config": "x"}))


def test_rows_saves_schedule_and_exact_resume(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(4)
    full = make_training(cfg)
    saves: list[int] = []
    rows: list[dict] = []
    run_loop(full, liif_step(cfg, full), _batches(), steps=4, log_every=1, save_every=2,
             samples_per_step=2, on_log=rows.append, on_save=lambda r: saves.append(r["step"]))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and saves == [2, 4]
    assert [r["lr"] for r in rows] == [1e-4, 5e-5, 5e-5, 5e-5]  # halved at 50 %
    assert set(rows[0]) == {"step", "loss", "lr", "samples_per_s", "seconds"}

    torch.manual_seed(0)
    first = make_training(cfg)  # the same schedule, interrupted after 2 of 4 steps
    batches = _batches()
    _train(first, cfg, tmp_path / "run", batches, steps=2)
    again = make_training(cfg)
    assert load_run(tmp_path / "run", again)
    assert again.step == 2 and len(again.history) == 2
    _train(again, cfg, tmp_path / "run", batches)
    for k, v in full.module.state_dict().items():
        torch.testing.assert_close(again.module.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2, 3, 4]


def test_an_empty_folder_is_a_fresh_run(tmp_path: Path) -> None:
    assert not load_run(tmp_path, make_training(_cfg(2)))


def test_old_local_layout_still_resumes(tmp_path: Path) -> None:
    """``liif train`` used to write last.safetensors + last-trainer.pt (one optimiser)."""
    cfg = _cfg(4)
    old = make_training(cfg)
    _train(old, _cfg(2), tmp_path / "tmp", _batches())
    save_checkpoint(old.module, tmp_path / "last.safetensors", training={"step": 2})
    torch.save({"step": 2, "optimizer": old.optimizers["main"].state_dict(),
                "scheduler": old.schedulers["main"].state_dict(),
                "rng": json.dumps(np.random.default_rng(1).bit_generator.state),
                "torch_rng": torch.get_rng_state()}, tmp_path / "last-trainer.pt")
    new = make_training(cfg)
    assert load_run(tmp_path, new)
    assert new.step == 2 and new.schedulers["main"].last_epoch == 2
    for k, v in old.module.state_dict().items():
        assert torch.equal(new.module.state_dict()[k], v), k


def test_torn_save_and_other_architecture_are_refused(tmp_path: Path) -> None:
    cfg = _cfg(2)
    t = make_training(cfg)
    _train(t, cfg, tmp_path, _batches())
    other = make_training(TrainConfig(model_args={**SMALL, "imnet_spec": {
        "name": "mlp", "args": {"out_dim": 3, "hidden_list": [8]}}}))
    with pytest.raises(ResumeError, match="different architecture"):
        load_run(tmp_path, other)
    state = torch.load(tmp_path / "trainer.pt", weights_only=True)
    state["step"] = 7
    torch.save(state, tmp_path / "trainer.pt")
    with pytest.raises(ResumeError, match="interrupted while saving"):
        load_run(tmp_path, make_training(cfg))
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "last.safetensors").write_bytes(b"")  # no legacy pair either
    with pytest.raises(ResumeError, match="does not"):
        load_run(tmp_path, make_training(cfg))


def test_a_non_finite_loss_stops_the_loop() -> None:
    t = Training(model=nn.Linear(1, 1), optimizers={"o": torch.optim.SGD(
        nn.Linear(1, 1).parameters(), lr=0.1)})
    with pytest.raises(FloatingPointError, match="nan at step 1"):
        run_loop(t, lambda m, b: float("nan"), iter([0]), steps=1, log_every=1, save_every=1,
                 samples_per_step=1, on_log=lambda r: None, on_save=lambda r: None)


def test_local_backend_trains_on_gt_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``liif train --backend local --gt``: GT shards streamed by GTShardSampler."""
    from PIL import Image

    from jobs import train
    from pipeline.gt import GTConfig, make_gt

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
    make_gt(GTConfig(inputs=(str(tmp_path / "imgs"),), output=str(tmp_path / "gt"), patch=24,
                     stride=24, scales=(2.0,), scale_range=None, lr_size=8, patches_per_shard=4),
            workers=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("steps: 2\nbatch_size: 2\nsample_q: 16\nsave_every: 2\nlog_every: 1\n"
                   f"model_args: {json.dumps(SMALL)}\n")
    rc = train.main(["--backend", "local", "--config", str(cfg), "--gt", str(tmp_path / "gt"),
                     "--storage-path", str(tmp_path / "runs"), "--run-name", "r"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "local" and summary["steps"] == 2
    assert (tmp_path / "runs" / "r" / "final.safetensors").is_file()
