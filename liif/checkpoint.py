"""Checkpoints: our safetensors format, official LIIF ``.pth`` and official TTSR ``.pt``.

Our format is one ``.safetensors`` file whose header metadata holds
``liif_format`` (version), ``spec`` (JSON ``{name, args}``) and ``training`` (JSON, free form).
Official checkpoints are read with ``torch.load(weights_only=True)``: a file that needs arbitrary
code to unpickle is refused.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from liif.errors import LiifError, ModelNotFoundError
from liif.liif import LIIF
from liif.registry import Registry

FORMAT_VERSION = "1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "edsr-baseline-liif"

MODELS = Registry("model")
MODELS.register("liif", LIIF)


def _build_ttsr(**args: Any) -> nn.Module:
    from liif.ttsr import build_ttsr

    return build_ttsr(args)


MODELS.register("ttsr", _build_ttsr)


class CheckpointError(LiifError, ValueError):
    """A checkpoint that cannot be read or does not match its architecture."""


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build an (untrained) model from ``{name, args}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"model spec must be a dict with 'name' and 'args', got {spec!r}")
    try:
        return MODELS.build(spec["name"], spec.get("args", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build model from spec {spec!r}: {e}") from e


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
              torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file, deterministically: the same tensors and metadata give the same bytes.

    ``safetensors.torch.save_file`` writes the metadata in hash-map order, which changes from one
    process to the next; here the header is JSON with sorted keys (metadata and tensor names),
    tensors are laid out in name order, and the header is space-padded to 8 bytes, as the format
    specifies. Any safetensors reader loads it.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _ST_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def checkpoint_bytes(model: nn.Module, *, training: dict[str, Any] | None = None,
                     half: bool = False) -> bytes:
    """The bytes :func:`save_checkpoint` writes for ``model`` (deterministic)."""
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    meta = {"liif_format": FORMAT_VERSION, "spec": json.dumps(model.spec, sort_keys=True),
            "training": json.dumps(training or {}, sort_keys=True)}
    return safetensors_bytes(sd, meta)


def save_checkpoint(model: nn.Module, path: str | Path, *, training: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write ``model`` as safetensors + JSON spec (atomically; byte-reproducible).

    ``half`` stores float tensors as fp16 (loaded back into the model's fp32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint_bytes(model, training=training, half=half)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    path.chmod(0o644)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The spec and training metadata of one of our safetensors checkpoints."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
    if "spec" not in meta:
        raise CheckpointError(f"{path} has no 'spec' metadata: not a liif-pipeline checkpoint")
    return {"format": meta.get("liif_format"), "spec": json.loads(meta["spec"]),
            "training": json.loads(meta.get("training", "{}"))}


def _load_state(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> nn.Module:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or bad:
        name = cast("dict[str, Any]", model.spec)["name"]
        raise CheckpointError(
            f"{source} does not match {name}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {[(k, tuple(sd[k].shape)) for k in bad[:5]]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return model


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = [line for line in str(e).splitlines() if "Unsupported global" in line]
        if culprit:
            raise CheckpointError(
                f"{path} needs arbitrary code to unpickle and was refused (only weights_only "
                f"checkpoints are loaded): {culprit[0].strip()}") from e
        raise CheckpointError(f"{path} is not a readable torch checkpoint: "
                              f"{str(e).splitlines()[0]}") from e
    except Exception as e:  # torch.load raises many types on corrupt files
        raise CheckpointError(f"{path} is not a readable torch checkpoint: "
                              f"{type(e).__name__}: {e}") from e


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> nn.Module:
    """Load ours (``.safetensors``), an official LIIF ``.pth`` or an official TTSR ``.pt``.

    A name that is not a file but a bundled model (``"edsr-baseline-liif"``) loads that model,
    so training configs can say ``init: edsr-baseline-liif``.
    """
    path = Path(path)
    if not path.is_file():
        if not (WEIGHTS_DIR / f"{path}.safetensors").is_file():
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} does not exist (nor is it a bundled name: "
                f"{bundled_models() or 'none'})")
        path = WEIGHTS_DIR / f"{path}.safetensors"
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        try:
            sd = load_file(str(path))
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
        model = _load_state(build_model(meta["spec"]), sd, str(path))
    else:
        obj = _torch_load(path)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "sd" in obj["model"]:
            spec = {"name": obj["model"]["name"], "args": obj["model"].get("args", {})}
            model = _load_state(build_model(spec), obj["model"]["sd"], str(path))
        elif isinstance(obj, dict) and any(str(k).startswith("MainNet.") for k in obj):
            from liif.ttsr import load_official_ttsr

            model = load_official_ttsr(obj)
        else:
            keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"{path}: unrecognised checkpoint layout (top-level keys {keys}); expected an "
                "official LIIF {'model': {'name', 'args', 'sd'}} or a TTSR MainNet./LTE. state_dict")
    model.eval()
    return model.to(device) if device is not None else model


def bundled_models() -> list[str]:
    """Names of the weights shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve(path_or_name: str | Path) -> Path:
    """A bundled name (e.g. ``"edsr-baseline-liif"``) or a path -> the checkpoint file."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    bundled = WEIGHTS_DIR / f"{path_or_name}.safetensors"
    if bundled.is_file():
        return bundled
    raise ModelNotFoundError(
        f"model {str(path_or_name)!r} is neither a checkpoint file nor a bundled name "
        f"(bundled: {bundled_models() or 'none'})")


def load_model(path_or_name: str | Path = DEFAULT_MODEL,
               device: torch.device | str | None = None) -> nn.Module:
    """Load a model in eval mode: a bundled name, our checkpoint, or an official one."""
    return load_checkpoint(resolve(path_or_name), device=device)


def official_liif_checkpoint(model: LIIF) -> dict[str, Any]:
    """The official LIIF layout ``{'model': {'name', 'args', 'sd'}}`` for ``model`` (for export)."""
    spec = model.spec
    return {"model": {"name": spec["name"], "args": spec["args"], "sd": model.state_dict()}}
