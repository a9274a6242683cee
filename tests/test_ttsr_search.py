"""TTSR relevance search (full vs chunked, ties) and texture transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liif.ttsr import search_chunked, search_full, transfer


def _features(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _oracle(q: torch.Tensor, k: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy search: float64 cosines rounded to float32, first maximum wins."""
    qp = F.unfold(q, 3, padding=1).double().numpy()  # (B, D, Nq)
    kp = F.unfold(k, 3, padding=1).double().numpy()  # (B, D, Nk)
    qp = qp / np.maximum(np.linalg.norm(qp, axis=1, keepdims=True), 1e-12)
    kp = kp / np.maximum(np.linalg.norm(kp, axis=1, keepdims=True), 1e-12)
    rel = np.einsum("bdk,bdq->bkq", kp, qp).astype(np.float32)
    return rel.max(axis=1), rel.argmax(axis=1)  # np.argmax returns the first maximum


@pytest.fixture(scope="module")
def qk() -> tuple[torch.Tensor, torch.Tensor]:
    # odd sizes: 7x9 LR positions, 11x13 = 143 reference positions
    return _features(0, (2, 24, 7, 9)), _features(1, (2, 24, 11, 13))


@pytest.mark.parametrize("chunk", [1, 2, 7, 13, 50, 142, 143, 1000])
def test_chunked_equals_full(qk: tuple[torch.Tensor, torch.Tensor], chunk: int) -> None:
    q, k = qk
    full = search_full(q, k)
    part = search_chunked(q, k, chunk)
    assert torch.equal(part.index, full.index)
    assert torch.allclose(part.score, full.score, rtol=0, atol=1e-6)
    assert full.score.shape == (2, 1, 7, 9)
    assert full.index.shape == (2, 63) and full.index.dtype == torch.int64


def test_search_matches_independent_oracle(qk: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k = qk
    score, index = _oracle(q, k)
    full = search_full(q, k)
    np.testing.assert_array_equal(full.index.numpy(), index)
    np.testing.assert_allclose(full.score.view(2, -1).numpy(), score, rtol=0, atol=1e-6)


def test_search_close_to_float32_recipe(qk: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The official float32 recipe: normalise unfolded patches, bmm, max over the reference."""
    q, k = qk
    qp = F.normalize(F.unfold(q, 3, padding=1), dim=1)
    kp = F.normalize(F.unfold(k, 3, padding=1), dim=1).permute(0, 2, 1)
    score, index = torch.max(torch.bmm(kp, qp), dim=1)
    full = search_full(q, k)
    assert torch.equal(full.index, index)
    assert torch.allclose(full.score.view(2, -1), score, rtol=0, atol=1e-5)
    fast = search_chunked(q, k, 10, exact=False)
    assert torch.equal(fast.index, index)
    assert torch.allclose(fast.score, full.score, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 5, 17, 144])
def test_ties_earliest_reference_position_wins(chunk: int) -> None:
    # A reference whose columns repeat with period 3: every interior patch has exact copies
    # 3, 6, ... columns to the right, so each query's best match is tied.
    tile = _features(2, (1, 8, 9, 3))
    k = tile.repeat(1, 1, 1, 4)  # (1, 8, 9, 12)
    q = k[:, :, 1:8, 2:10].clone()  # queries cut from the reference itself
    full = search_full(q, k)
    part = search_chunked(q, k, chunk)
    assert torch.equal(part.index, full.index)
    assert torch.equal(part.score, full.score)
    _, oracle_index = _oracle(q, k)
    np.testing.assert_array_equal(full.index.numpy(), oracle_index)
    # interior queries match themselves exactly, and the earliest copy is 1 or 2 columns in
    qy, qx = torch.meshgrid(torch.arange(7), torch.arange(8), indexing="ij")
    interior = ((qy > 0) & (qy < 6) & (qx > 0) & (qx < 7)).flatten()
    col = full.index[0] % 12
    expected_col = (qx.flatten() + 2) % 3
    expected_col = torch.where(expected_col == 0, torch.full_like(expected_col, 3), expected_col)
    assert torch.equal(col[interior], expected_col[interior])
    assert torch.equal(full.index[0][interior] // 12, qy.flatten()[interior] + 1)
    assert torch.allclose(full.score.view(-1)[interior], torch.ones(int(interior.sum())))


def test_constant_reference_all_tied() -> None:
    k = torch.ones(1, 4, 5, 6)
    q = _features(3, (1, 4, 3, 3)).abs()
    for chunk in (1, 4, 30):
        found = search_chunked(q, k, chunk)
        assert torch.equal(found.index, search_full(q, k).index)
    _, oracle_index = _oracle(q, k)
    np.testing.assert_array_equal(search_full(q, k).index.numpy(), oracle_index)


def test_score_gradients_match() -> None:
    q = _features(4, (1, 8, 4, 5)).requires_grad_(True)
    k = _features(5, (1, 8, 6, 6)).requires_grad_(True)
    search_full(q, k).score.sum().backward()
    gq, gk = q.grad.clone(), k.grad.clone()
    q.grad, k.grad = None, None
    search_chunked(q, k, 5).score.sum().backward()
    assert torch.allclose(q.grad, gq, atol=1e-6) and torch.allclose(k.grad, gk, atol=1e-6)
    assert gk.abs().sum() > 0


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True, None])
def test_bad_chunk(qk: tuple[torch.Tensor, torch.Tensor], chunk: object) -> None:
    q, k = qk
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        search_chunked(q, k, chunk)  # type: ignore[arg-type]


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="share batch and channels"):
        search_full(torch.zeros(1, 8, 3, 3), torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        search_chunked(torch.zeros(8, 3, 3), torch.zeros(1, 8, 3, 3), 2)


def _official_transfer(
    levels: tuple[torch.Tensor, ...], index: torch.Tensor, h: int, w: int
) -> list[torch.Tensor]:
    """The official recipe: unfold every reference patch, gather, fold, divide by 9."""
    out = []
    for v, (kernel, stride, pad) in zip(levels, ((12, 4, 4), (6, 2, 2), (3, 1, 1)), strict=True):
        cols = F.unfold(v, kernel, padding=pad, stride=stride)
        picked = torch.gather(cols, 2, index.unsqueeze(1).expand(-1, cols.shape[1], -1))
        folded = F.fold(picked, (h * stride, w * stride), kernel, padding=pad, stride=stride)
        out.append(folded / 9.0)
    return out


def test_transfer_matches_official_fold() -> None:
    hk, wk, h, w = 5, 7, 4, 6
    levels = (
        _features(6, (2, 64, 4 * hk, 4 * wk)),
        _features(7, (2, 128, 2 * hk, 2 * wk)),
        _features(8, (2, 256, hk, wk)),
    )
    index = torch.randint(0, hk * wk, (2, h * w), generator=torch.Generator().manual_seed(9))
    ours = transfer(levels, index, (h, w))
    for got, want in zip(ours, _official_transfer(levels, index, h, w), strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    assert [t.shape[-2:] for t in ours] == [(16, 24), (8, 12), (4, 6)]


def test_transfer_copies_the_indexed_patch() -> None:
    # one LR position, 1x1 grid: the centre of the folded 3x3 patch is the referenced pixel / 9
    v3 = _features(10, (1, 256, 3, 3))
    levels = (torch.zeros(1, 64, 12, 12), torch.zeros(1, 128, 6, 6), v3)
    _, _, t3 = transfer(levels, torch.tensor([[4]]), (1, 1))
    assert torch.allclose(t3[0, :, 0, 0], v3[0, :, 1, 1] / 9.0)


def test_transfer_validation() -> None:
    levels = (torch.zeros(1, 64, 8, 8), torch.zeros(1, 128, 4, 4), torch.zeros(1, 256, 2, 2))
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 4\)"):
        transfer(levels, torch.tensor([[4]]), (1, 1))
    with pytest.raises(ValueError, match="index must be"):
        transfer(levels, torch.tensor([[0, 1]]), (1, 1))
    with pytest.raises(ValueError, match="level 2 must be"):
        transfer((levels[0], torch.zeros(1, 128, 3, 4), levels[2]), torch.tensor([[0]]), (1, 1))
