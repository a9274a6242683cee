"""Training: the implicit-downsampling sampler, one optimisation step, and the resumable loop."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from liif.checkpoint import read_metadata
from liif.data import ImageFolderSampler, SamplerConfig
from liif.liif import LIIF
from liif.resize import resize_bicubic
from liif.train import TrainConfig, make_model, train, train_step
from pipeline.training.config import load_train_config

SMALL_ENCODER = {"name": "edsr-baseline",
                 "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}}
SMALL_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 32]}}


def position_image(h: int = 200, w: int = 230) -> torch.Tensor:
    """uint8 ``(3, h, w)``: R = row, G = column, B = (row + column) mod 256 (h, w <= 256)."""
    y = torch.arange(h)[:, None].expand(h, w)
    x = torch.arange(w)[None, :].expand(h, w)
    return torch.stack([y, x, (y + x) % 256]).to(torch.uint8)


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 ``(3, h, w)``: a random image blown up bicubically (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(3, h // 8, w // 8, generator=g)
    return (resize_bicubic(small, (h, w)).clamp(0, 1) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- sampler


def test_sampler_shapes_cells_coords_and_gt() -> None:
    cfg = SamplerConfig(inp_size=48, scale_min=1.0, scale_max=4.0, sample_q=300, augment=False)
    img = position_image()
    sampler = ImageFolderSampler(cfg=cfg, images=[img])
    b = sampler.batch(6, np.random.default_rng(0))
    assert b["inp"].shape == (6, 3, 48, 48)
    assert b["coord"].shape == (6, 300, 2) and b["cell"].shape == (6, 300, 2)
    assert b["gt"].shape == (6, 300, 3) and b["scale"].shape == (6,)
    assert b["inp"].dtype == b["gt"].dtype == torch.float32
    assert bool(((b["scale"] >= 1) & (b["scale"] <= 4)).all())
    assert len(set(b["scale"].tolist())) == 6  # every patch draws its own scale
    assert bool((b["coord"].abs() < 1).all())
    for k in range(6):
        n = round(48 * float(b["scale"][k]))  # HR patch side
        assert torch.allclose(b["cell"][k], torch.full((300, 2), 2 / n))
        # coordinates are HR pixel centres -1 + (2 i + 1) / n ...
        idx = (b["coord"][k].double() + 1) * n / 2 - 0.5
        assert torch.allclose(idx, idx.round(), atol=1e-4)
        i, j = idx.round().long().unbind(-1)
        assert int(i.min()) >= 0 and int(i.max()) < n and int(j.min()) >= 0 and int(j.max()) < n
        # ... and gt is the HR pixel there: one crop origin explains every sample
        gt = (b["gt"][k] * 255).round().long()
        y0, x0 = gt[:, 0] - i, gt[:, 1] - j
        assert len(set(y0.tolist())) == 1 and len(set(x0.tolist())) == 1
        y0, x0 = int(y0[0]), int(x0[0])
        assert 0 <= y0 <= img.shape[1] - n and 0 <= x0 <= img.shape[2] - n
        assert torch.equal(gt[:, 2], (y0 + i + x0 + j) % 256)
        # the LR input is the bicubic downscale of that same crop
        hr = img[:, y0:y0 + n, x0:x0 + n].float() / 255
        torch.testing.assert_close(b["inp"][k], resize_bicubic(hr, (48, 48)).clamp(0, 1))


def test_sampler_deterministic_per_seed() -> None:
    cfg = SamplerConfig(inp_size=16, sample_q=64)
    sampler = ImageFolderSampler(cfg=cfg, images=[smooth_image(96, 80, 0), position_image(70, 90)])
    a = sampler.batch(4, np.random.default_rng(7))
    b = sampler.batch(4, np.random.default_rng(7))
    c = sampler.batch(4, np.random.default_rng(8))
    assert set(a) == {"inp", "coord", "cell", "gt", "scale"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["gt"], c["gt"])


def test_sampler_small_image_limits_scale() -> None:
    """An image shorter than inp_size * scale_max is used only at the scales it allows."""
    cfg = SamplerConfig(inp_size=16, scale_min=1.0, scale_max=4.0, sample_q=8)
    sampler = ImageFolderSampler(cfg=cfg, images=[position_image(30, 100),
                                                  position_image(10, 10)])
    assert len(sampler.images) == 1  # the 10x10 one is below inp_size and is dropped
    b = sampler.batch(8, np.random.default_rng(1))
    assert float(b["scale"].max()) <= 29.5 / 16
    with pytest.raises(ValueError, match="at least 16 px"):
        ImageFolderSampler(cfg=cfg, images=[position_image(10, 10)])


# ----------------------------------------------------------------------------- one step


def _small_model(seed: int) -> LIIF:
    torch.manual_seed(seed)
    return LIIF(SMALL_ENCODER, SMALL_IMNET)


def test_train_step_reduces_loss_on_fixed_batch() -> None:
    sampler = ImageFolderSampler(cfg=SamplerConfig(inp_size=16, sample_q=256),
                                 images=[smooth_image(96, 96, 1)])
    batch = sampler.batch(2, np.random.default_rng(2))
    model = _small_model(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = [train_step(model, batch, opt) for _ in range(15)]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
    assert model.training
    assert losses[-1] < 0.6 * losses[0], losses
    assert min(losses[-3:]) < min(losses[:3])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "imnet.layers.0.weight" in changed and "encoder.head.0.weight" in changed
    assert "encoder.sub_mean.bias" not in changed  # frozen, unused


def test_train_step_bf16_autocast_and_grad_clip() -> None:
    sampler = ImageFolderSampler(cfg=SamplerConfig(inp_size=16, sample_q=64),
                                 images=[smooth_image(64, 64, 4)])
    batch = sampler.batch(2, np.random.default_rng(4))
    model = _small_model(5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = train_step(model, batch, opt, grad_clip=1e-3, amp_dtype=torch.bfloat16)
    assert np.isfinite(loss) and loss > 0


# ----------------------------------------------------------------------------- the loop


def _config(out_dir: Path, steps: int, **kw: object) -> TrainConfig:
    """A tiny run. TrainConfig has no encoder-args field: the small encoder comes in through
    ``model_args['encoder_spec']``, which overrides the one built from ``encoder``."""
    base = dict(out_dir=str(out_dir), model_args={"encoder_spec": SMALL_ENCODER,
                                                  "imnet_spec": SMALL_IMNET},
                steps=steps, batch_size=2, inp_size=16, sample_q=64, lr=1e-3, milestones=(),
                save_every=2, log_every=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _sampler(cfg: TrainConfig) -> ImageFolderSampler:
    return ImageFolderSampler(cfg=cfg.sampler_config(), images=[smooth_image(80, 72, 9)])


def _metrics_steps(out_dir: Path) -> list[int]:
    with open(out_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"step", "loss", "lr", "seconds", "samples_per_s"}
    return [int(r["step"]) for r in rows]


def test_small_encoder_through_model_args(tmp_path: Path) -> None:
    model = make_model(_config(tmp_path, 1))
    assert model.encoder.out_dim == 16 and model.encoder.receptive_radius == 6
    assert model.imnet.hidden_list == [32, 32]


def test_train_writes_checkpoint_and_metrics_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    logs: list[str] = []
    cfg3 = _config(out, 3)
    summary = train(cfg3, sampler=_sampler(cfg3), log=logs.append)
    assert summary["steps"] == 3
    assert Path(summary["checkpoint"]) == out / "model.safetensors"
    assert (out / "model.safetensors").is_file() and (out / "trainer.pt").is_file()
    assert Path(summary["final"]) == out / "final.safetensors"
    meta = read_metadata(out / "model.safetensors")
    assert meta["training"]["step"] == 3
    assert meta["training"]["config"]["steps"] == 3
    assert meta["spec"]["args"]["encoder_spec"] == SMALL_ENCODER
    assert _metrics_steps(out) == [1, 2, 3]
    assert not any("resumed" in m for m in logs)

    logs.clear()
    cfg5 = _config(out, 5)
    summary = train(cfg5, sampler=_sampler(cfg5), log=logs.append)
    assert summary["steps"] == 5
    assert any(f"resumed from {out} at step 3" in m for m in logs), logs
    assert _metrics_steps(out) == [1, 2, 3, 4, 5]  # continued, not restarted
    assert read_metadata(out / "model.safetensors")["training"]["step"] == 5

    # resuming is exact: the same as one uninterrupted 5-step run
    straight = tmp_path / "straight"
    cfg = _config(straight, 5)
    train(cfg, sampler=_sampler(cfg), log=lambda m: None)
    a = _load_state(out / "model.safetensors")
    b = _load_state(straight / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)

    # a finished run asked for the same number of steps does nothing more
    logs.clear()
    summary = train(cfg5, sampler=_sampler(cfg5), log=logs.append)
    assert summary["steps"] == 5 and _metrics_steps(out) == [1, 2, 3, 4, 5]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict({"data": "x", "milestones": [0.5]}).data == ("x",)


def test_config_from_yaml_with_overrides_coerces_yaml11_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("steps: 100\nlr: 2.0e-4\nmilestones: [0.5]\n")
    # PyYAML (YAML 1.1) reads '1e-4' and '1.5e3' as strings: they must still become numbers
    cfg = load_train_config(path, ["lr=1e-4", "steps=1.5e3", "milestones=[0.6, 0.85]",
                                  "grad_clip=1e-1"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.steps == 1500 and isinstance(cfg.steps, int)
    assert cfg.milestones == (0.6, 0.85) and cfg.grad_clip == 0.1
    assert load_train_config(path).lr == 2e-4
    for bad, msg in ((["lr=abc"], "'lr' must be a number, got 'abc'"),
                     (["steps=2.5"], "'steps' must be an integer, got 2.5"),
                     (["batch_size=true"], "'batch_size' must be a number, got True"),
                     (["lr=[1]"], "'lr' must be a number"),
                     (["oops"], "KEY=VALUE, got 'oops'"),
                     (["stepz=3"], "unknown training config keys")):
        with pytest.raises(ValueError, match=msg.replace("[", r"\[")):
            load_train_config(path, bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_train_config(tmp_path / "list.yaml")
