"""Fast render == paper-literal reference at every output pixel, over a sweep of sizes and scales.

Every integer scale 1..8, non-integer and anisotropic scales and downscaling, image sizes with odd
primes and 1-pixel-wide sides; the whole image and model-level tiles (each tile encoded from its
own input crop with the halo, decoded with global indices). Raw model outputs (before clamping),
max abs difference <= 1e-5. A negative control swaps in the float64 relative coordinate the render
path used before: the sweep then fails at the pixels on the last latent centres, so it can fail.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import liif.fast
from liif.checkpoint import WEIGHTS_DIR, load_model
from liif.coords import axis_positions, make_coord, output_size
from liif.fast import axis_branch, first_layer, render
from liif.infer import decode
from liif.liif import LIIF, query_reference

TOL = 1e-5
ENCODER = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}}
IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [48, 40, 32]}}
SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 13), (13, 11), (37, 53)]
SCALES = [1, 2, 3, 4, 5, 6, 7, 8, 1.5, 2.7, 3.3, 0.6, (2, 3.5), (3, 1.7), (1, 4)]


def _model(seed: int) -> LIIF:
    """A small full LIIF (unfold, ensemble, cell) with weights that make outputs vary strongly."""
    torch.manual_seed(seed)
    model = LIIF(ENCODER, IMNET)
    with torch.no_grad():
        for lin in model.imnet.linears:
            lin.weight.normal_(0, 0.2)
            lin.bias.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> LIIF:
    return _model(7)


def _reference_grid(model: LIIF, feat: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The paper's query at every output pixel centre: ``(3, H, W)`` raw."""
    coord = make_coord((H, W)).unsqueeze(0)
    cell = torch.tensor([2 / H, 2 / W]).expand(1, H * W, 2)
    return query_reference(model, feat, coord, cell)[0].T.reshape(3, H, W)


def _latent_span(n: int, N: int, a: int, b: int) -> tuple[int, int]:
    u = axis_positions(n, N, a, b)
    idx = torch.cat([axis_branch(u, s, n, True) for s in (-1, 1)])
    return int(idx.min()), int(idx.max())


def _tiled(model: LIIF, img: torch.Tensor, H: int, W: int, splits: int = 3) -> torch.Tensor:
    """Output tiles, each from its own input crop (latents it reads + receptive radius + unfold)."""
    h, w = img.shape[-2:]
    reach = model.encoder.receptive_radius + 1
    rows = sorted({H * k // splits for k in range(splits + 1)})
    cols = sorted({W * k // splits for k in range(splits + 1)})
    out = torch.full((3, H, W), float("nan"))
    spans = (zip(rows, rows[1:], strict=False), zip(cols, cols[1:], strict=False))
    for (a, b), (c, d) in itertools.product(*spans):
        ly, hy = _latent_span(h, H, a, b)
        lx, hx = _latent_span(w, W, c, d)
        t, bt = max(0, ly - reach), min(h, hy + 1 + reach)
        le, rt = max(0, lx - reach), min(w, hx + 1 + reach)
        feat = model.encode(img[None, :, t:bt, le:rt])
        out[:, a:b, c:d] = decode(model, feat, in_shape=(h, w), out_shape=(H, W), rows=(a, b),
                                  cols=(c, d), offset=(t, le), chunk_pixels=97)[0]
    assert not out.isnan().any()
    return out


def _sweep_case(model: LIIF, hw: tuple[int, int], scale: object) -> tuple[float, float]:
    """``(whole-image diff, tiled diff)`` against the reference for one size and scale."""
    h, w = hw
    g = torch.Generator().manual_seed(h * 101 + w)
    img = torch.rand(3, h, w, generator=g) * 2 - 1
    H, W = output_size((h, w), scale=scale)
    with torch.no_grad():
        feat = model.encode(img[None])
        ref = _reference_grid(model, feat, H, W)
        whole = decode(model, feat, in_shape=(h, w), out_shape=(H, W), rows=(0, H), cols=(0, W),
                       chunk_pixels=211)[0]
        tiled = _tiled(model, img, H, W)
    return float((whole - ref).abs().max()), float((tiled - ref).abs().max())


@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fast_equals_reference_sweep(model: LIIF, hw: tuple[int, int]) -> None:
    """Whole image and tiles, every scale of the sweep, every pixel: |fast - reference| <= 1e-5."""
    bad = {}
    for scale in SCALES:
        d_whole, d_tiled = _sweep_case(model, hw, scale)
        if max(d_whole, d_tiled) > TOL:
            bad[str(scale)] = (d_whole, d_tiled)
    assert not bad, f"{hw}: (whole, tiled) max abs diff above {TOL} at scales {bad}"


def test_outputs_vary_enough_for_the_sweep_to_mean_something(model: LIIF) -> None:
    img = torch.rand(3, 13, 11, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = _reference_grid(model, model.encode(img[None]), 39, 33)
    assert ref.std() > 0.1
    assert (ref[:, :, 1:] - ref[:, :, :-1]).abs().mean() > 1e-2  # neighbours differ


def _float64_coord(idx: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel centres in float64, ``-1 + (2 i + 1) / n``: relative coordinates without the float32
    residue, i.e. ``2 * (u - idx)`` as render computed them before (exactly 0 on a latent centre)."""
    return -1 + (2 * idx.to(torch.float64) + 1) / n


def test_negative_control_float64_rel_fails_at_last_latent_centres(
        model: LIIF, monkeypatch: pytest.MonkeyPatch) -> None:
    """With exact (float64) relative coordinates, 37x53 at x3 differs at column 157 = 3 * 52 + 1."""
    h, w, H, W = 37, 53, 111, 159
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        feat = model.encode(img[None])
        ref = _reference_grid(model, feat, H, W)
        monkeypatch.setattr(liif.fast, "paper_coord", _float64_coord)
        old = render(model, first_layer(model, feat), in_shape=(h, w), out_shape=(H, W),
                     rows=(0, H), cols=(0, W))[0].float()
    diff = (old - ref).abs().amax(dim=0)  # (H, W)
    assert float(diff[:, 157].max()) > 1e-3, "the control did not reproduce the old defect"
    others = torch.cat([diff[:, :157], diff[:, 158:]], dim=1)
    assert float(others.max()) < 1e-4  # only the pixels on the last latent centre are affected
    # The last latent row (109 = 3 * 36 + 1) is no counter-example: there the paper's float32
    # residue is itself exactly 0, so the paper also weighs the four branches equally.
    assert float(make_coord((H,))[109, 0] - make_coord((h,))[36, 0]) == 0.0
    assert float(diff[109].max()) < 1e-4


@pytest.mark.skipif(not (WEIGHTS_DIR / "edsr-baseline-liif.safetensors").is_file(),
                    reason="bundled weights absent")
@pytest.mark.parametrize("scale", [3, 5, 2.5])
def test_bundled_official_weights_fast_equals_reference(scale: float) -> None:
    """The issue's case on the real weights: 37x53 at odd scales, every pixel within 1e-5."""
    model = load_model("edsr-baseline-liif")
    img = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0))
    H, W = output_size((37, 53), scale=scale)
    with torch.no_grad():
        feat = model.encode(((img - 0.5) / 0.5)[None])
        ref = _reference_grid(model, feat, H, W)
        fast = decode(model, feat, in_shape=(37, 53), out_shape=(H, W), rows=(0, H), cols=(0, W))[0]
    assert float((fast - ref).abs().max()) <= TOL


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_plain_mlp_kernels_agree(model: LIIF, fused: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep runs on whichever kernel this build has; both kernels meet the same bound."""
    if fused and not liif.fast.FUSED_LINEAR_RELU:
        pytest.skip("this torch build has no oneDNN fused linear (the plain path is tested)")
    monkeypatch.setattr(liif.fast, "FUSED_LINEAR_RELU", fused)
    for hw, scale in (((37, 53), 3), ((13, 11), (2, 3.5)), ((1, 7), 5)):
        d_whole, d_tiled = _sweep_case(model, hw, scale)
        assert max(d_whole, d_tiled) <= TOL, (hw, scale, d_whole, d_tiled)
