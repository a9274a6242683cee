"""Build TTSR models from specs and load official ``TTSR-rec.pt`` / ``TTSR.pt`` state_dicts.

The official files are flat state_dicts (``torch.load(path, weights_only=True)``) with
``MainNet.*`` and ``LTE.*`` keys. The number of residual blocks and ``n_feats`` are read off the
keys and shapes, so variants trained with other ``--num_res_blocks`` / ``--n_feats`` load too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch

from liif.ttsr.model import TTSR

_PREFIXES = ("MainNet.", "LTE.")
# residual-block lists of each stage, in num_res_blocks order
_STAGE_BLOCKS = ("MainNet.SFE.RBs.", "MainNet.RB11.", "MainNet.RB21.", "MainNet.RB31.")


def is_official_ttsr_state_dict(sd: Mapping[str, Any]) -> bool:
    """True when ``sd`` is a flat mapping of tensors whose keys all start with ``MainNet.`` or
    ``LTE.``, both present."""
    if not isinstance(sd, Mapping) or not sd:
        return False
    keys = list(sd)
    if not all(isinstance(k, str) and k.startswith(_PREFIXES) for k in keys):
        return False
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        return False
    return any(k.startswith("MainNet.") for k in keys) and any(k.startswith("LTE.") for k in keys)


def build_ttsr(args: Mapping[str, Any]) -> TTSR:
    """``TTSR(**args)``; ``args`` as in ``TTSR.spec["args"]``. Unknown keys raise ``ValueError``."""
    if not isinstance(args, Mapping):
        raise TypeError(f"args must be a mapping, got {type(args).__name__}")
    allowed = set(inspect.signature(TTSR.__init__).parameters) - {"self"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"unknown TTSR args {unknown}; allowed: {sorted(allowed)}")
    return TTSR(**args)


def infer_ttsr_args(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``num_res_blocks`` and ``n_feats`` of the model that produced ``sd``."""
    head = "MainNet.SFE.conv_head.weight"
    if head not in sd:
        raise ValueError(f"not a TTSR state_dict: no {head!r} (first keys: {list(sd)[:4]})")
    counts = []
    for prefix in _STAGE_BLOCKS:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
        counts.append(max(idx) + 1 if idx else 0)
    return {"num_res_blocks": counts, "n_feats": int(sd[head].shape[0])}


def load_official_ttsr(sd: Mapping[str, torch.Tensor], **overrides: Any) -> TTSR:
    """A :class:`TTSR` holding the official state_dict ``sd`` (strict, key for key).

    Architecture args are inferred from ``sd``; ``overrides`` (e.g. ``search_chunk``,
    ``res_scale``) are passed to ``build_ttsr``. Missing/unexpected keys or shape mismatches raise
    ``ValueError`` naming the first offenders.
    """
    if not is_official_ttsr_state_dict(sd):
        bad = [k for k in sd if not (isinstance(k, str) and k.startswith(_PREFIXES))][:5]
        raise ValueError(
            "not an official TTSR state_dict (flat, MainNet.*/LTE.* tensors only); "
            f"offending keys: {bad}"
        )
    args = {**infer_ttsr_args(sd), **overrides}
    model = build_ttsr(args)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"TTSR state_dict mismatch: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(shapes)} shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(dict(sd), strict=True)
    return model
