"""RDN encoder (Zhang et al. 2018) without upsampler, key-compatible with official LIIF."""

from __future__ import annotations

import torch
from torch import nn

_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}


class _RDBConv(nn.Module):
    def __init__(self, cin: int, growth: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, growth, k, padding=(k - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class _RDB(nn.Module):
    def __init__(self, g0: int, g: int, n_convs: int, k: int = 3) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[_RDBConv(g0 + c * g, g, k) for c in range(n_convs)])
        self.LFF = nn.Conv2d(g0 + n_convs * g, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    """Residual dense network body. ``(B, 3, h, w)`` -> ``(B, G0, h, w)``."""

    def __init__(
        self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B", no_upsampling: bool = True,
        D: int | None = None, C: int | None = None, G: int | None = None, scale: int = 2,
    ) -> None:
        super().__init__()
        if not no_upsampling:
            raise ValueError("only the encoder form (no_upsampling=True) is supported for LIIF")
        if RDNconfig not in _CONFIGS:
            raise ValueError(f"RDNconfig {RDNconfig!r} is not one of {sorted(_CONFIGS)}")
        d, c, g = _CONFIGS[RDNconfig]
        # optional overrides (smaller models of the same architecture, e.g. for tests)
        d, c, g = (d if D is None else D), (c if C is None else C), (g if G is None else G)
        if min(d, c, g, G0) < 1:
            raise ValueError(f"RDN sizes must be >= 1, got D={d}, C={c}, G={g}, G0={G0}")
        k = RDNkSize
        self.D = d
        self.SFENet1 = nn.Conv2d(3, G0, k, padding=(k - 1) // 2)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=(k - 1) // 2)
        self.RDBs = nn.ModuleList([_RDB(G0, g, c, k) for _ in range(d)])
        self.GFF = nn.Sequential(nn.Conv2d(d * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=(k - 1) // 2))
        self.out_dim = G0
        r = (k - 1) // 2
        self.receptive_radius = r * (2 + d * c + 1)  # SFENet1+2, every RDB conv, GFF's 3x3
        self.args = {"G0": G0, "RDNkSize": k, "RDNconfig": RDNconfig, "D": D, "C": C, "G": G}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for rdb in self.RDBs:
            x = rdb(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, 1)) + f1


def make_rdn(G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B", no_upsampling: bool = True,
             D: int | None = None, C: int | None = None, G: int | None = None, scale: int = 2) -> RDN:
    return RDN(G0, RDNkSize, RDNconfig, no_upsampling=no_upsampling, D=D, C=C, G=G)
