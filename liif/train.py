"""Single-process LIIF training: one step function, one loop (no Ray; Ray Train reuses the step).

The paper's recipe by default: 48x48 LR patches, s ~ U(1, 4), 2304 sampled HR pixels per patch,
L1 loss on normalised RGB, Adam 1e-4 halved at 20/40/60/80 % of training, batch 16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liif.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from liif.data import ImageFolderSampler, SamplerConfig
from liif.liif import LIIF
from liif.loop import (
    FINAL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Training,
    load_run,
    make_run_folder,
    run_loop,
    save_run,
    write_metrics,
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved inside each checkpoint's metadata."""

    data: tuple[str, ...] = ()
    out_dir: str = "runs/liif"
    encoder: str = "edsr-baseline"
    model_args: dict = field(default_factory=dict)  # LIIF switches: local_ensemble, ...
    steps: int = 1000
    batch_size: int = 16
    inp_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304
    lr: float = 1e-4
    milestones: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # fractions of `steps`
    gamma: float = 0.5
    grad_clip: float | None = None
    seed: int = 0
    save_every: int = 200
    log_every: int = 20
    threads: int | None = None
    init: str | None = None  # start from these weights (fine-tuning)
    amp: str | None = None  # "bf16" (CPU/GPU) or "fp16" (GPU) autocast; None = fp32

    def __post_init__(self) -> None:
        for k in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp {self.amp!r} is not one of None, 'bf16', 'fp16'")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Config from a mapping (a YAML file: :func:`pipeline.training.config.load_train_config`)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("data", "milestones"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k]) if not isinstance(d[k], str) else (d[k],)
        for k, v in d.items():
            d[k] = _coerce(k, v, cls.__dataclass_fields__[k].type)
        return cls(**d)

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(self.inp_size, self.scale_min, self.scale_max, self.sample_q)


def _coerce(key: str, value: Any, annotation: object) -> Any:
    """Numbers written as YAML 1.1 strings (``1e-4``) become numbers; other mismatches raise."""
    kind = {"int": int, "float": float}.get(str(annotation).split(" |")[0])
    if kind is None or value is None or isinstance(value, bool):
        if kind is not None and isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"config key {key!r} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def make_model(cfg: TrainConfig) -> nn.Module:
    spec = {"name": "liif", "args": {"encoder_spec": {"name": cfg.encoder,
                                                      "args": {"no_upsampling": True}},
                                     **cfg.model_args}}
    return build_model(spec)


def check_init(cfg: TrainConfig) -> None:
    """Fail early if ``cfg.init`` cannot start ``cfg``'s architecture.

    Raises ``FileNotFoundError`` (no such file or bundled name) or :class:`CheckpointError`
    (a different architecture: the message names the mismatching keys).
    """
    if cfg.init is None:
        return
    init = load_checkpoint(cfg.init)
    model = make_model(cfg)
    if getattr(init, "spec", None) != model.spec:
        raise CheckpointError(
            f"init {cfg.init!r} is {getattr(init, 'spec', type(init).__name__)}, but the config "
            f"builds {model.spec}: set encoder/model_args to match the initial weights")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    milestones = sorted({max(1, int(round(f * cfg.steps))) for f in cfg.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    return opt, sched


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               *, grad_clip: float | None = None, amp_dtype: torch.dtype | None = None,
               scaler: Any = None) -> float:
    """One optimisation step on a batch from :class:`ImageFolderSampler` (any device).

    batch: inp ``(B, 3, 48, 48)`` in [0, 1], coord/cell ``(B, Q, 2)``, gt ``(B, Q, 3)`` in [0, 1].
    Returns the L1 loss (normalised space, as the paper).
    """
    model.train()
    device = next(model.parameters()).device
    inp = ((batch["inp"].to(device) - 0.5) / 0.5)
    gt = ((batch["gt"].to(device) - 0.5) / 0.5)
    coord, cell = batch["coord"].to(device), batch["cell"].to(device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred = model(inp, coord, cell)
        loss = torch.nn.functional.l1_loss(pred.float(), gt)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(loss.detach())


def make_training(cfg: TrainConfig, *, prepare: Callable[[nn.Module], nn.Module] | None = None,
                  scaler: Any = None) -> Training:
    """The model (from ``cfg.init`` when given), its Adam optimiser and the paper's schedule.

    ``prepare`` wraps the model before the optimiser is made (Ray Train: device + DDP); the
    unwrapped model stays ``Training.module``.
    """
    module = make_model(cfg)
    if cfg.init:
        module.load_state_dict(load_checkpoint(cfg.init).state_dict())
    model = prepare(module) if prepare is not None else module
    module = getattr(model, "module", model)
    opt, sched = make_optimizer(model, cfg)
    return Training(model=model, module=module, optimizers={"main": opt},
                    schedulers={"main": sched}, scaler=scaler)


def liif_step(cfg: TrainConfig, t: Training) -> Callable[[nn.Module, Any], float]:
    """The LIIF step for :func:`liif.loop.run_loop`: :func:`train_step` with ``t``'s optimiser
    and scaler and ``cfg``'s AMP and gradient clipping."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[cfg.amp]
    opt = t.optimizers["main"]
    return lambda model, batch: train_step(model, batch, opt, grad_clip=cfg.grad_clip,
                                           amp_dtype=amp, scaler=t.scaler)


def train(cfg: TrainConfig, *, sampler: ImageFolderSampler | None = None,
          validate: Callable[[nn.Module], dict[str, float]] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) in ``cfg.out_dir`` (the :mod:`liif.loop` run-folder layout); returns a
    summary with the latest (``checkpoint``) and final weights."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    make_run_folder(out_dir, role="out_dir")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t = make_training(cfg)
    if load_run(out_dir, t, rng=rng):
        log(f"resumed from {out_dir} at step {t.step}")
    sampler = sampler or ImageFolderSampler(cfg.data, cfg.sampler_config())
    step_fn = liif_step(cfg, t)

    def batches() -> Any:
        while True:
            yield sampler.batch(cfg.batch_size, rng)

    def on_log(row: dict[str, Any]) -> None:
        write_metrics(t.history, out_dir / METRICS_FILE)
        log(progress_line(None, cfg.steps, row))

    def on_save(row: dict[str, Any]) -> None:
        save_run(out_dir, t, training={"config": asdict(cfg), "metrics": row}, rng=rng)

    run = run_loop(t, step_fn, batches(), steps=cfg.steps, log_every=cfg.log_every,
                   save_every=cfg.save_every, samples_per_step=cfg.batch_size, on_log=on_log,
                   on_save=on_save, validate=validate)
    assert t.module is not None  # Training.__post_init__ sets it
    final = save_checkpoint(t.module, out_dir / FINAL_FILE,
                            training={"step": t.step, "config": asdict(cfg)})
    losses = run["losses"]
    return {"checkpoint": str(out_dir / MODEL_FILE), "final": str(final), "steps": t.step,
            "seconds": round(t.seconds, 1),
            "loss_last": (sum(losses) / len(losses)) if losses else None}


def progress_line(run: str | None, steps: int, metrics: dict[str, Any]) -> str:
    """One human-readable line per log interval: step, loss, lr, samples/s, seconds, ETA and
    any validation columns."""
    done = metrics["step"]
    rate = metrics["seconds"] / max(1, done)
    extra = " ".join(f"{k} {v}" for k, v in metrics.items()
                     if k not in ("step", "loss", "lr", "samples_per_s", "seconds"))
    return (f"train {run + ' ' if run else ''}step {done}/{steps} loss {metrics['loss']:.4f} "
            f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.1f} samples/s "
            f"{metrics['seconds']:.0f} s ETA {rate * (steps - done):.0f} s {extra}").rstrip()


def psnr_model_on(model: LIIF, pairs: list[tuple[torch.Tensor, torch.Tensor, float]]) -> float:
    """Mean benchmark Y-PSNR of ``model`` over (lr, hr, scale) pairs (for quick validation)."""
    from liif.infer import upscale
    from liif.metrics import psnr

    model.eval()
    vals = [psnr(upscale(model, lr, size=(hr.shape[-2], hr.shape[-1])), hr, scale=s, dataset="benchmark")
            for lr, hr, s in pairs]
    model.train()
    finite = [v for v in vals if math.isfinite(v)]
    return float(sum(finite) / max(1, len(finite)))
