"""TTSR training losses: reconstruction, transferal perceptual, VGG perceptual, WGAN-GP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from liif.ttsr.lte import MeanShift, load_vgg19_into, read_vgg19_weights, vgg19_layers


def reconstruction_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between ``(B, 3, H, W)`` images."""
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ")
    return F.l1_loss(sr, hr)


def transferal_perceptual_loss(
    sr_features: Sequence[torch.Tensor],
    textures: Sequence[torch.Tensor],
    *,
    score: torch.Tensor | None = None,
    kind: str = "l1",
) -> torch.Tensor:
    """Distance between the LTE features of the SR output and the transferred textures.

    sr_features, textures: ``(lv1, lv2, lv3)`` with shapes ``(B, 64, 4h, 4w)``,
    ``(B, 128, 2h, 2w)``, ``(B, 256, h, w)``. ``kind="l1"`` (default) or ``"l2"``; the
    official training code uses ``"l2"`` (its ``--tpl_type`` default). With ``score``
    ``(B, 1, h, w)`` both sides are weighted by ``sigmoid(S)`` upsampled to each level (the
    official ``tpl_use_S`` option). The per-level means are averaged over the three levels.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
    if len(sr_features) != 3 or len(textures) != 3:
        raise ValueError(f"expected 3 levels each, got {len(sr_features)} and {len(textures)}")
    dist = F.l1_loss if kind == "l1" else F.mse_loss
    total = sr_features[0].new_zeros(())
    for level, (feat, tex) in enumerate(zip(sr_features, textures, strict=True)):
        if feat.shape != tex.shape:
            raise ValueError(
                f"level {level + 1}: features {tuple(feat.shape)} vs textures {tuple(tex.shape)}"
            )
        if score is not None:
            weight = score
            if weight.shape[-2:] != feat.shape[-2:]:
                weight = F.interpolate(weight, size=feat.shape[-2:], mode="bicubic",
                                       align_corners=False)
            weight = torch.sigmoid(weight)
            feat, tex = feat * weight, tex * weight
        total = total + dist(feat, tex)
    return total / 3.0


class VGGPerceptualLoss(nn.Module):
    """MSE between VGG19 relu5_1 features of SR and HR (inputs ``(B, 3, H, W)`` in [-1, 1]).

    Needs a local torchvision-style VGG19 weights file; the network is frozen.
    """

    def __init__(self, vgg_weights: str | Path) -> None:
        super().__init__()
        if vgg_weights is None:
            raise ValueError("VGGPerceptualLoss needs a local VGG19 weights file, got None")
        self.sub_mean = MeanShift()
        self.features = nn.Sequential(*vgg19_layers(30))
        load_vgg19_into(self.features, read_vgg19_weights(vgg_weights), repr(str(vgg_weights)))
        self.requires_grad_(False)
        self.eval()

    def _relu5_1(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.sub_mean((x + 1.0) / 2.0))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if sr.shape != hr.shape:
            raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ")
        with torch.no_grad():
            target = self._relu5_1(hr)
        return F.mse_loss(self._relu5_1(sr), target)


class Discriminator(nn.Module):
    """TTSR's WGAN critic: 10 convs (every second one stride 2, LeakyReLU 0.2), then 2 linears.

    ``forward``: ``(B, 3, in_size, in_size)`` -> ``(B, 1)`` scores. ``in_size`` must be a
    multiple of 32 (the official one is 160 = 4 x the 40 px training crop).
    """

    def __init__(self, in_size: int = 160) -> None:
        super().__init__()
        if in_size < 32 or in_size % 32:
            raise ValueError(f"in_size must be a positive multiple of 32, got {in_size}")
        self.in_size = in_size
        layers: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, 128, 256, 512):
            for stride in (1, 2):
                layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2)]
                cin = cout
        self.features = nn.Sequential(*layers)
        side = in_size // 32
        self.classifier = nn.Sequential(
            nn.Linear(side * side * 512, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.in_size, self.in_size):
            raise ValueError(
                f"discriminator expects (B, 3, {self.in_size}, {self.in_size}), "
                f"got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x).flatten(1))


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP term ``mean((||grad D(x_hat)||_2 - 1)^2)`` on random interpolates of real/fake."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (fake.detach() * (1.0 - eps) + real.detach() * eps).requires_grad_(True)
    grad = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)[0]
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def wgan_gp_discriminator_loss(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, gp_weight: float = 10.0
) -> torch.Tensor:
    """Critic loss ``E[D(fake)] - E[D(real)] + gp_weight * GP`` (``fake`` is detached)."""
    fake = fake.detach()
    loss = discriminator(fake).mean() - discriminator(real).mean()
    return loss + gp_weight * gradient_penalty(discriminator, real, fake)


def wgan_generator_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss ``-E[D(fake)]``."""
    return -discriminator(fake).mean()
