"""Reference-based x4 upscaling of one image with a TTSR model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liif.ttsr.model import TTSR


def _check_image(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"{name} must be (3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} values must lie in [0, 1], got [{lo}, {hi}]")
    return x


def _bicubic(x: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return y.clamp(0.0, 1.0)


def ttsr_inputs_from_unit(
    lr: torch.Tensor, ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input math shared by :func:`prepare_ttsr_inputs` and :func:`liif.ttsr.data.ref_batch`.

    ``lr`` ``(3, h, w)`` and ``ref`` ``(3, Hr, Wr)`` in [0, 1] (not validated) ->
    ``(lr, lr_up, ref, ref_down_up)`` in [-1, 1] with a batch axis: ``(1, 3, h, w)``,
    ``(1, 3, 4h, 4w)`` and twice ``(1, 3, Hr', Wr')``, where the ref is cropped (top-left) to
    ``Hr' = Hr // 4 * 4``, ``Wr' = Wr // 4 * 4``; lr_up = bicubic x4, ref_down_up =
    antialiased bicubic /4 then bicubic x4, each resampling clamped to [0, 1].
    """
    h, w = lr.shape[-2:]
    hr, wr = (ref.shape[1] // 4) * 4, (ref.shape[2] // 4) * 4
    if hr == 0 or wr == 0:
        raise ValueError(f"ref must be at least 4x4 pixels, got {tuple(ref.shape[1:])}")
    lr_b = lr[None]
    ref_b = ref[None, :, :hr, :wr]
    lr_up = _bicubic(lr_b, (4 * h, 4 * w))
    ref_down_up = _bicubic(_bicubic(ref_b, (hr // 4, wr // 4), antialias=True), (hr, wr))
    return tuple(t * 2.0 - 1.0 for t in (lr_b, lr_up, ref_b, ref_down_up))  # type: ignore[return-value]


def prepare_ttsr_inputs(
    lr: torch.Tensor, ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four network inputs in [-1, 1] from ``lr`` ``(3, h, w)`` and ``ref`` ``(3, Hr, Wr)``
    in [0, 1]: ``(lr, lr_up, ref, ref_down_up)`` with a batch axis; ref cropped to multiples
    of 4, lr_up = bicubic x4, ref_down_up = antialiased bicubic /4 then bicubic x4."""
    lr = _check_image("lr", lr)
    ref = _check_image("ref", ref)
    if lr.device != ref.device:
        raise ValueError(f"lr is on {lr.device}, ref on {ref.device}")
    return ttsr_inputs_from_unit(lr, ref)


def reference_upscale(model: TTSR, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Super-resolve ``lr`` ``(3, h, w)`` x4 using the texture of ``ref`` ``(3, Hr, Wr)``.

    Both in [0, 1] (float). Runs under ``torch.inference_mode`` in eval mode (the model's mode
    is restored afterwards). Computes in the model's dtype; returns ``(3, 4h, 4w)`` in [0, 1]
    with the dtype of ``lr``.
    """
    if not isinstance(model, TTSR):
        raise TypeError(f"model must be a liif.ttsr.TTSR, got {type(model).__name__}")
    param = next(model.parameters())
    inputs = prepare_ttsr_inputs(lr, ref)
    if inputs[0].device != param.device:
        raise ValueError(f"inputs are on {inputs[0].device}, the model on {param.device}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            sr = model(*(t.to(param.dtype) for t in inputs))
    finally:
        model.train(was_training)
    return ((sr[0] + 1.0) / 2.0).clamp(0.0, 1.0).to(lr.dtype)
