"""LIIF query paths: the fast decoder equals the paper-literal reference, tiles are exact, errors.

Small encoders and random features keep this cheap; MLP weights are re-drawn with std 0.1 so that
outputs vary strongly with the latent, the relative coordinate and the cell.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from liif.coords import axis_positions, make_coord, output_size, paper_coord
from liif.fast import axis_branch, first_layer, rel_coord, render
from liif.infer import upscale
from liif.liif import LIIF, query_reference

SMALL_ENCODER = {"name": "edsr-baseline",
                 "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}}
SMALL_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [48, 40, 32]}}
SWITCHES = list(itertools.product([True, False], repeat=3))  # ensemble, unfold, cell


def make_model(local_ensemble: bool = True, feat_unfold: bool = True, cell_decode: bool = True,
               *, seed: int = 0, std: float = 0.2, out_gain: float = 1.0,
               imnet: dict | None = None) -> LIIF:
    """A small LIIF with random weights; ``out_gain`` scales the last layer (keeps outputs small)."""
    torch.manual_seed(seed)
    model = LIIF(SMALL_ENCODER, imnet or SMALL_IMNET, local_ensemble=local_ensemble,
                 feat_unfold=feat_unfold, cell_decode=cell_decode)
    with torch.no_grad():
        lins = model.imnet.linears
        for lin in lins:
            lin.weight.normal_(0, std)
            lin.bias.normal_(0, std)
        lins[-1].weight.mul_(out_gain)
        lins[-1].bias.mul_(out_gain)
    return model.eval()


def random_queries(h: int, w: int, q: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, Q, 2) coords: uniform, near/at the borders, exactly at latent centres; anisotropic cells.

    No point sits exactly on a boundary between two latents: without the ensemble the decoder jumps
    there, and float32 (reference) and float64 (fast) may round the tie to different latents.
    """
    g = torch.Generator().manual_seed(seed)
    uni = torch.rand(q, 2, generator=g) * 2 - 1
    centres = make_coord((h, w))[torch.randint(0, h * w, (q // 2,), generator=g)]
    border = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0],
                           [-1 + 1e-7, 0.3], [1 - 1e-7, -0.23], [0.0, -0.9999], [0.5, 0.99999]])
    near = (torch.rand(q // 4, 2, generator=g) * 2 - 1).sign() * (1 - torch.rand(q // 4, 2,
                                                                               generator=g) * 0.05)
    coord = torch.cat([uni, centres, border, near]).unsqueeze(0)
    n = coord.shape[1]
    cell = torch.stack([2 / (h * (1 + 3.7 * torch.rand(n, generator=g))),
                        2 / (w * (0.4 + 2.9 * torch.rand(n, generator=g)))], dim=-1).unsqueeze(0)
    return coord, cell


# ----------------------------------------------------------------------------- fast == reference


@pytest.mark.parametrize(("ensemble", "unfold", "cell_decode"), SWITCHES)
@pytest.mark.parametrize(("h", "w"), [(7, 11), (13, 5)])
def test_query_fast_equals_reference(ensemble: bool, unfold: bool, cell_decode: bool,
                                     h: int, w: int) -> None:
    """Raw (unclamped) outputs of ``query_points`` match ``query_reference`` within 1e-5, fp32."""
    model = make_model(ensemble, unfold, cell_decode, seed=h * w)
    g = torch.Generator().manual_seed(h + w)
    feat = torch.randn(2, 16, h, w, generator=g)
    coord, cell = random_queries(h, w, 96, seed=h)
    coord, cell = coord.expand(2, -1, -1).contiguous(), cell.expand(2, -1, -1).contiguous()
    cell = cell if cell_decode else None
    with torch.no_grad():
        ref = model.query(feat, coord, cell, impl="reference")
        fast = model.query(feat, coord, cell, impl="fast")
    assert fast.shape == ref.shape == (2, coord.shape[1], 3)
    assert ref.std(dim=1).min() > 0.1, "outputs barely vary: the comparison would be weak"
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def _on_last_latent_centre(coord: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(Q,)``: the point is exactly (in float32) on the last latent row's or column's centre."""
    return (coord[:, 0] == make_coord((h,))[-1, 0]) | (coord[:, 1] == make_coord((w,))[-1, 0])


@pytest.mark.parametrize(("unfold", "cell_decode"), [(True, True), (False, False)])
def test_query_fast_equals_reference_at_last_latent_centres_no_ensemble(
        unfold: bool, cell_decode: bool) -> None:
    """Without the ensemble the last row/column of latent centres agrees too."""
    _compare_at_last_centres(False, unfold, cell_decode)


@pytest.mark.parametrize(("unfold", "cell_decode"), [(True, True), (False, False)])
def test_query_fast_equals_reference_at_last_latent_centres(unfold: bool,
                                                            cell_decode: bool) -> None:
    """Points exactly at the centres of the last latent row and column (as make_coord gives)."""
    _compare_at_last_centres(True, unfold, cell_decode)


def _compare_at_last_centres(ensemble: bool, unfold: bool, cell_decode: bool) -> None:
    h, w = 7, 11
    model = make_model(ensemble, unfold, cell_decode, seed=5)
    feat = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(5))
    centres = make_coord((h, w))
    coord = centres[_on_last_latent_centre(centres, h, w)].unsqueeze(0)
    assert coord.shape[1] == h + w - 1
    cell = torch.tensor([2 / (3 * h), 2 / (3 * w)]).expand(1, coord.shape[1], 2)
    cell = cell if cell_decode else None
    with torch.no_grad():
        ref = model.query(feat, coord, cell, impl="reference")
        fast = model.query(feat, coord, cell, impl="fast")
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_query_fast_is_differentiable_like_reference() -> None:
    """Training uses the fast path: its gradients match the reference's."""
    model = make_model(seed=3)
    feat = torch.randn(1, 16, 7, 11, generator=torch.Generator().manual_seed(3))
    coord, cell = random_queries(7, 11, 32, seed=3)
    grads = []
    for impl in ("reference", "fast"):
        model.zero_grad()
        f = feat.clone().requires_grad_(True)
        model.query(f, coord, cell, impl=impl).pow(2).sum().backward()
        grads.append((f.grad.clone(), model.imnet.linears[0].weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ensemble_branches_match_paper_at_a_centre() -> None:
    """At a latent centre the four ensemble branches pick that latent and its +1 neighbours."""
    h = 7
    u = torch.tensor([3.0], dtype=torch.float64)
    picks = {s: int(axis_branch(u, s, h, True)[0]) for s in (-1, 1)}
    assert picks == {-1: 3, 1: 4}  # the 1e-6 shift breaks the tie upwards
    idx = axis_branch(torch.tensor([-0.5, h - 0.5], dtype=torch.float64), 1, h, True)
    assert idx.tolist() == [0, h - 1]  # clamped at the borders
    rel = rel_coord(torch.tensor([-1.0, 1.0]), idx, h)
    torch.testing.assert_close(rel, torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)
    assert rel.dtype == torch.float32  # the paper's dtype, not float64


def test_rel_coord_keeps_the_papers_rounding_at_the_last_centre() -> None:
    """37x53 at x3: output column 157 lies exactly on the last latent centre (52).

    Both x-branches clamp to latent 52, so the exact relative coordinate is 0 on both and the
    area weights would all be 1e-9 (equal). The paper's float32 ``(coord - q_coord) * w`` leaves
    a tiny residue that is the same on both branches and cancels in the weights: the y-branches
    keep their proper interpolation weights. ``rel_coord`` reproduces that residue bit for bit.
    """
    w, W, j = 53, 159, 157
    cx = paper_coord(torch.tensor([j]), W)
    exact = 2 * (axis_positions(w, W, j, j + 1) - 52)
    assert float(exact) == 0.0
    paper = (make_coord((W,))[j, 0] - make_coord((w,))[52, 0]) * w  # the official expression
    got = rel_coord(cx, torch.tensor([52]), w)
    assert torch.equal(got, paper.reshape(1))
    assert float(got) != 0.0, "no rounding residue: this case would not test the fix"


@pytest.mark.parametrize("scale", [1.5, 2, 2.7, 4, (2, 3.5), 0.6])
@pytest.mark.parametrize(("ensemble", "unfold", "cell_decode"),
                         [(True, True, True), (False, True, False), (True, False, True)])
def test_render_equals_reference_grid(scale: object, ensemble: bool, unfold: bool,
                                      cell_decode: bool) -> None:
    """``render`` over the whole output grid == ``query_reference`` at every pixel centre (raw)."""
    model = make_model(ensemble, unfold, cell_decode, seed=11)
    h, w = 7, 11
    feat = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(12))
    H, W = output_size((h, w), scale=scale)
    with torch.no_grad():
        grid = render(model, first_layer(model, feat), in_shape=(h, w), out_shape=(H, W),
                      rows=(0, H), cols=(0, W))
        coord = make_coord((H, W)).unsqueeze(0)
        cell = torch.tensor([2 / H, 2 / W]).expand(1, H * W, 2)
        ref = query_reference(model, feat, coord, cell)
    assert grid.shape == (1, 3, H, W)
    torch.testing.assert_close(grid[0].reshape(3, -1).T, ref[0], atol=1e-5, rtol=0)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [1.5, 2, 2.7, 3, 4, (2, 3.5), 0.6])
def test_upscale_fast_equals_reference(scale: object) -> None:
    """End to end (encoder included): ``upscale`` fast == ``impl="reference"`` within 1e-5.

    The last layer is scaled down so most outputs stay inside (0, 1) and clamping hides nothing.
    """
    model = make_model(seed=21, out_gain=0.15)
    img = _image(9, 13, seed=22)
    H, W = output_size((9, 13), scale=scale)
    fast = upscale(model, img, scale=scale, chunk_pixels=97)  # odd chunks: rows and columns split
    ref = upscale(model, img, scale=scale, impl="reference", chunk_pixels=1000)
    assert fast.shape == ref.shape == (3, H, W)
    inside = ((ref > 0) & (ref < 1)).float().mean()
    assert inside > 0.9, f"only {float(inside):.0%} of outputs inside (0, 1)"
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (17, 5), (10, 29), (31, 31)])
def test_upscale_exact_size(size: tuple[int, int]) -> None:
    model = make_model(seed=31, out_gain=0.15)
    img = _image(9, 13, seed=32)
    fast = upscale(model, img, size=size)
    ref = upscale(model, img, size=size, impl="reference")
    assert fast.shape == (3, *size)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_upscale_default_mlp_matches_reference() -> None:
    """The default 4x256 MLP (580 inputs at 64 features) through both paths, x3.3."""
    torch.manual_seed(41)
    model = LIIF({"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1}}).eval()
    img = _image(6, 8, seed=42)
    fast = upscale(model, img, scale=3.3)
    ref = upscale(model, img, scale=3.3, impl="reference")
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- tiles and windows


def _latent_range(h: int, H: int, start: int, stop: int, ensemble: bool) -> tuple[int, int]:
    """Latent indices ``[lo, hi]`` that output rows ``[start, stop)`` read (every branch)."""
    u = axis_positions(h, H, start, stop)
    idx = torch.cat([axis_branch(u, s, h, ensemble) for s in ((-1, 1) if ensemble else (0,))])
    return int(idx.min()), int(idx.max())


@pytest.mark.parametrize(("ensemble", "unfold", "cell_decode"), SWITCHES)
def test_render_window_with_offset_equals_whole(ensemble: bool, unfold: bool,
                                                cell_decode: bool) -> None:
    """A window of the first-layer map (just the latents needed) gives the whole image's pixels."""
    model = make_model(ensemble, unfold, cell_decode, seed=51)
    h, w, H, W = 13, 11, 37, 29  # non-integer, anisotropic scale
    feat = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(52))
    with torch.no_grad():
        z = first_layer(model, feat)
        whole = render(model, z, in_shape=(h, w), out_shape=(H, W), rows=(0, H), cols=(0, W))
        for rows, cols in [((0, 9), (0, 7)), ((9, 23), (7, 20)), ((23, 37), (20, 29)),
                           ((16, 17), (28, 29))]:
            y0, y1 = _latent_range(h, H, *rows, ensemble)
            x0, x1 = _latent_range(w, W, *cols, ensemble)
            win = z[:, y0:y1 + 1, x0:x1 + 1]
            part = render(model, win, in_shape=(h, w), out_shape=(H, W), rows=rows, cols=cols,
                          offset=(y0, x0))
            torch.testing.assert_close(part, whole[..., rows[0]:rows[1], cols[0]:cols[1]],
                                       atol=1e-6, rtol=0)
            with pytest.raises(IndexError, match="outside the window"):
                render(model, z[:, y0 + 1:y1 + 1, x0:x1 + 1], in_shape=(h, w), out_shape=(H, W),
                       rows=rows, cols=cols, offset=(y0 + 1, x0))
            with pytest.raises(IndexError, match="outside the window"):
                render(model, z[:, y0:y1 + 1, x0:x1], in_shape=(h, w), out_shape=(H, W),
                       rows=rows, cols=cols, offset=(y0, x0))


def test_tile_from_image_crop_with_halo_is_exact() -> None:
    """Tiled at the model level: crop the *input*, encode the crop, render the tile with ``offset``.

    With the latents the tile reads plus ``receptive_radius + 1`` (unfold) rows/columns of
    context the tile equals the whole image (up to float reassociation); one pixel less and the
    crop's zero padding shows. ``model.halo`` around the tile's footprint covers that context.
    """
    model = make_model(seed=61).double()
    h, w, H, W = 41, 37, 103, 87
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(62),
                     dtype=torch.float64) * 2 - 1
    r = model.encoder.receptive_radius
    assert model.halo == r + 2 == 8
    rows, cols = (40, 66), (30, 58)  # an interior tile
    with torch.no_grad():
        whole = render(model, first_layer(model, model.encode(img)), in_shape=(h, w),
                       out_shape=(H, W), rows=(0, H), cols=(0, W))[..., rows[0]:rows[1],
                                                                 cols[0]:cols[1]]
        ly, hy = _latent_range(h, H, *rows, True)
        lx, hx = _latent_range(w, W, *cols, True)

        def tile(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
            crop = img[..., ly - 1 - r + top:hy + 2 + r - bottom, lx - 1 - r + left:hx + 2 + r - right]
            z = first_layer(model, model.encode(crop))
            return render(model, z, in_shape=(h, w), out_shape=(H, W), rows=rows, cols=cols,
                          offset=(ly - 1 - r + top, lx - 1 - r + left))

        assert ly - 1 - r > 0 and hy + 2 + r < h  # really interior: padding would differ
        torch.testing.assert_close(tile(0, 0, 0, 0), whole, atol=1e-6, rtol=0)
        for short in [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]:
            diff = (tile(*short) - whole).abs().max()
            assert diff > 1e-4, f"context one pixel short at {short} changed nothing ({diff:.1e})"
        uy, ux = axis_positions(h, H, *rows), axis_positions(w, W, *cols)
        assert math.floor(float(uy.min())) - model.halo <= ly - 1 - r
        assert math.ceil(float(uy.max())) + model.halo >= hy + 1 + r
        assert math.floor(float(ux.min())) - model.halo <= lx - 1 - r
        assert math.ceil(float(ux.max())) + model.halo >= hx + 1 + r


# ----------------------------------------------------------------------------- precision


def test_bf16_close_to_fp32() -> None:
    model = make_model(seed=71, out_gain=0.15)
    img = _image(11, 9, seed=72)
    fp32 = upscale(model, img, scale=2.5)
    bf16 = upscale(model, img, scale=2.5, precision="bf16")
    diff = (fp32 - bf16).abs()
    assert diff.max() < 2e-2
    assert diff.max() > 0  # bf16 really ran
    feat = torch.randn(1, 16, 7, 11, generator=torch.Generator().manual_seed(73))
    coord, cell = random_queries(7, 11, 64, seed=73)
    with torch.no_grad():
        a = model.query(feat, coord, cell, precision="fp32")
        b = model.query(feat, coord, cell, precision="bf16")
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 2e-2


# ----------------------------------------------------------------------------- errors


def test_query_errors() -> None:
    model = make_model(seed=81)
    feat = torch.randn(1, 16, 5, 6)
    coord, cell = random_queries(5, 6, 8, seed=81)
    with pytest.raises(ValueError, match="impl 'bogus'"):
        model.query(feat, coord, cell, impl="bogus")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        model.query(feat, coord, cell, precision="fp8")
    for impl in ("fast", "reference"):
        with pytest.raises(ValueError, match="pass cell"):
            model.query(feat, coord, None, impl=impl)
    no_cell = make_model(cell_decode=False, seed=82)
    assert no_cell.query(feat, coord, None).shape == (1, coord.shape[1], 3)
    with pytest.raises(ValueError, match=r"expects \(B, 3, h, w\)"):
        model.encode(torch.rand(1, 4, 5, 5))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "x", (1, 2, 3),
                                 (2, 0), (2, float("nan"))])
def test_upscale_bad_scale(bad: object) -> None:
    model = make_model(seed=91)
    with pytest.raises(ValueError, match="scale"):
        upscale(model, _image(5, 5, 0), scale=bad)


def test_upscale_argument_errors() -> None:
    model = make_model(seed=92)
    img = _image(5, 6, 1)
    with pytest.raises(ValueError, match="exactly one of scale= or size="):
        upscale(model, img, scale=2, size=(10, 12))
    with pytest.raises(ValueError, match="exactly one of scale= or size="):
        upscale(model, img)
    for size in [(0, 5), (5,), (5.0, 6), (True, 4)]:
        with pytest.raises(ValueError, match="size"):
            upscale(model, img, size=size)
    with pytest.raises(TypeError, match="float"):
        upscale(model, (img * 255).to(torch.uint8), scale=2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        upscale(model, img.numpy(), scale=2)
    for shape in [(1, 3, 5, 6), (4, 5, 6), (3, 5), (3, 0, 6)]:
        with pytest.raises(ValueError, match="shape"):
            upscale(model, torch.rand(shape), scale=2)
    with pytest.raises(ValueError, match="impl 'slow'"):
        upscale(model, img, scale=2, impl="slow")
    with pytest.raises(ValueError, match="precision 'fp64'"):
        upscale(model, img, scale=2, precision="fp64")
    with pytest.raises(ValueError, match="chunk_pixels"):
        upscale(model, img, scale=2, chunk_pixels=0)


def test_upscale_reference_validates_precision() -> None:
    model = make_model(seed=93)
    with pytest.raises(ValueError, match="precision"):
        upscale(model, _image(5, 6, 1), scale=2, precision="fp64", impl="reference")


# ----------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("n", [1, 2, 5, 48, 1001])
def test_make_coord_centres(n: int) -> None:
    c = make_coord((n, 3), dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    assert c.shape == (3 * n, 2)
    torch.testing.assert_close(c.reshape(n, 3, 2)[:, 0, 0], -1 + (2 * i + 1) / n, atol=1e-15, rtol=0)
    torch.testing.assert_close(c.reshape(n, 3, 2)[0, :, 1],
                               torch.tensor([-2 / 3, 0.0, 2 / 3], dtype=torch.float64),
                               atol=1e-15, rtol=0)
    grid = make_coord((n, 3), flatten=False)
    assert grid.shape == (n, 3, 2)


@pytest.mark.parametrize("n", [1, 3, 7, 53, 159, 480, 1001, 4097])
def test_make_coord_is_the_official_expression(n: int) -> None:
    """Bit for bit the official ``v0 + r + (2 * r) * torch.arange(n).float()``, r = (v1 - v0) / 2n."""
    v0, v1 = -1, 1
    r = (v1 - v0) / (2 * n)
    official = v0 + r + (2 * r) * torch.arange(n).float()
    assert torch.equal(make_coord((n,))[:, 0], official)
    idx = torch.tensor([0, n - 1, n // 2])
    assert torch.equal(paper_coord(idx, n), official[idx])  # any subset: tiles get the same values
    with pytest.raises(ValueError, match="n=0"):
        paper_coord(idx, 0)


def test_axis_positions_match_make_coord() -> None:
    """The latent-index frame and the paper frame describe the same points."""
    h, H = 7, 23
    u = axis_positions(h, H, 0, H)
    c = make_coord((H,), dtype=torch.float64)[:, 0]
    torch.testing.assert_close(u, (c + 1) * h / 2 - 0.5, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("hw", "scale", "expected"), [
    ((10, 10), 2, (20, 20)), ((7, 11), 1.5, (11, 17)), ((7, 11), 2.7, (19, 30)),
    ((3, 5), 0.5, (2, 3)), ((5, 5), 0.1, (1, 1)), ((9, 13), (2, 3.5), (18, 46)),
    ((9, 13), [0.6, 1.1], (5, 14)), ((1, 1), 1e-9, (1, 1)), ((4, 8), 1.125, (5, 9)),
])
def test_output_size_rule(hw: tuple[int, int], scale: object, expected: tuple[int, int]) -> None:
    """``H = max(1, floor(h * s + 0.5))``: halves round up, never 0."""
    assert output_size(hw, scale=scale) == expected
    sy, sx = scale if isinstance(scale, tuple | list) else (scale, scale)
    assert expected == (max(1, math.floor(hw[0] * sy + 0.5)), max(1, math.floor(hw[1] * sx + 0.5)))


def test_output_size_exact_size() -> None:
    assert output_size((7, 11), size=(3, 100)) == (3, 100)
