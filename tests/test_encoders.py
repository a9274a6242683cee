"""Encoders: official LIIF key names/shapes, and the receptive-field radius proven empirically.

The key/shape tables come from ``shared/reference/OFFICIAL_FORMATS.md`` (skipped when absent).
The radius checks perturb one input pixel and look at which latent codes change: every code within
Chebyshev distance ``receptive_radius`` must change and nothing beyond it may change.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import jvp

from liif.encoders import ENCODERS
from liif.liif import LIIF

_HERE = Path(__file__).resolve()


_FORMATS_CANDIDATES = (
    _HERE.parents[2] / "shared" / "reference" / "OFFICIAL_FORMATS.md",
    Path("/work/shared/reference/OFFICIAL_FORMATS.md"),
)


def _formats_text() -> str:
    for p in _FORMATS_CANDIDATES:
        if p.is_file():
            return p.read_text()
    pytest.skip("OFFICIAL_FORMATS.md not found (shared/reference is absent)")


def _official_section(name: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """``(spec, {key: shape})`` from the ``### name`` section of OFFICIAL_FORMATS.md."""
    text = _formats_text()
    m = re.search(rf"^### {re.escape(name)}\s*$(.*?)(?=^### |\Z)", text, re.M | re.S)
    assert m, f"section ### {name} not found in OFFICIAL_FORMATS.md"
    body = m.group(1)
    spec_m = re.search(r"`(\{'name': 'liif'.*?\})`", body)
    assert spec_m, f"no spec line in section {name}"
    spec = ast.literal_eval(spec_m.group(1))
    table: dict[str, tuple[int, ...]] = {}
    for key, shape in re.findall(r"^\|\s*([\w.]+)\s*\|\s*(\([\d, ]*\))\s*\|\s*$", body, re.M):
        assert key not in table, f"duplicate key {key} in the table"
        table[key] = tuple(ast.literal_eval(shape))
    assert table, f"no key table in section {name}"
    return spec, table


@pytest.mark.parametrize(
    ("section", "n_keys", "first_in"),
    [("edsr-baseline-liif", 82, 580), ("rdn-liif", 306, 580)],
)
def test_official_keys_and_shapes(section: str, n_keys: int, first_in: int) -> None:
    """``LIIF(**official args).state_dict()`` has exactly the official keys and shapes."""
    spec, table = _official_section(section)
    assert spec["name"] == "liif"
    assert len(table) == n_keys  # the parser read the whole table
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = LIIF(**spec["args"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) - set(table) == set(), "keys we have that the official checkpoint lacks"
    assert set(table) - set(ours) == set(), "official keys we lack"
    wrong = {k: (ours[k], table[k]) for k in table if ours[k] != table[k]}
    assert wrong == {}
    assert ours["imnet.layers.0.weight"] == (256, first_in)
    if section.startswith("edsr"):
        for k in ("encoder.sub_mean.weight", "encoder.sub_mean.bias",
                  "encoder.add_mean.weight", "encoder.add_mean.bias"):
            assert k in ours


def test_mean_shift_buffers_are_not_applied() -> None:
    """``sub_mean``/``add_mean`` sit in the state_dict but never change the features."""
    torch.manual_seed(0)
    enc = ENCODERS.build("edsr-baseline", {"n_resblocks": 1, "n_feats": 8}).eval()
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        ref = enc(x)
        enc.sub_mean.bias.add_(5.0)
        enc.add_mean.weight.mul_(-3.0)
        assert torch.equal(enc(x), ref)
    assert torch.allclose(enc.sub_mean.weight.flatten(), torch.eye(3).flatten())
    assert not any(p.requires_grad for p in enc.sub_mean.parameters())


# ----------------------------------------------------------------------------- receptive field


def _strong_init(enc: nn.Module, seed: int) -> nn.Module:
    """He-normal conv weights and non-zero biases (float64) so changes propagate measurably."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return enc.double().eval()


def _chebyshev(h: int, w: int, cy: int, cx: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.maximum((yy - cy).abs(), (xx - cx).abs())


def _assert_support(change: torch.Tensor, cheb: torch.Tensor, radius: int) -> None:
    """``change (h, w)``: nonzero on every ring d <= radius, exactly zero for every d > radius."""
    assert int(cheb.max()) > radius, "image too small to see beyond the radius"
    for d in range(radius + 1):
        assert bool((change[cheb == d] != 0).any()), f"no change at Chebyshev distance {d}"
    beyond = change[cheb > radius]
    assert bool((beyond == 0).all()), (
        f"change beyond the radius: max {float(beyond.abs().max()):.3e}")


@pytest.mark.parametrize("n_resblocks", [0, 1, 3])
def test_edsr_radius_formula_small(n_resblocks: int) -> None:
    """The radius formula holds for other depths too (cheap, 8 features)."""
    enc = _strong_init(ENCODERS.build("edsr-baseline",
                                      {"n_resblocks": n_resblocks, "n_feats": 8}), seed=1)
    r = enc.receptive_radius
    assert r == 2 * n_resblocks + 2
    size = 2 * r + 5
    x = torch.rand(1, 3, size, size + 2, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(2))
    cy, cx = size // 2, (size + 2) // 2
    x2 = x.clone()
    x2[0, :, cy, cx] += 1.0
    with torch.no_grad():
        change = (enc(x2) - enc(x)).abs().amax(dim=(0, 1))
    _assert_support(change, _chebyshev(size, size + 2, cy, cx), r)


@pytest.mark.slow
def test_edsr_baseline_full_receptive_radius() -> None:
    """Full EDSR-baseline (16 blocks, 64 features): radius 34, measured in 2-D on a 73x75 image.

    The change at distance 34 is ~1e-6 of features ~1e4: float64 keeps it; at 35 it is exactly 0.
    """
    enc = _strong_init(ENCODERS.build("edsr-baseline", {"no_upsampling": True}), seed=3)
    r = enc.receptive_radius
    assert r == 34
    h, w = 73, 75
    cy, cx = 36, 37
    x = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x2 = x.clone()
    x2[0, :, cy, cx] += 1.0
    with torch.no_grad():
        change = (enc(x2) - enc(x)).abs().amax(dim=(0, 1))
    _assert_support(change, _chebyshev(h, w, cy, cx), r)


@pytest.mark.slow
def test_rdn_full_receptive_radius() -> None:
    """Full RDN 'B' (16 RDBs x 8 convs): radius 131, measured along the rows of a 265x1 strip.

    131 stacked convs shrink the change at the edge to ~1e-100 of the features, far below what a
    finite perturbation can show even in float64, so the perturbation is taken as a forward-mode
    derivative (``torch.func.jvp``): it carries the change at every distance without rounding.
    A finite perturbation checks "exactly zero beyond the radius" as well.
    """
    enc = _strong_init(ENCODERS.build("rdn", {"no_upsampling": True}), seed=5)
    r = enc.receptive_radius
    assert r == 131
    h, cy = 2 * (r + 1) + 1, r + 1
    x = torch.rand(1, 3, h, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    tangent = torch.zeros_like(x)
    tangent[0, :, cy, 0] = 1.0
    with torch.no_grad():
        base, dfeat = jvp(enc, (x,), (tangent,))
        x2 = x.clone()
        x2[0, :, cy, 0] += 0.5
        finite = enc(x2) - base
    cheb = _chebyshev(h, 1, cy, 0)
    _assert_support(dfeat.abs().amax(dim=(0, 1)), cheb, r)
    assert bool((finite[..., cheb > r] == 0).all())
    assert bool((finite[..., cheb == 0] != 0).any())


def test_rdn_small_config_radius() -> None:
    """Config 'A' (20 RDBs x 6 convs, G0 8): radius 2 + 120 + 1 along a strip (jvp, float64)."""
    enc = _strong_init(ENCODERS.build("rdn", {"RDNconfig": "A", "G0": 8}), seed=7)
    r = enc.receptive_radius
    assert r == 123
    h, cy = 2 * (r + 1) + 1, r + 1
    x = torch.rand(1, 3, h, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    t = torch.zeros_like(x)
    t[0, :, cy, 0] = 1.0
    with torch.no_grad():
        _, dfeat = jvp(enc, (x,), (t,))
    _assert_support(dfeat.abs().amax(dim=(0, 1)), _chebyshev(h, 1, cy, 0), r)


def test_rdn_size_overrides_radius() -> None:
    """RDN with D/C/G overrides (small test models): radius 2 + D * C + 1, measured in 2-D."""
    enc = _strong_init(ENCODERS.build("rdn", {"G0": 8, "D": 2, "C": 3, "G": 8}), seed=9)
    if enc.D != 2:
        pytest.skip("this RDN has no D/C/G overrides")
    r = enc.receptive_radius
    assert r == 2 + 2 * 3 + 1
    h, w, cy, cx = 23, 25, 11, 12
    x = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    x2 = x.clone()
    x2[0, :, cy, cx] -= 0.7
    with torch.no_grad():
        change = (enc(x2) - enc(x)).abs().amax(dim=(0, 1))
    _assert_support(change, _chebyshev(h, w, cy, cx), r)


#: small arguments for every registered encoder (a new encoder must add its own here)
TINY_ARGS = {"edsr-baseline": {"n_resblocks": 2, "n_feats": 16},
             "edsr": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True},
             "rdn": {"RDNconfig": "A", "G0": 8}}


def test_every_registered_encoder_is_tested() -> None:
    assert sorted(TINY_ARGS) == ENCODERS.names()


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_shape_and_out_dim(name: str) -> None:
    """``(B, 3, h, w)`` -> ``(B, out_dim, h, w)`` for odd sizes, for every registered encoder."""
    torch.manual_seed(0)
    enc = ENCODERS.build(name, TINY_ARGS[name]).eval()
    with torch.no_grad():
        y = enc(torch.rand(2, 3, 7, 11))
    assert y.shape == (2, enc.out_dim, 7, 11)
    assert torch.isfinite(y).all()


def test_encoder_registry_errors() -> None:
    with pytest.raises(KeyError, match="unknown encoder 'nope'"):
        ENCODERS.build("nope")
    with pytest.raises(ValueError, match="RDNconfig"):
        ENCODERS.build("rdn", {"RDNconfig": "C"})
    with pytest.raises(ValueError, match="no_upsampling"):
        ENCODERS.build("edsr-baseline", {"no_upsampling": False})
