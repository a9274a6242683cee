"""The shared decoder MLP: Linear-ReLU x N, then Linear (official key layout ``layers.{0,2,...}``)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``(..., in_dim)`` -> ``(..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU()]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim, self.hidden_list = in_dim, out_dim, list(hidden_list)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
