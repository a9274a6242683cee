"""TTSR main network: stacked texture transformers with cross-scale feature integration (CSFI).

Module names follow the official checkpoints (``MainNet.SFE.*``, ``MainNet.RB11.*``,
``MainNet.ex12.*``, ``MainNet.ex123.*``, ``MainNet.merge_tail.*`` ...), so an official state_dict
loads key for key. Three branches run at x1, x2 and x4 of the LR size; each fuses the textures
transferred at its scale, weighted by the soft attention S (bicubic-upsampled to the branch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, times ``res_scale``, plus the input. ``(B, C, H, W)``."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = _conv3(n_feats, n_feats)
        self.conv2 = _conv3(n_feats, n_feats)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) * self.res_scale + x


def _res_blocks(n: int, n_feats: int, res_scale: float) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(n))


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class SFE(nn.Module):
    """Shallow feature extraction: ``(B, 3, h, w)`` LR -> ``(B, n_feats, h, w)``."""

    def __init__(self, num_res_blocks: int, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.conv_head = _conv3(3, n_feats)
        self.RBs = _res_blocks(num_res_blocks, n_feats, res_scale)
        self.conv_tail = _conv3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = F.relu(self.conv_head(x))
        return self.conv_tail(_run(self.RBs, head)) + head


class CSFI2(nn.Module):
    """Exchange between the x1 and x2 branches: ``(B, C, h, w), (B, C, 2h, 2w)`` -> same shapes."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = _conv1(n_feats, n_feats)
        self.conv21 = _conv3(n_feats, n_feats, stride=2)
        self.conv_merge1 = _conv3(2 * n_feats, n_feats)
        self.conv_merge2 = _conv3(2 * n_feats, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x21 = F.relu(self.conv21(x2))
        y1 = F.relu(self.conv_merge1(torch.cat((x1, x21), dim=1)))
        y2 = F.relu(self.conv_merge2(torch.cat((x2, x12), dim=1)))
        return y1, y2


class CSFI3(nn.Module):
    """Exchange between the x1, x2 and x4 branches (each resampled to the other two scales)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = _conv1(n_feats, n_feats)
        self.conv13 = _conv1(n_feats, n_feats)
        self.conv21 = _conv3(n_feats, n_feats, stride=2)
        self.conv23 = _conv1(n_feats, n_feats)
        self.conv31_1 = _conv3(n_feats, n_feats, stride=2)
        self.conv31_2 = _conv3(n_feats, n_feats, stride=2)
        self.conv32 = _conv3(n_feats, n_feats, stride=2)
        self.conv_merge1 = _conv3(3 * n_feats, n_feats)
        self.conv_merge2 = _conv3(3 * n_feats, n_feats)
        self.conv_merge3 = _conv3(3 * n_feats, n_feats)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x21 = F.relu(self.conv21(x2))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x31 = F.relu(self.conv31_2(F.relu(self.conv31_1(x3))))
        x32 = F.relu(self.conv32(x3))
        y1 = F.relu(self.conv_merge1(torch.cat((x1, x21, x31), dim=1)))
        y2 = F.relu(self.conv_merge2(torch.cat((x2, x12, x32), dim=1)))
        y3 = F.relu(self.conv_merge3(torch.cat((x3, x13, x23), dim=1)))
        return y1, y2, y3


class MergeTail(nn.Module):
    """Merge the three branches at x4 and map to RGB: -> ``(B, 3, 4h, 4w)`` (not clamped)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv13 = _conv1(n_feats, n_feats)
        self.conv23 = _conv1(n_feats, n_feats)
        self.conv_merge = _conv3(3 * n_feats, n_feats)
        self.conv_tail1 = _conv3(n_feats, n_feats // 2)
        self.conv_tail2 = _conv1(n_feats // 2, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x = F.relu(self.conv_merge(torch.cat((x3, x13, x23), dim=1)))
        return self.conv_tail2(self.conv_tail1(x))


class MainNet(nn.Module):
    """The TTSR generator.

    ``forward(lr, score, textures)``: lr ``(B, 3, h, w)`` in [-1, 1]; score (soft attention)
    ``(B, 1, h, w)``; textures ``(T_lv1, T_lv2, T_lv3)`` of shapes ``(B, 64, 4h, 4w)``,
    ``(B, 128, 2h, 2w)``, ``(B, 256, h, w)``. Returns ``(B, 3, 4h, 4w)``, clamped to [-1, 1]
    in eval mode only (training sees the raw output).
    """

    def __init__(
        self, num_res_blocks: Sequence[int] = (16, 16, 8, 4), n_feats: int = 64,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(num_res_blocks) != 4 or any(int(n) < 0 for n in num_res_blocks):
            raise ValueError(f"num_res_blocks must be 4 non-negative ints, got {num_res_blocks!r}")
        if n_feats < 2:
            raise ValueError(f"n_feats must be >= 2, got {n_feats}")
        n0, n1, n2, n3 = (int(n) for n in num_res_blocks)
        self.SFE = SFE(n0, n_feats, res_scale)
        # x1 branch: fuses level-3 textures (256 channels)
        self.conv11_head = _conv3(256 + n_feats, n_feats)
        self.RB11 = _res_blocks(n1, n_feats, res_scale)
        self.conv11_tail = _conv3(n_feats, n_feats)
        # x1 -> x2 by sub-pixel convolution; x2 branch fuses level-2 textures (128 channels)
        self.conv12 = _conv3(n_feats, 4 * n_feats)
        self.ps12 = nn.PixelShuffle(2)
        self.conv22_head = _conv3(128 + n_feats, n_feats)
        self.ex12 = CSFI2(n_feats)
        self.RB21 = _res_blocks(n2, n_feats, res_scale)
        self.RB22 = _res_blocks(n2, n_feats, res_scale)
        self.conv21_tail = _conv3(n_feats, n_feats)
        self.conv22_tail = _conv3(n_feats, n_feats)
        # x2 -> x4; x4 branch fuses level-1 textures (64 channels)
        self.conv23 = _conv3(n_feats, 4 * n_feats)
        self.ps23 = nn.PixelShuffle(2)
        self.conv33_head = _conv3(64 + n_feats, n_feats)
        self.ex123 = CSFI3(n_feats)
        self.RB31 = _res_blocks(n3, n_feats, res_scale)
        self.RB32 = _res_blocks(n3, n_feats, res_scale)
        self.RB33 = _res_blocks(n3, n_feats, res_scale)
        self.conv31_tail = _conv3(n_feats, n_feats)
        self.conv32_tail = _conv3(n_feats, n_feats)
        self.conv33_tail = _conv3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats)

    @staticmethod
    def _fuse(
        x: torch.Tensor, texture: torch.Tensor, head: nn.Conv2d, score: torch.Tensor
    ) -> torch.Tensor:
        # x + S * conv([x, T]): texture enters in proportion to its relevance
        return x + head(torch.cat((x, texture), dim=1)) * score

    def forward(
        self,
        lr: torch.Tensor,
        score: torch.Tensor,
        textures: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        t_lv1, t_lv2, t_lv3 = textures
        x11 = self.SFE(lr)
        x11 = self._fuse(x11, t_lv3, self.conv11_head, score)
        x11 = x11 + self.conv11_tail(_run(self.RB11, x11))

        x21 = x11
        x22 = F.relu(self.ps12(self.conv12(x11)))
        x22 = self._fuse(x22, t_lv2, self.conv22_head, _up(score, 2))
        r21, r22 = self.ex12(x21, x22)
        x21 = x21 + self.conv21_tail(_run(self.RB21, r21))
        x22 = x22 + self.conv22_tail(_run(self.RB22, r22))

        x31, x32 = x21, x22
        x33 = F.relu(self.ps23(self.conv23(x22)))
        x33 = self._fuse(x33, t_lv1, self.conv33_head, _up(score, 4))
        r31, r32, r33 = self.ex123(x31, x32, x33)
        x31 = x31 + self.conv31_tail(_run(self.RB31, r31))
        x32 = x32 + self.conv32_tail(_run(self.RB32, r32))
        x33 = x33 + self.conv33_tail(_run(self.RB33, r33))

        out = self.merge_tail(x31, x32, x33)
        return out if self.training else out.clamp(-1.0, 1.0)
