"""LIIF: Local Implicit Image Function (Chen, Liu, Wang, CVPR 2021).

``encode(img)`` turns a normalised image into a latent grid; ``query(feat, coord, cell)`` decodes
RGB at continuous coordinates. Stateless: nothing is cached on the module; device and dtype come
from the inputs. Two query implementations sit side by side: :func:`query_reference` follows the
paper's equations literally, :mod:`liif.fast` is the optimised path (tests assert they agree).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from liif.coords import make_coord
from liif.encoders import ENCODERS
from liif.mlp import MLP

_DEFAULT_IMNET: dict[str, Any] = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}
IMPLS = ("fast", "reference")


class LIIF(nn.Module):
    """Encoder + implicit decoder; the ablation switches give the paper's -u, -e, -c variants."""

    def __init__(
        self,
        encoder_spec: dict[str, Any],
        imnet_spec: dict[str, Any] | None = None,
        local_ensemble: bool = True,
        feat_unfold: bool = True,
        cell_decode: bool = True,
    ) -> None:
        super().__init__()
        self.encoder_spec = {"name": encoder_spec["name"], "args": dict(encoder_spec.get("args", {}))}
        self.imnet_spec: dict[str, Any] = imnet_spec if imnet_spec is not None else _DEFAULT_IMNET
        self.local_ensemble, self.feat_unfold, self.cell_decode = (
            bool(local_ensemble), bool(feat_unfold), bool(cell_decode))
        self.encoder = ENCODERS.build(self.encoder_spec["name"], self.encoder_spec["args"])
        if self.imnet_spec["name"] != "mlp":
            raise ValueError(f"imnet {self.imnet_spec['name']!r} is not supported; only 'mlp'")
        feat_dim = self.encoder.out_dim * (9 if self.feat_unfold else 1)
        in_dim = feat_dim + 2 + (2 if self.cell_decode else 0)
        self.feat_dim = feat_dim
        self.imnet = MLP(in_dim, **self.imnet_spec["args"])

    # -- description -------------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        """``{name, args}`` that rebuilds this architecture (official LIIF layout)."""
        args: dict[str, Any] = {"encoder_spec": self.encoder_spec, "imnet_spec": self.imnet_spec}
        for k in ("local_ensemble", "feat_unfold", "cell_decode"):
            if not getattr(self, k):
                args[k] = False
        return {"name": "liif", "args": args}

    @property
    def halo(self) -> int:
        """LR pixels of context a latent neighbourhood needs: encoder radius + unfold + ensemble."""
        return self.encoder.receptive_radius + int(self.feat_unfold) + int(self.local_ensemble)

    # -- the two stages ----------------------------------------------------------------------
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` image normalised as ``(x - 0.5) / 0.5`` -> ``(B, C, h, w)`` features."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"encode expects (B, 3, h, w), got {tuple(img.shape)}")
        return self.encoder(img)

    def query(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None,
              *, impl: str = "fast", precision: str = "fp32") -> torch.Tensor:
        """Decode ``(B, Q, 3)`` at ``coord`` ``(B, Q, 2)`` ((y, x) in [-1, 1]); ``cell`` ``(B, Q, 2)``."""
        if impl == "reference":
            return query_reference(self, feat, coord, cell)
        if impl == "fast":
            from liif.fast import query_points

            return query_points(self, feat, coord, cell, precision=precision)
        raise ValueError(f"impl {impl!r} is not one of {IMPLS}")

    def forward(self, img: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None,
                **kw: Any) -> torch.Tensor:
        return self.query(self.encode(img), coord, cell, **kw)


def query_reference(model: LIIF, feat: torch.Tensor, coord: torch.Tensor,
                    cell: torch.Tensor | None) -> torch.Tensor:
    """The paper's query, literally: unfold, nearest latent per shifted query, area ensemble.

    feat ``(B, C, h, w)``, coord ``(B, Q, 2)``, cell ``(B, Q, 2)`` -> ``(B, Q, out_dim)``.
    """
    if model.cell_decode and cell is None:
        raise ValueError("this model decodes cells (cell_decode=True): pass cell (B, Q, 2)")
    B, C, h, w = feat.shape
    if model.feat_unfold:
        feat = F.unfold(feat, 3, padding=1).view(B, C * 9, h, w)
    if model.local_ensemble:
        shifts, eps_shift = [-1, 1], 1e-6
    else:
        shifts, eps_shift = [0], 0.0
    rx, ry = 1 / h, 1 / w  # half a latent cell in [-1, 1] units, along y and x
    feat_coord = (make_coord((h, w), flatten=False, dtype=feat.dtype, device=feat.device)
                  .permute(2, 0, 1).unsqueeze(0).expand(B, 2, h, w))
    preds, areas = [], []
    for vy in shifts:
        for vx in shifts:
            c = coord.clone()
            c[:, :, 0] += vy * rx + eps_shift
            c[:, :, 1] += vx * ry + eps_shift
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)  # grid_sample wants (x, y)
            q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0, :]
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :]
            q_feat, q_coord = q_feat.permute(0, 2, 1), q_coord.permute(0, 2, 1)
            rel = coord - q_coord
            rel = rel * torch.tensor([h, w], dtype=rel.dtype, device=rel.device)
            inp = torch.cat([q_feat, rel], dim=-1)
            if model.cell_decode:
                assert cell is not None  # checked above
                rel_cell = cell * torch.tensor([h, w], dtype=cell.dtype, device=cell.device)
                inp = torch.cat([inp, rel_cell], dim=-1)
            preds.append(model.imnet(inp))
            areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
    if model.local_ensemble:
        areas = areas[::-1]  # each branch is weighted by the diagonally opposite area
    total = torch.stack(areas).sum(dim=0)
    return sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas, strict=True))
