"""TTSR (Yang et al., CVPR 2020): texture transformer for reference-based x4 super-resolution.

``TTSR.state_dict()`` has exactly the keys of the official ``TTSR-rec.pt`` / ``TTSR.pt``
(``MainNet.*`` and ``LTE.*``). The official frozen ``LTE_copy`` used by the transferal
perceptual loss is not a module here: :meth:`TTSR.texture_features` runs the LTE with detached
weights instead, which is the same computation without a second copy of the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from liif.ttsr.lte import LearnableTextureExtractor
from liif.ttsr.mainnet import MainNet
from liif.ttsr.search import search_chunked, search_full, transfer

Textures = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TTSROutput(NamedTuple):
    """``sr`` ``(B, 3, 4h, 4w)``; soft attention ``score`` ``(B, 1, h, w)``; hard attention
    ``index`` ``(B, h*w)``; ``textures`` ``(T_lv1, T_lv2, T_lv3)``."""

    sr: torch.Tensor
    score: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # the field shadows tuple.index (API name)
    textures: Textures


def parse_num_res_blocks(value: str | Sequence[int]) -> tuple[int, int, int, int]:
    """``"16+16+8+4"`` or ``[16, 16, 8, 4]`` -> ``(16, 16, 8, 4)``."""
    try:
        parts = value.split("+") if isinstance(value, str) else list(value)
        blocks = tuple(int(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"num_res_blocks must look like '16+16+8+4', got {value!r}") from exc
    if len(blocks) != 4 or min(blocks) < 0:
        raise ValueError(f"num_res_blocks needs 4 non-negative counts, got {value!r}")
    return blocks


class TTSR(nn.Module):
    """Texture transformer network. Inputs and output in [-1, 1].

    ``search_chunk``: reference positions scored at a time in the hard/soft attention search
    (``None`` materialises the whole relevance matrix). ``exact_search``: float64 relevance
    accumulation, so the result does not depend on ``search_chunk`` (see ``liif.ttsr.search``).
    ``vgg_weights``: optional local VGG19 file initialising the LTE (not part of :attr:`spec`).
    """

    def __init__(
        self,
        num_res_blocks: str | Sequence[int] = "16+16+8+4",
        n_feats: int = 64,
        res_scale: float = 1.0,
        search_chunk: int | None = 4096,
        exact_search: bool = True,
        vgg_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if search_chunk is not None and (
            isinstance(search_chunk, bool) or not isinstance(search_chunk, int) or search_chunk < 1
        ):
            raise ValueError(f"search_chunk must be a positive int or None, got {search_chunk!r}")
        self.num_res_blocks = parse_num_res_blocks(num_res_blocks)
        self.n_feats = int(n_feats)
        self.res_scale = float(res_scale)
        self.search_chunk = search_chunk
        self.exact_search = bool(exact_search)
        self.MainNet = MainNet(self.num_res_blocks, self.n_feats, self.res_scale)
        self.LTE = LearnableTextureExtractor(vgg_weights=vgg_weights)

    @property
    def halo(self) -> int:
        """Receptive radius in LR pixels with the reference fixed (:mod:`liif.ttsr.receptive`):
        tiles that read this halo equal the whole image."""
        from liif.ttsr.receptive import ttsr_receptive_radius

        return ttsr_receptive_radius(self.num_res_blocks)

    @property
    def spec(self) -> dict[str, Any]:
        """``{"name": "ttsr", "args": {...}}``: rebuilds this architecture via ``build_ttsr``."""
        return {
            "name": "ttsr",
            "args": {
                "num_res_blocks": list(self.num_res_blocks),
                "n_feats": self.n_feats,
                "res_scale": self.res_scale,
                "search_chunk": self.search_chunk,
                "exact_search": self.exact_search,
            },
        }

    def _lte(self, x: torch.Tensor) -> Textures:
        return self.LTE((x + 1.0) / 2.0)

    def texture_features(self, sr: torch.Tensor) -> Textures:
        """LTE levels of an SR image ``(B, 3, H, W)`` in [-1, 1] with the LTE weights frozen.

        Gradients reach ``sr`` but not the LTE (the official ``LTE_copy`` behaviour).
        """
        frozen = {k: v.detach() for k, v in self.LTE.named_parameters()}
        frozen.update(dict(self.LTE.named_buffers()))
        return functional_call(self.LTE, frozen, ((sr + 1.0) / 2.0,))

    @staticmethod
    def _check_inputs(
        lr: torch.Tensor, lr_up: torch.Tensor, ref: torch.Tensor, ref_down_up: torch.Tensor
    ) -> None:
        for name, t in (("lr", lr), ("lr_up", lr_up), ("ref", ref), ("ref_down_up", ref_down_up)):
            if t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"{name} must be (B, 3, H, W), got {tuple(t.shape)}")
            if t.shape[0] != lr.shape[0]:
                raise ValueError(f"{name} has batch {t.shape[0]}, lr has {lr.shape[0]}")
        b, _, h, w = lr.shape
        if tuple(lr_up.shape[-2:]) != (4 * h, 4 * w):
            raise ValueError(f"lr_up must be (B, 3, {4 * h}, {4 * w}), got {tuple(lr_up.shape)}")
        if ref.shape != ref_down_up.shape:
            raise ValueError(
                f"ref {tuple(ref.shape)} and ref_down_up {tuple(ref_down_up.shape)} differ"
            )
        hr, wr = ref.shape[-2:]
        if hr % 4 or wr % 4 or hr < 4 or wr < 4:
            raise ValueError(f"ref sides must be positive multiples of 4, got {hr}x{wr}")

    def forward(
        self,
        lr: torch.Tensor,
        lr_up: torch.Tensor,
        ref: torch.Tensor,
        ref_down_up: torch.Tensor,
        *,
        return_textures: bool = False,
    ) -> torch.Tensor | TTSROutput:
        """lr ``(B, 3, h, w)``, lr_up ``(B, 3, 4h, 4w)``, ref and ref_down_up ``(B, 3, Hr, Wr)``
        (Hr, Wr multiples of 4), all in [-1, 1] -> sr ``(B, 3, 4h, 4w)``, or a
        :class:`TTSROutput` when ``return_textures``."""
        self._check_inputs(lr, lr_up, ref, ref_down_up)
        _, _, q = self._lte(lr_up.detach())
        _, _, k = self._lte(ref_down_up.detach())
        v_levels = self._lte(ref.detach())
        if self.search_chunk is None:
            found = search_full(q, k, exact=self.exact_search)
        else:
            found = search_chunked(q, k, self.search_chunk, exact=self.exact_search)
        textures = transfer(v_levels, found.index, (q.shape[2], q.shape[3]))
        sr = self.MainNet(lr, found.score, textures)
        if return_textures:
            return TTSROutput(sr, found.score, found.index, textures)
        return sr
