"""Relevance embedding, hard/soft attention and texture transfer of TTSR.

Q (LTE level 3 of the upsampled LR) and K (LTE level 3 of the down-then-up-sampled Ref) are cut
into 3x3 patches (zero padding 1) and L2-normalised; the relevance of reference position ``r`` to
LR position ``i`` is the cosine ``<k_r, q_i>``. The hard attention ``H_i`` is the most relevant
reference position (the earliest one on ties), the soft attention ``S_i`` its relevance.

Two searches give identical results:

* :func:`search_full` materialises the whole ``(ref positions, LR positions)`` matrix (reference);
* :func:`search_chunked` walks the reference positions in chunks with a running max/argmax,
  holding ``O(chunk * LR positions)`` relevances at a time.

A GEMM's rounding depends on its shape (a chunk of one row is computed by another kernel than a
block of 4096), so float32 relevances differ by an ulp between the two and an exact tie could be
broken differently. With ``exact=True`` (default) the dot products accumulate in float64 and are
rounded to the input dtype: the summation-order noise (~1e-13) sits far below float32 resolution,
every entry rounds to the same value whatever the chunking, and the earliest-index tie rule then
makes both searches agree exactly. ``exact=False`` keeps the GEMM in the input dtype (faster,
indices may differ where two relevances are within an ulp).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SearchResult(NamedTuple):
    """Soft attention ``score`` ``(B, 1, h, w)`` and hard attention ``index`` ``(B, h*w)``.

    ``index`` holds row-major positions in the reference's level-3 grid ``(Hk, Wk)``.
    """

    score: torch.Tensor
    index: torch.Tensor  # type: ignore[assignment]  # the field shadows tuple.index (API name)


def _check_pair(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be (B, C, H, W), got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(
            f"q and k must share batch and channels, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[2] * q.shape[3] == 0 or k.shape[2] * k.shape[3] == 0:
        raise ValueError(f"empty feature map: q {tuple(q.shape)}, k {tuple(k.shape)}")


def _normalised(patches: torch.Tensor, exact: bool) -> torch.Tensor:
    """L2-normalise ``(B, D, N)`` patches along D, in float64 when ``exact``."""
    if exact:
        patches = patches.to(torch.float64)
    return F.normalize(patches, dim=1)


def _relevance(
    k_patches: torch.Tensor, q_patches: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``(B, D, Nk)``, ``(B, D, Nq)`` normalised patches -> ``(B, Nk, Nq)`` cosines in dtype."""
    return torch.bmm(k_patches.transpose(1, 2), q_patches).to(dtype)


def _ref_patches(k_padded: torch.Tensor, width: int, start: int, stop: int) -> torch.Tensor:
    """3x3 patches of reference positions ``[start, stop)`` from the zero-padded level-3 map.

    Unfolds only the band of rows the chunk touches: ``(B, C*9, stop - start)``, equal to
    ``F.unfold(k, 3, padding=1)[:, :, start:stop]``.
    """
    y0, y1 = start // width, (stop - 1) // width
    band = k_padded[:, :, y0 : y1 + 3, :]
    cols = F.unfold(band, kernel_size=3)
    offset = y0 * width
    return cols[:, :, start - offset : stop - offset]


def search_full(q: torch.Tensor, k: torch.Tensor, *, exact: bool = True) -> SearchResult:
    """Hard/soft attention from the full relevance matrix (the reference implementation).

    q: ``(B, C, h, w)`` LR features; k: ``(B, C, Hk, Wk)`` reference features.
    Holds the ``(B, Hk*Wk, h*w)`` relevance matrix.
    """
    _check_pair(q, k)
    q_patches = _normalised(F.unfold(q, kernel_size=3, padding=1), exact)
    k_patches = _normalised(F.unfold(k, kernel_size=3, padding=1), exact)
    relevance = _relevance(k_patches, q_patches, q.dtype)
    # torch.max returns the first maximal index along dim, i.e. the earliest reference position.
    score, index = torch.max(relevance, dim=1)
    return SearchResult(score.view(q.shape[0], 1, q.shape[2], q.shape[3]), index)


def search_chunked(
    q: torch.Tensor, k: torch.Tensor, chunk: int, *, exact: bool = True
) -> SearchResult:
    """Same result as :func:`search_full`, ``chunk`` reference positions at a time.

    q: ``(B, C, h, w)``; k: ``(B, C, Hk, Wk)``. Peak extra memory: ``(B, chunk, h*w)``
    relevances, the ``(B, C*9, h*w)`` LR patches, the reference patches of one chunk (whole
    rows) and a zero-padded copy of ``k``.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    _check_pair(q, k)
    n_ref = k.shape[2] * k.shape[3]
    q_patches = _normalised(F.unfold(q, kernel_size=3, padding=1), exact)
    k_padded = F.pad(k, (1, 1, 1, 1))
    best_score: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for start in range(0, n_ref, chunk):
        stop = min(start + chunk, n_ref)
        k_patches = _normalised(_ref_patches(k_padded, k.shape[3], start, stop), exact)
        score, index = torch.max(_relevance(k_patches, q_patches, q.dtype), dim=1)
        index = index + start
        if best_score is None or best_index is None:
            best_score, best_index = score, index
        else:
            # strictly greater: an earlier chunk keeps a tie
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_index = torch.where(better, index, best_index)
    assert best_score is not None and best_index is not None
    return SearchResult(best_score.view(q.shape[0], 1, q.shape[2], q.shape[3]), best_index)


def _transfer_3x3(v: torch.Tensor, index: torch.Tensor, lr_hw: tuple[int, int]) -> torch.Tensor:
    """Gather the 3x3 patch (zero padding 1) of ``v`` at each index and fold the patches back.

    v: ``(B, C, Hk, Wk)``; index: ``(B, h*w)`` row-major positions in ``(Hk, Wk)``.
    Returns ``(B, C, h, w)``: the overlap-add of the patches divided by 9, the official
    normalisation (also at the border, where fewer patches overlap). Works one of the 9 kernel
    offsets at a time, so memory stays ``O(C * h * w)``.
    """
    b, c, _, wk = v.shape
    h, w = lr_hw
    wp = wk + 2
    v_flat = F.pad(v, (1, 1, 1, 1)).reshape(b, c, -1)
    base = (index // wk) * wp + index % wk
    canvas = v.new_zeros(b, c, h + 2, w + 2)
    for dy in range(3):
        for dx in range(3):
            idx = (base + dy * wp + dx).unsqueeze(1).expand(b, c, -1)
            canvas[:, :, dy : dy + h, dx : dx + w] += torch.gather(v_flat, 2, idx).view(b, c, h, w)
    return canvas[:, :, 1 : h + 1, 1 : w + 1] / 9.0


def transfer(
    v_levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    index: torch.Tensor,
    lr_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transferred textures ``(T_lv1, T_lv2, T_lv3)`` from the reference's LTE levels.

    v_levels: ``(B, 64, 4Hk, 4Wk)``, ``(B, 128, 2Hk, 2Wk)``, ``(B, 256, Hk, Wk)``;
    index: ``(B, h*w)`` hard attention; lr_hw: ``(h, w)``, the LR level-3 size.
    Returns ``(B, 64, 4h, 4w)``, ``(B, 128, 2h, 2w)``, ``(B, 256, h, w)``.
    """
    if len(v_levels) != 3:
        raise ValueError(f"v_levels must hold 3 levels, got {len(v_levels)}")
    h, w = lr_hw
    hk, wk = v_levels[2].shape[-2:]
    for level, (v, factor) in enumerate(zip(v_levels, (4, 2, 1), strict=True)):
        if v.ndim != 4 or tuple(v.shape[-2:]) != (hk * factor, wk * factor):
            raise ValueError(
                f"level {level + 1} must be (B, C, {hk * factor}, {wk * factor}) for a "
                f"level-3 grid of {hk}x{wk}, got {tuple(v.shape)}"
            )
    if index.shape != (v_levels[2].shape[0], h * w):
        raise ValueError(
            f"index must be (B, h*w) = ({v_levels[2].shape[0]}, {h * w}), got {tuple(index.shape)}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= hk * wk):
        raise ValueError(
            f"index values must lie in [0, {hk * wk}), got [{int(index.min())}, {int(index.max())}]"
        )
    # A level-3 position covers 2x2 level-2 and 4x4 level-1 pixels: the official 6x6/stride-2
    # and 12x12/stride-4 patches are 3x3 patches of 2x2 / 4x4 pixel blocks, so both levels
    # reduce to the level-3 transfer on pixel-unshuffled maps.
    t1 = F.pixel_shuffle(_transfer_3x3(F.pixel_unshuffle(v_levels[0], 4), index, (h, w)), 4)
    t2 = F.pixel_shuffle(_transfer_3x3(F.pixel_unshuffle(v_levels[1], 2), index, (h, w)), 2)
    t3 = _transfer_3x3(v_levels[2], index, (h, w))
    return t1, t2, t3
