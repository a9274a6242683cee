"""The fast LIIF query path.

What makes it fast, relative to :func:`liif.liif.query_reference`:

* The first MLP layer is hoisted out of the per-query work. With feature unfolding its feature part
  is ``W1[:, :9C] @ unfold(feat)``, i.e. a 3x3 convolution of the latent grid; it is computed once
  per image (``first_layer``) and each query gathers one hidden vector per ensemble branch, then
  adds the rank-2 terms of the relative coordinate and the cell.
* The four ensemble branches go through the remaining MLP layers as one batched call.
* Latent indices are chosen in float64 in the *global* latent-index frame (:mod:`liif.coords`), and
  relative coordinates are the paper's float32 expression ``(coord - q_coord) * h`` evaluated from
  *global* indices (:func:`liif.coords.paper_coord`), so a tile decoded from a window of the latent
  grid gives the same numbers as the whole image (that is what makes tiled inference exact) and
  the same numbers as the official code, including where its float32 rounding decides the
  ensemble weights (an output pixel exactly on the last latent centre: there the exact relative
  coordinate is 0 on both branches of an axis and only the rounding residue weighs the other axis).
* Optional bf16/fp16 for the MLP (``precision=``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from liif.coords import axis_positions, paper_coord

if TYPE_CHECKING:
    from liif.liif import LIIF

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BRANCHES_ENSEMBLE = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _dtype_for(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def first_layer(model: LIIF, feat: torch.Tensor) -> torch.Tensor:
    """The feature part of the first MLP layer for every latent: ``(B, C, h, w)`` -> ``(B, h, w, D)``.

    Includes the first layer's bias. Zero padding at the border equals the paper's zero-padded
    unfold; at a tile's inner edge the halo keeps the padding out of the decoded region.
    """
    lin = model.imnet.linears[0]
    C = feat.shape[1]
    wf = lin.weight[:, : model.feat_dim].to(feat.dtype)
    if model.feat_unfold:
        z = F.conv2d(feat, wf.reshape(-1, C, 3, 3), lin.bias.to(feat.dtype), padding=1)
    else:
        z = F.conv2d(feat, wf.reshape(-1, C, 1, 1), lin.bias.to(feat.dtype))
    return z.permute(0, 2, 3, 1).contiguous()


def axis_branch(u: torch.Tensor, shift: int, n: int, ensemble: bool) -> torch.Tensor:
    """Nearest latent index along one axis for positions ``u`` (global latent frame, float64).

    Mirrors the paper: shift the query by ``shift`` half-cells plus 1e-6 (in [-1, 1] units), clamp
    to ``[-1 + 1e-6, 1 - 1e-6]``, take the nearest latent (round half to even, as grid_sample).
    ``u`` ``(N,)`` float64 -> ``(N,)`` int64 in ``[0, n)``.
    """
    eps = 1e-6 * n / 2  # 1e-6 in [-1, 1] units, expressed in latent units
    us = u + (shift * 0.5 + eps if ensemble else 0.0)
    us = us.clamp(eps - 0.5, n - 0.5 - eps)
    return torch.round(us).clamp_(0, n - 1).to(torch.long)


def rel_coord(coord: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's relative coordinate along one axis: ``(coord - q_coord) * n`` in coord's dtype.

    ``coord`` (any shape, [-1, 1] units) and the latent indices ``idx`` (same shape) of an axis of
    ``n`` latents; ``q_coord`` is the latent centre as the official ``make_coord`` rounds it.
    """
    return (coord - paper_coord(idx, n, coord.dtype)) * n


def _fused_linear_relu_available() -> bool:
    """oneDNN's fused linear + bias + ReLU (``torch.ops.mkldnn._linear_pointwise``) exists here."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


#: Use the fused oneDNN kernel for hidden layers on CPU (inference only; fp32/bf16). Per layer it
#: does in one pass what ``F.linear`` + ``relu`` do in three (GEMM, bias broadcast copy, ReLU), and
#: its JIT GEMM is much faster than the BLAS sgemm on some CPUs (2-5x on the AMD EPYC measured,
#: ``bench/query_speed.py``). Results differ from ``F.linear`` only by summation order (~1e-6).
FUSED_LINEAR_RELU = _fused_linear_relu_available()


def _linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``relu(x @ weight.T + bias)`` for ``x (..., in)``; fused on CPU when nothing needs grad."""
    if (FUSED_LINEAR_RELU and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.bfloat16)):
        flat = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "relu", [], "")
        return y.reshape(*x.shape[:-1], y.shape[-1])
    return torch.relu(F.linear(x, weight, bias))


def _tail(model: LIIF, hidden: torch.Tensor, dtype: torch.dtype, *, activated: bool = False) -> torch.Tensor:
    """ReLU (unless ``activated``) then the MLP's remaining layers; ``(..., D)`` -> ``(..., out)``
    in float32."""
    lins = model.imnet.linears
    x = hidden.to(dtype) if activated else torch.relu(hidden.to(dtype))
    for lin in lins[1:-1]:
        x = _linear_relu(x, lin.weight.to(dtype), lin.bias.to(dtype))
    last = lins[-1]
    return F.linear(x, last.weight.to(dtype), last.bias.to(dtype)).float()


def _coord_weights(model: LIIF, dtype: torch.dtype,
                   device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = model.imnet.linears[0].weight
    f = model.feat_dim
    w_rel = w[:, f:f + 2].to(device=device, dtype=dtype)
    w_cell = w[:, f + 2:f + 4].to(device=device, dtype=dtype) if model.cell_decode else None
    return w_rel, w_cell


def _rank2(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``v @ w.T`` for ``v (..., 2)`` as two broadcast products: stays fp32 under autocast."""
    return v[..., :1] * w[:, 0] + v[..., 1:] * w[:, 1]


def query_points(model: LIIF, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None, *,
                 precision: str = "fp32") -> torch.Tensor:
    """Fast equivalent of ``query_reference`` for arbitrary points.

    feat ``(B, C, h, w)``, coord ``(B, Q, 2)`` in [-1, 1], cell ``(B, Q, 2)`` -> ``(B, Q, out)``.
    Differentiable (used by training).
    """
    if model.cell_decode and cell is None:
        raise ValueError("this model decodes cells (cell_decode=True): pass cell (B, Q, 2)")
    dtype = _dtype_for(precision)
    B, _, h, w = feat.shape
    z = first_layer(model, feat).reshape(B, h * w, -1)
    c64 = coord.to(torch.float64)
    uy = (c64[..., 0] + 1) * h / 2 - 0.5
    ux = (c64[..., 1] + 1) * w / 2 - 0.5
    w_rel, w_cell = _coord_weights(model, feat.dtype, feat.device)
    const: float | torch.Tensor = 0.0
    if model.cell_decode:
        assert cell is not None and w_cell is not None  # checked above; cell_decode has w_cell
        rel_cell = cell * torch.tensor([h, w], dtype=cell.dtype, device=cell.device)
        const = _rank2(rel_cell.to(feat.dtype), w_cell)  # (B, Q, D)
    shifts = _BRANCHES_ENSEMBLE if model.local_ensemble else ((0, 0),)
    hiddens, areas = [], []
    for sy, sx in shifts:
        iy = axis_branch(uy, sy, h, model.local_ensemble)
        ix = axis_branch(ux, sx, w, model.local_ensemble)
        # relative coordinate in the caller's frame and dtype, exactly as the paper computes it
        ry = rel_coord(coord[..., 0], iy, h)
        rx = rel_coord(coord[..., 1], ix, w)
        flat = (iy * w + ix).unsqueeze(-1).expand(-1, -1, z.shape[-1])
        rel = torch.stack([ry, rx], dim=-1).to(feat.dtype)
        hiddens.append(torch.gather(z, 1, flat) + _rank2(rel, w_rel) + const)
        areas.append((ry * rx).abs().to(feat.dtype) + 1e-9)
    preds = _tail(model, torch.stack(hiddens), dtype)  # one batched MLP call for all branches
    return _combine(preds, areas, model.local_ensemble)


def _combine(preds: torch.Tensor, areas: list[torch.Tensor], ensemble: bool) -> torch.Tensor:
    """Area-weighted sum of branch predictions ``(K, ..., out)``; diagonal swap of the areas."""
    if not ensemble:
        return preds[0]
    total = torch.stack(torch.broadcast_tensors(*areas)).sum(dim=0)  # the paper's order
    areas = areas[::-1]
    out = preds[0] * (areas[0] / total).unsqueeze(-1)
    for k in range(1, 4):
        out = out + preds[k] * (areas[k] / total).unsqueeze(-1)
    return out


def render(model: LIIF, z: torch.Tensor, *, in_shape: tuple[int, int], out_shape: tuple[int, int],
           rows: tuple[int, int], cols: tuple[int, int], offset: tuple[int, int] = (0, 0),
           precision: str = "fp32") -> torch.Tensor:
    """Decode a rectangle of the output grid from a (window of the) first-layer map.

    z ``(B, hz, wz, D)`` from :func:`first_layer` on the features of input rows
    ``[offset[0], offset[0] + hz)`` and columns ``[offset[1], offset[1] + wz)`` of an image of
    ``in_shape`` ``(h, w)``; decodes output pixels ``rows x cols`` (half-open, global indices) of an
    output of ``out_shape`` ``(H, W)``. Returns ``(B, out, len(rows), len(cols))`` (model range).
    Raises ``IndexError`` if a needed latent lies outside the window (halo too small).
    """
    dtype = _dtype_for(precision)
    B, hz, wz, D = z.shape
    (h, w), (H, W) = in_shape, out_shape
    uy = axis_positions(h, H, rows[0], rows[1], device=z.device)
    ux = axis_positions(w, W, cols[0], cols[1], device=z.device)
    # the output pixels' paper coordinates, from global indices (float32, as make_coord rounds)
    cy = paper_coord(torch.arange(rows[0], rows[1], device=z.device), H)
    cx = paper_coord(torch.arange(cols[0], cols[1], device=z.device), W)
    w_rel, w_cell = _coord_weights(model, torch.float32, z.device)
    const = torch.zeros(D, dtype=torch.float32, device=z.device)
    if model.cell_decode:  # the paper's cell (2 / H, 2 / W) in float32, times (h, w) in float32
        rel_cell = torch.tensor([2 / H, 2 / W], dtype=torch.float32, device=z.device)
        rel_cell = rel_cell * torch.tensor([h, w], dtype=torch.float32, device=z.device)
        assert w_cell is not None  # _coord_weights gives it when cell_decode
        const = _rank2(rel_cell, w_cell)
    shifts = _BRANCHES_ENSEMBLE if model.local_ensemble else ((0, 0),)
    # all branches' first-layer pre-activations in one buffer: one batched MLP call, no stack copy
    hidden = torch.empty(len(shifts), B, len(cy), len(cx), D, dtype=dtype, device=z.device)
    areas = []
    for k, (sy, sx) in enumerate(shifts):
        iy = axis_branch(uy, sy, h, model.local_ensemble)
        ix = axis_branch(ux, sx, w, model.local_ensemble)
        ry, rx = rel_coord(cy, iy, h), rel_coord(cx, ix, w)  # float32, the paper's rounding
        iy, ix = iy - offset[0], ix - offset[1]
        if len(iy) and (iy.min() < 0 or iy.max() >= hz or ix.min() < 0 or ix.max() >= wz):
            raise IndexError(
                f"latent rows {int(iy.min()) + offset[0]}..{int(iy.max()) + offset[0]} / cols "
                f"{int(ix.min()) + offset[1]}..{int(ix.max()) + offset[1]} fall outside the window "
                f"rows {offset[0]}..{offset[0] + hz - 1}, cols {offset[1]}..{offset[1] + wz - 1}")
        g = z.index_select(1, iy).index_select(2, ix).to(dtype)  # (B, nr, nc, D)
        row_term = (ry[:, None] * w_rel[:, 0] + const).to(dtype)  # (nr, D)
        col_term = (rx[:, None] * w_rel[:, 1]).to(dtype)  # (nc, D)
        torch.add(g, row_term[None, :, None, :], out=hidden[k])
        hidden[k].add_(col_term[None, None, :, :])
        areas.append((ry[:, None] * rx[None, :]).abs() + 1e-9)
    preds = _tail(model, hidden.relu_(), dtype, activated=True)  # (K, B, nr, nc, out)
    out = _combine(preds, [a[None, :, :] for a in areas], model.local_ensemble)
    return out.permute(0, 3, 1, 2)
