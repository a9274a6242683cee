"""EDSR-baseline encoder (Lim et al. 2017) without upsampler, key-compatible with official LIIF."""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)


class _MeanShift(nn.Conv2d):
    """Frozen 1x1 conv kept only so official state_dicts load key for key (never applied)."""

    def __init__(self, sign: int, rgb_range: float = 1.0) -> None:
        super().__init__(3, 3, kernel_size=1)
        mean = torch.tensor([0.4488, 0.4371, 0.4040])
        assert self.bias is not None  # Conv2d(bias=True)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * mean
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(True), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class EDSR(nn.Module):
    """EDSR body: head conv, ``n_resblocks`` residual blocks, body conv, long skip.

    ``forward``: ``(B, 3, h, w)`` normalised image -> ``(B, n_feats, h, w)`` latent codes.
    """

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        no_upsampling: bool = True,
        rgb_range: float = 1.0,
        scale: int = 2,
    ) -> None:
        super().__init__()
        if not no_upsampling:
            raise ValueError("only the encoder form (no_upsampling=True) is supported for LIIF")
        self.sub_mean = _MeanShift(-1, rgb_range)
        self.add_mean = _MeanShift(1, rgb_range)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )
        self.out_dim = n_feats
        # every 3x3 conv widens the receptive field by one pixel
        self.receptive_radius = 1 + 2 * n_resblocks + 1
        self.args = {"n_resblocks": n_resblocks, "n_feats": n_feats, "res_scale": res_scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


def make_edsr_baseline(
    n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0, no_upsampling: bool = True,
    scale: int = 2, rgb_range: float = 1.0,
) -> EDSR:
    """The official constructor's arguments; ``scale`` is unused without an upsampler."""
    return EDSR(n_resblocks, n_feats, res_scale, no_upsampling=no_upsampling, rgb_range=rgb_range)


def make_edsr(
    n_resblocks: int = 32, n_feats: int = 256, res_scale: float = 0.1, no_upsampling: bool = True,
    scale: int = 2, rgb_range: float = 1.0,
) -> EDSR:
    return EDSR(n_resblocks, n_feats, res_scale, no_upsampling=no_upsampling, rgb_range=rgb_range)
