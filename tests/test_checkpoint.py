"""Checkpoints: our safetensors format, official LIIF ``.pth`` files, and every refusal path."""

from __future__ import annotations

import collections
import copy
import pathlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from liif.checkpoint import (
    CheckpointError,
    bundled_models,
    load_checkpoint,
    load_model,
    official_liif_checkpoint,
    read_metadata,
    save_checkpoint,
)
from liif.infer import upscale
from liif.liif import LIIF

SMALL_ENCODER = {"name": "edsr-baseline",
                 "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}}
OFFICIAL_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Replace every float tensor of the state (buffers too) so nothing equals a fresh init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def _small_model(seed: int = 0, **switches: bool) -> LIIF:
    torch.manual_seed(seed)
    return _randomise(LIIF(SMALL_ENCODER, {"name": "mlp", "args": {"out_dim": 3,
                                                                    "hidden_list": [32, 32]}},
                           **switches), seed)


def _outputs(model: torch.nn.Module, seed: int = 1, size: tuple[int, int] = (9, 7)) -> torch.Tensor:
    """Raw model outputs at random points plus an ``upscale`` image (both paths exercised)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, *size, generator=g)
    coord = torch.rand(1, 50, 2, generator=g) * 2 - 1
    cell = torch.full((1, 50, 2), 0.1)
    with torch.no_grad():
        feat = model.encode((img[None] - 0.5) / 0.5)
        raw = model.query(feat, coord, cell, impl="reference")
    return torch.cat([raw.flatten(), upscale(model, img, scale=2.3).flatten()])


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- ours


@pytest.mark.parametrize("switches", [{}, {"local_ensemble": False, "cell_decode": False},
                                      {"feat_unfold": False}])
def test_safetensors_round_trip(tmp_path: Path, switches: dict) -> None:
    """Spec + training metadata come back; the rebuilt model has the same state and outputs."""
    model = _small_model(1, **switches)
    training = {"step": 1234, "config": {"lr": 1e-4, "data": ["a", "b"]}, "val": {"x4": 30.5}}
    path = save_checkpoint(model, tmp_path / "sub" / "m.safetensors", training=training)
    assert path == tmp_path / "sub" / "m.safetensors" and path.is_file()
    assert not list(tmp_path.glob("sub/*.tmp")), "temporary file left behind"
    meta = read_metadata(path)
    assert meta["format"] == "1"
    assert meta["spec"] == model.spec
    assert meta["training"] == training
    for k, v in switches.items():
        assert meta["spec"]["args"][k] is v
    loaded = load_model(path)
    assert isinstance(loaded, LIIF) and not loaded.training
    assert (loaded.local_ensemble, loaded.feat_unfold, loaded.cell_decode) == (
        model.local_ensemble, model.feat_unfold, model.cell_decode)
    _assert_same_state(model, loaded)
    assert torch.equal(_outputs(model), _outputs(loaded))
    assert torch.equal(_outputs(model), _outputs(load_checkpoint(str(path), device="cpu")))


def test_safetensors_half(tmp_path: Path) -> None:
    """``half=True`` stores fp16 (about half the bytes) and loads back into an fp32 model."""
    model = _small_model(2)
    full = save_checkpoint(model, tmp_path / "full.safetensors")
    half = save_checkpoint(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert all(t.dtype == torch.float16 for t in load_file(str(half)).values())
    loaded = load_model(half)
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32, k
        assert torch.equal(got, v.half().float()), k
    a, b = _outputs(model), _outputs(loaded)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, a, atol=5e-3, rtol=0)


# ----------------------------------------------------------------------------- official LIIF


def _official_file(model: LIIF, path: Path) -> Path:
    """Write ``model`` the way official LIIF's train_liif.py saves ``epoch-last.pth``."""
    sd = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    trained = copy.deepcopy(model)  # the optimizer steps a copy: `model` keeps the saved weights
    opt = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=1e-4)
    trained.imnet.linears[-1].bias.sum().backward()
    opt.step()  # the optimizer state then holds tensors (exp_avg, ...) like a real run
    ckpt = {"model": {"name": "liif", "args": model.spec["args"], "sd": sd},
            "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": opt.state_dict()},
            "epoch": 3}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("encoder", [
    {"name": "edsr-baseline", "args": {"no_upsampling": True}},
    pytest.param({"name": "rdn", "args": {"no_upsampling": True}}, marks=pytest.mark.slow),
])
def test_official_liif_checkpoint_loads(tmp_path: Path, encoder: dict) -> None:
    """Full-size official layouts (spec args exactly as in OFFICIAL_FORMATS.md) load and agree."""
    torch.manual_seed(3)
    model = _randomise(LIIF(encoder, OFFICIAL_IMNET), 3)
    assert model.spec["args"] == {"encoder_spec": encoder, "imnet_spec": OFFICIAL_IMNET}
    expected = _outputs(model, size=(6, 5))
    name = f"{encoder['name']}-liif.pth"
    path = _official_file(model, tmp_path / name)
    raw = torch.load(path, weights_only=True)  # the file really is weights-only loadable
    assert set(raw) == {"model", "optimizer", "epoch"}
    loaded = load_model(path)
    assert isinstance(loaded, LIIF) and not loaded.training
    assert loaded.spec == model.spec
    _assert_same_state(model, loaded)
    if encoder["name"] == "edsr-baseline":  # the unused mean-shift buffers are loaded too
        assert torch.equal(loaded.encoder.sub_mean.bias, model.encoder.sub_mean.bias)
    assert torch.equal(_outputs(loaded, size=(6, 5)), expected)


def test_official_export_round_trip(tmp_path: Path) -> None:
    model = _small_model(4, local_ensemble=False)
    torch.save(official_liif_checkpoint(model), tmp_path / "exported.pth")
    loaded = load_model(str(tmp_path / "exported.pth"))
    assert loaded.spec == model.spec
    assert torch.equal(_outputs(model), _outputs(loaded))


# ----------------------------------------------------------------------------- refusals


class Payload:
    """Unpickling this touches a marker file: proof that code would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class SneakyStateDict(collections.OrderedDict):
    """An OrderedDict subclass: unpickling it needs this module's code."""


def test_arbitrary_code_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"name": "liif", "args": {}, "sd": {}}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the pickle's code ran"


def test_ordered_dict_subclass_is_refused(tmp_path: Path) -> None:
    model = _small_model(5)
    path = tmp_path / "sneaky.pth"
    torch.save({"model": {"name": "liif", "args": model.spec["args"],
                          "sd": SneakyStateDict(model.state_dict())}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage" * 50, b"PK\x03\x04not a zip",
                                     bytes(range(256)) * 20])
def test_garbage_pth(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_model(path)


def test_garbage_pth_is_not_called_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert "refused" not in str(info.value)


def test_garbage_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_model(path)


def test_safetensors_without_spec(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no 'spec' metadata"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "missing.pth"
    with pytest.raises(FileNotFoundError, match="missing.pth") as info:
        load_model(path)
    assert repr(str(path)) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(path)
    assert repr(str(path)) in str(info.value)


def test_unknown_bundled_name() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model") as info:
        load_model("no-such-model")
    msg = str(info.value)
    assert "bundled" in msg
    for name in bundled_models():
        assert name in msg
    if not bundled_models():
        assert "none" in msg


def test_wrong_keys(tmp_path: Path) -> None:
    model = _small_model(6)
    sd = collections.OrderedDict(model.state_dict())
    sd["imnet.layers.99.weight"] = sd.pop("imnet.layers.0.weight")
    sd["encoder.extra.bias"] = torch.zeros(3)
    del sd["encoder.head.0.bias"]
    path = tmp_path / "keys.pth"
    torch.save({"model": {"name": "liif", "args": model.spec["args"], "sd": sd}}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    for key in ("imnet.layers.0.weight", "encoder.head.0.bias", "imnet.layers.99.weight",
                "encoder.extra.bias", "missing", "unexpected"):
        assert key in msg


def test_wrong_shapes(tmp_path: Path) -> None:
    model = _small_model(7)
    sd = dict(model.state_dict())
    sd["imnet.layers.0.weight"] = torch.zeros(32, 147)  # e.g. a model without cell decoding
    path = tmp_path / "shapes.pth"
    torch.save({"model": {"name": "liif", "args": model.spec["args"], "sd": sd}}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*imnet\.layers\.0\.weight"):
        load_model(path)


def test_unrecognised_layout(tmp_path: Path) -> None:
    path = tmp_path / "layout.pth"
    torch.save({"weights": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_model(path)


@pytest.mark.parametrize("args_name", ["unknown-model", "unknown-encoder", "unknown-arg"])
def test_bad_spec_in_checkpoint(tmp_path: Path, args_name: str) -> None:
    name, args = {
        "unknown-model": ("foo", {}),
        "unknown-encoder": ("liif", {"encoder_spec": {"name": "nope"}}),
        "unknown-arg": ("liif", {"encoder_spec": SMALL_ENCODER, "bogus": 1}),
    }[args_name]
    path = tmp_path / "spec.pth"
    torch.save({"model": {"name": name, "args": args, "sd": {}}}, path)
    with pytest.raises(CheckpointError):
        load_model(path)


# ----------------------------------------------------------------------------- reproducible bytes


def test_save_checkpoint_is_byte_reproducible_across_processes(tmp_path: Path) -> None:
    """``safetensors.save_file`` orders metadata by hash map (differs per process); ours does not."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from liif.checkpoint import save_checkpoint; from liif.liif import LIIF\n"
        "torch.manual_seed(0)\n"
        "m = LIIF({'name': 'edsr-baseline', 'args': {'no_upsampling': True, 'n_resblocks': 1, "
        "'n_feats': 8}}, {'name': 'mlp', 'args': {'out_dim': 3, 'hidden_list': [8]}})\n"
        "save_checkpoint(m, sys.argv[1], training={'b': 1, 'a': {'z': 2, 'y': [1, 2]}, 'c': 'x'})\n")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", script, str(p)], check=True)
    blobs = [p.read_bytes() for p in paths]
    assert blobs[0] == blobs[1] == blobs[2]
    header_len = int.from_bytes(blobs[0][:8], "little")
    assert header_len % 8 == 0 and blobs[0][8:9] == b"{"


def test_own_writer_is_read_by_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    from liif.checkpoint import safetensors_bytes

    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([1, -2]),
               "h": torch.tensor([0.5, 1.5], dtype=torch.float16),
               "bf": torch.tensor([3.0], dtype=torch.bfloat16), "empty": torch.zeros(0, 4),
               "t": torch.arange(12, dtype=torch.float64).reshape(3, 4).T}  # non-contiguous
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors_bytes(tensors, {"k2": "v2", "k1": "v1"}))
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"k1": "v1", "k2": "v2"}
    with pytest.raises(CheckpointError, match="complex64"):
        safetensors_bytes({"c": torch.zeros(1, dtype=torch.complex64)}, {})


def test_load_checkpoint_takes_a_bundled_name() -> None:
    """Training configs say ``init: edsr-baseline-liif``; the Ray worker calls load_checkpoint."""
    name = bundled_models()[0]
    a, b = load_checkpoint(name), load_model(name)
    _assert_same_state(a, b)
    with pytest.raises(FileNotFoundError, match="nor is it a bundled name"):
        load_checkpoint("no-such-bundled-model")
