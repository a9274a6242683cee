"""Smoke test of reference_upscale on TTSR's bundled LR/Ref demo pair (real images).

A crop of the pair keeps the test to a couple of seconds on a shared 2-core CPU: the whole pair
(125x88 LR, 500x370 Ref) costs a 11k x 11k relevance search and three VGG passes at 500x370.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liif.ttsr import TTSR, reference_upscale


def _load(path: Path) -> torch.Tensor:
    arr = np.array(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def demo_pair(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    root = shared_data / "refsr_demo" / "ttsr"
    lr_path, ref_path = root / "lr" / "0.png", root / "ref" / "0.png"
    if not (lr_path.exists() and ref_path.exists()):
        pytest.skip(f"TTSR demo pair not found under {root}")
    lr, ref = _load(lr_path), _load(ref_path)
    assert lr.shape == (3, 125, 88) and ref.shape == (3, 500, 370)
    # odd LR crop; a Ref crop whose sides are not multiples of 4 (cropped inside)
    return lr[:, 40:61, 30:53], ref[:, 150:249, 100:203]


def test_reference_upscale_demo(demo_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    lr, ref = demo_pair
    torch.manual_seed(0)
    model = TTSR(num_res_blocks="2+2+1+1", n_feats=32, search_chunk=500)
    model.train()
    sr = reference_upscale(model, lr, ref)
    assert sr.shape == (3, 4 * 21, 4 * 23) and sr.dtype == torch.float32
    assert torch.isfinite(sr).all()
    assert sr.min() >= 0.0 and sr.max() <= 1.0
    assert sr.std() > 0.0
    assert model.training  # mode restored
    again = reference_upscale(model, lr, ref)
    assert torch.equal(sr, again)


def test_reference_upscale_validation(demo_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    lr, ref = demo_pair
    model = TTSR(num_res_blocks="1+1+1+1", n_feats=8)
    with pytest.raises(ValueError, match=r"lr must be \(3, H, W\)"):
        reference_upscale(model, lr[None], ref)
    with pytest.raises(TypeError, match="float tensor"):
        reference_upscale(model, (lr * 255).to(torch.uint8), ref)
    with pytest.raises(ValueError, match=r"ref values must lie in \[0, 1\], got \[-1.0"):
        reference_upscale(model, lr, ref * 2 - 1)
    with pytest.raises(ValueError, match="at least 4x4"):
        reference_upscale(model, lr, ref[:, :3, :10])
    with pytest.raises(TypeError, match="torch.Tensor"):
        reference_upscale(model, lr.numpy(), ref)  # type: ignore[arg-type]
