"""Training configurations from YAML files: :class:`liif.train.TrainConfig` from a file plus
``KEY=VALUE`` overrides. The YAML parsing lives here because liif/ parses no config files (its
config is a dataclass built from a mapping, :meth:`liif.train.TrainConfig.from_dict`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from liif.train import TrainConfig

__all__ = ["load_train_config"]


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Config from a YAML file plus ``KEY=VALUE`` overrides (values parsed as YAML).

    Raises ``ValueError`` for a file that is not a mapping, a malformed override, an unknown key
    or a value of the wrong type (:meth:`TrainConfig.from_dict`)."""
    d = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(d, dict):
        raise ValueError(f"config {str(path)!r} must hold a mapping of keys, got {type(d).__name__}")
    for kv in overrides:
        if "=" not in kv:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        d[k.strip()] = yaml.safe_load(v)
    return TrainConfig.from_dict(d)
