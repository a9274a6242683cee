"""Official TTSR checkpoint layout (TTSR-rec.pt / TTSR.pt): keys, shapes, strict loading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from liif.ttsr import TTSR, build_ttsr, is_official_ttsr_state_dict, load_official_ttsr

FORMATS = (
    Path(
        os.environ.get(
            "LIIF_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
        )
    ).resolve().parent
    / "reference"
    / "OFFICIAL_FORMATS.md"
)


def _official_table() -> dict[str, tuple[int, ...]]:
    """Key -> shape rows of the TTSR table in OFFICIAL_FORMATS.md."""
    if not FORMATS.exists():
        pytest.skip(f"{FORMATS} not found")
    text = FORMATS.read_text()
    start = text.find("### TTSR")
    if start < 0:
        pytest.skip("no '### TTSR' section in OFFICIAL_FORMATS.md")
    nxt = text.find("\n#", start + 1)
    section = text[start : nxt if nxt > 0 else len(text)]
    table = {}
    for key, shape in re.findall(r"^\| ((?:MainNet|LTE)\.[\w.]+) \| \(([\d, ]*)\) \|$", section,
                                 flags=re.M):
        table[key] = tuple(int(s) for s in shape.replace(" ", "").split(",") if s)
    assert len(table) > 300, f"parsed only {len(table)} rows from {FORMATS}"
    return table


@pytest.fixture(scope="module")
def official_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[TTSR, Path]:
    """A default TTSR saved as the official flat state_dict ``TTSR-rec.pt``."""
    torch.manual_seed(0)
    model = TTSR()
    path = tmp_path_factory.mktemp("ttsr") / "TTSR-rec.pt"
    torch.save(dict(model.state_dict()), path)
    return model, path


def _tiny_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 5, 4, generator=g) * 2 - 1
    lr_up = torch.rand(1, 3, 20, 16, generator=g) * 2 - 1
    ref = torch.rand(1, 3, 16, 24, generator=g) * 2 - 1
    return lr, lr_up, ref, torch.rand(1, 3, 16, 24, generator=g) * 2 - 1


def test_keys_and_shapes_match_official_table(official_file: tuple[TTSR, Path]) -> None:
    table = _official_table()
    _, path = official_file
    sd = torch.load(path, weights_only=True)
    assert is_official_ttsr_state_dict(sd)
    ours = {k: tuple(v.shape) for k, v in sd.items()}
    assert sorted(set(table) - set(ours)) == []
    assert sorted(set(ours) - set(table)) == []
    assert {k: v for k, v in ours.items() if v != table[k]} == {}


def test_load_official_reproduces_outputs(official_file: tuple[TTSR, Path]) -> None:
    model, path = official_file
    loaded = load_official_ttsr(torch.load(path, weights_only=True))
    assert loaded.spec["args"]["num_res_blocks"] == [16, 16, 8, 4]
    assert loaded.spec["args"]["n_feats"] == 64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs = _tiny_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*inputs), model.eval()(*inputs))


def test_variant_architecture_is_inferred() -> None:
    torch.manual_seed(0)
    model = TTSR(num_res_blocks=[2, 0, 1, 3], n_feats=8)
    loaded = load_official_ttsr(model.state_dict(), search_chunk=5)
    assert loaded.spec["args"]["num_res_blocks"] == [2, 0, 1, 3]
    assert loaded.spec["args"]["n_feats"] == 8 and loaded.search_chunk == 5


def test_mismatches_are_reported() -> None:
    torch.manual_seed(0)
    sd = TTSR(num_res_blocks="1+1+1+1", n_feats=8).state_dict()
    dropped = {k: v for k, v in sd.items() if k != "MainNet.conv12.bias"}
    with pytest.raises(ValueError, match=r"1 missing \['MainNet.conv12.bias'\]"):
        load_official_ttsr(dropped)
    extra = {**sd, "MainNet.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 unexpected \['MainNet.extra.weight'\]"):
        load_official_ttsr(extra)
    reshaped = {**sd, "LTE.slice2.5.bias": torch.zeros(64)}
    with pytest.raises(ValueError, match=r"LTE.slice2.5.bias: \(64,\) vs \(128,\)"):
        load_official_ttsr(reshaped)
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert not is_official_ttsr_state_dict(wrapped)
    with pytest.raises(ValueError, match="module.MainNet"):
        load_official_ttsr(wrapped)


@pytest.mark.parametrize(
    "sd",
    [
        {},
        {"MainNet.x": torch.zeros(1)},
        {"MainNet.x": torch.zeros(1), "LTE.y": 3},
        {"MainNet.x": torch.zeros(1), "LTE_copy.y": torch.zeros(1)},
        {"model": {"name": "liif"}},
    ],
)
def test_not_official(sd: dict[str, object]) -> None:
    assert not is_official_ttsr_state_dict(sd)


def test_build_ttsr_from_spec() -> None:
    model = TTSR(num_res_blocks="1+2+1+1", n_feats=8, search_chunk=None)
    rebuilt = build_ttsr(model.spec["args"])
    assert rebuilt.spec == model.spec
    with pytest.raises(ValueError, match=r"unknown TTSR args \['depth'\]"):
        build_ttsr({"depth": 3})
