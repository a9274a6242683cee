"""One TTSR optimisation step (no Ray): TTSR-rec (L1 only) or full TTSR (all losses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from liif.ttsr.losses import (
    VGGPerceptualLoss,
    reconstruction_loss,
    transferal_perceptual_loss,
    wgan_generator_loss,
    wgan_gp_discriminator_loss,
)
from liif.ttsr.model import TTSR, TTSROutput

BATCH_KEYS = ("lr", "lr_up", "hr", "ref", "ref_down_up")


@dataclass(frozen=True)
class TTSRLossWeights:
    """Loss weights; the defaults are the official TTSR training script's."""

    rec: float = 1.0
    per: float = 1e-2
    tpl: float = 1e-2
    adv: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("rec", "per", "tpl", "adv"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value!r}")


def make_ttsr_optimizers(
    model: TTSR,
    *,
    lr: float = 1e-4,
    lr_lte: float = 1e-5,
    discriminator: nn.Module | None = None,
    lr_dis: float = 1e-4,
) -> dict[str, torch.optim.Optimizer]:
    """The official optimisers: Adam over MainNet (``lr``) and LTE (``lr_lte``) as
    ``"generator"``; Adam(betas=(0, 0.9)) over the critic as ``"discriminator"`` if given."""
    groups = [
        {"params": [p for p in model.MainNet.parameters() if p.requires_grad], "lr": lr},
        {"params": [p for p in model.LTE.parameters() if p.requires_grad], "lr": lr_lte},
    ]
    optimizers: dict[str, torch.optim.Optimizer] = {
        "generator": torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8)
    }
    if discriminator is not None:
        optimizers["discriminator"] = torch.optim.Adam(
            discriminator.parameters(), lr=lr_dis, betas=(0.0, 0.9), eps=1e-8
        )
    return optimizers


def _check_batch(batch: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; needs {list(BATCH_KEYS)}")
    b, _, h, w = batch["lr"].shape
    if tuple(batch["hr"].shape) != (b, 3, 4 * h, 4 * w):
        raise ValueError(f"hr must be ({b}, 3, {4 * h}, {4 * w}), got {tuple(batch['hr'].shape)}")


def ttsr_train_step(
    model: TTSR,
    batch: Mapping[str, torch.Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer],
    *,
    mode: str = "rec",
    loss_weights: TTSRLossWeights | None = None,
    discriminator: nn.Module | None = None,
    perceptual: VGGPerceptualLoss | None = None,
    gan_k: int = 2,
    tpl_kind: str = "l1",
    tpl_use_score: bool = False,
) -> dict[str, float]:
    """One step on ``batch`` (``lr`` ``(B, 3, h, w)``, ``lr_up`` and ``hr`` ``(B, 3, 4h, 4w)``,
    ``ref`` and ``ref_down_up`` ``(B, 3, Hr, Wr)``, all in [-1, 1]).

    ``mode="rec"``: ``rec * L1`` (TTSR-rec). ``mode="full"``: adds ``per * VGG`` (only when
    ``perceptual`` is given), ``tpl * transferal perceptual`` and ``adv * WGAN-GP`` (then
    ``discriminator`` and ``optimizers["discriminator"]`` are required; the critic is updated
    ``gan_k`` times first). ``loss_weights`` defaults to :class:`TTSRLossWeights`. Returns the
    weighted losses as floats (``"loss"`` is their sum; ``"d_loss"`` the last critic loss).
    """
    if mode not in ("rec", "full"):
        raise ValueError(f"mode must be 'rec' or 'full', got {mode!r}")
    if loss_weights is None:
        loss_weights = TTSRLossWeights()
    if "generator" not in optimizers:
        raise ValueError(f"optimizers needs a 'generator' entry, got {sorted(optimizers)}")
    use_adv = mode == "full" and loss_weights.adv > 0.0
    if use_adv and (discriminator is None or "discriminator" not in optimizers):
        raise ValueError(
            "full mode with adv weight "
            f"{loss_weights.adv} needs a discriminator and optimizers['discriminator']"
        )
    if gan_k < 1:
        raise ValueError(f"gan_k must be >= 1, got {gan_k}")
    _check_batch(batch)
    hr = batch["hr"]
    model.train()
    out = model(
        batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"], return_textures=True
    )
    assert isinstance(out, TTSROutput)
    sr = out.sr
    terms: dict[str, torch.Tensor] = {"rec": loss_weights.rec * reconstruction_loss(sr, hr)}
    logs: dict[str, float] = {}
    if mode == "full":
        if perceptual is not None and loss_weights.per > 0.0:
            terms["per"] = loss_weights.per * perceptual(sr, hr)
        if loss_weights.tpl > 0.0:
            terms["tpl"] = loss_weights.tpl * transferal_perceptual_loss(
                model.texture_features(sr), out.textures,
                score=out.score if tpl_use_score else None, kind=tpl_kind,
            )
        if use_adv:
            assert discriminator is not None
            d_opt = optimizers["discriminator"]
            discriminator.train()
            for _ in range(gan_k):
                d_opt.zero_grad(set_to_none=True)
                d_loss = wgan_gp_discriminator_loss(discriminator, hr, sr)
                d_loss.backward()
                d_opt.step()
            logs["d_loss"] = float(d_loss.detach())
            # the generator's loss must not leave gradients on the critic
            flags = [(p, p.requires_grad) for p in discriminator.parameters()]
            discriminator.requires_grad_(False)
            try:
                terms["adv"] = loss_weights.adv * wgan_generator_loss(discriminator, sr)
            finally:
                for p, flag in flags:
                    p.requires_grad_(flag)
    g_opt = optimizers["generator"]
    g_opt.zero_grad(set_to_none=True)
    total = torch.stack(list(terms.values())).sum()
    total.backward()
    g_opt.step()
    logs.update({name: float(value.detach()) for name, value in terms.items()})
    logs["loss"] = float(total.detach())
    return logs
