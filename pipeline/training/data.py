"""Training data for the local backend: GT shards streamed from a ``make_gt`` output, and the
validation callable both backends use; the checks of every training input, made before a run
folder exists (:func:`check_input_file`, :func:`check_image_folders`, :func:`gt_shards`,
:func:`check_validation_data`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, InputNotFoundError

__all__ = ["GT_COLUMNS", "GTShardSampler", "benchmark_validation", "check_image_folders",
           "check_input_file", "check_validation_data", "gt_shards"]

GT_COLUMNS = ["hr", "hr_shape", "hr_dtype", "lr", "lr_shape", "lr_dtype", "value_lo", "value_hi"]


class GTShardSampler:
    """Batches from the finished shards of a GT output, one shard in memory at a time.

    Each pass visits the shards in a seeded random order and each shard's rows in a seeded
    random order; ``batch(batch_size, rng)`` has :class:`liif.data.ImageFolderSampler`'s
    interface (inp, coord, cell, gt; :func:`liif.pairs.batch_from_pairs`).
    """

    def __init__(self, gt: str, *, sample_q: int, augment: bool = True,
                 role: str = "ground truth") -> None:
        self.paths = gt_shards(gt, role=role)
        self.sample_q, self.augment = sample_q, augment
        self._rows: Iterator[dict[str, Any]] | None = None

    def _stream(self, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        from pipeline.io.locations import resolve

        while True:
            for i in rng.permutation(len(self.paths)):
                fs, path = resolve(self.paths[int(i)]).fs()
                with fs.open(path, "rb") as fh:
                    table = pq.read_table(fh, columns=GT_COLUMNS).to_pydict()
                for j in rng.permutation(len(table["hr"])):
                    yield {k: v[int(j)] for k, v in table.items()}

    def batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        from liif.pairs import batch_from_pairs
        from pipeline.gt import pairs_from_batch

        if self._rows is None:
            self._rows = self._stream(rng)
        rows = [next(self._rows) for _ in range(batch_size)]
        lr, hr, vr = pairs_from_batch({k: [r[k] for r in rows] for k in GT_COLUMNS})
        return batch_from_pairs(lr, hr, self.sample_q, rng, value_ranges=vr, augment=self.augment)


def benchmark_validation(root: str | None, set_name: str = "Set5", images: int = 3,
                         scales: tuple[int, ...] = (2, 4)
                         ) -> Callable[[nn.Module], dict[str, float]] | None:
    """Mean benchmark Y-PSNR on the first ``images`` images of ``<root>/benchmark/<set>/HR``
    at ``scales``, as ``{"val_<set>_psnr_x<scales>": dB}`` (None when the data is absent)."""
    if not root:
        return None
    hr_dir = Path(root) / "benchmark" / set_name / "HR"
    if not hr_dir.is_dir():
        return None
    from liif.data import list_images, load_rgb
    from liif.evaluation import benchmark_pair
    from liif.train import psnr_model_on

    files = list_images([hr_dir])[:images]
    pairs = [(*benchmark_pair(load_rgb(f), s), s) for f in files for s in scales]
    name = f"val_{set_name}_psnr_x{'_'.join(map(str, scales))}"

    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        moved = [(lr.to(device), hr.to(device), s) for lr, hr, s in pairs]
        return {name: round(psnr_model_on(model, moved), 4)}

    return validate


# ------------------------------------------------------------------- checks of the inputs


def _absent(role: str, text: str) -> InputNotFoundError | None:
    """The error for a local ``text`` that is not there (also a link to nothing), else None."""
    if os.path.islink(text) and not os.path.exists(text):
        return InputNotFoundError(f"{role} {text!r} is a symbolic link to "
                                  f"{os.readlink(text)!r}, which does not exist")
    if not os.path.exists(text):
        return InputNotFoundError(f"{role} {text!r} does not exist")
    return None


def _kind(text: str) -> str:
    mode = os.stat(text).st_mode
    return ("a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device")


def check_input_file(role: str, text: str, *, what: str = "file", hint: str = "") -> None:
    """Refuse now a local input file that is missing, a link to nothing, a folder or not a
    regular file (a FIFO, a device). ``role`` names it (a flag); ``hint`` follows "does not
    exist" (e.g. the bundled names a value may also be).

    Raises:
        InputNotFoundError: it does not exist.
        ConfigError: it is not a regular file.
    """
    err = _absent(role, text)
    if err is not None:
        if hint and "symbolic link" not in str(err):
            raise InputNotFoundError(f"{err} {hint}")
        raise err
    if not os.path.isfile(text):
        raise ConfigError(f"{role} {text!r} is {_kind(text)}, not a {what}")


def check_image_folders(folders: Sequence[str], *, role: str = "data") -> None:
    """Refuse now image inputs the folder sampler (:func:`liif.data.list_images`) would fail on:
    one that is missing or a link to nothing, a folder without images, a file that is not an
    image, anything else (a FIFO, a device).

    Raises:
        InputNotFoundError: it does not exist.
        ConfigError: it holds or is no image.
    """
    from liif.data import IMAGE_SUFFIXES

    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    for text in folders:
        text = os.fspath(text)
        err = _absent(role, text)
        if err is not None:
            raise err
        path = Path(text)
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ConfigError(f"{role} {text!r} is a file but not an image ({kinds})")
        elif path.is_dir():
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
                raise ConfigError(f"{role} {text!r} is a folder that holds no images ({kinds}, "
                                  "searched recursively)")
        else:
            raise ConfigError(f"{role} {text!r} is {_kind(text)}, not an image or a folder of "
                              "images")


def gt_shards(gt: str, *, role: str = "ground truth",
              storage_options: dict[str, Any] | None = None) -> list[str]:
    """The URIs of the shards to train on, after checking that ``gt`` is a finished ``make_gt``
    output: it exists (locally: a folder, not a link to nothing), its manifest reads, it says
    ``complete`` (an unfinished output would train on the shards finished so far, silently), it
    lists at least one non-empty shard and (locally) every listed shard file is there.

    Raises:
        InputNotFoundError: ``gt`` does not exist or holds no manifest.
        ConfigError: an unreadable or unfinished manifest, no shards, missing shard files.
    """
    from pipeline.gt import MANIFEST, read_manifest, shard_paths
    from pipeline.io.locations import resolve

    local = resolve(gt, storage_options).is_local
    if local:
        err = _absent(role, gt)
        if err is not None:
            raise err
        if not os.path.isdir(gt):
            raise ConfigError(f"{role} {gt!r} is {_kind(gt)}, not the output folder of make_gt")
    try:
        man = read_manifest(gt, storage_options)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{role} {gt!r}: its {MANIFEST} is not valid JSON ({e}); rerun "
                          "make_gt with --overwrite") from e
    except OSError as e:
        raise ConfigError(f"{role} {gt!r}: its {MANIFEST} cannot be read ({e})") from e
    if man is None:
        raise InputNotFoundError(f"{role} {gt!r} is not a ground-truth output of make_gt (no "
                                 f"{MANIFEST})")
    if not isinstance(man, dict) or not isinstance(man.get("shards"), dict):
        raise ConfigError(f"{role} {gt!r}: its {MANIFEST} is not a make_gt manifest (no "
                          "'shards' mapping)")
    if man.get("complete") is False:
        planned = man.get("planned_shards")
        raise ConfigError(
            f"{role} {gt!r} is an unfinished make_gt output: its {MANIFEST} says complete: "
            f"false ({len(man['shards'])} of {planned if planned is not None else '?'} planned "
            "shards finished; make_gt was stopped, failed or is still running), and training "
            "on it would use only the shards finished so far. Finish it first: rerun the make_gt "
            "command that made it with --resume (the same --input, --output and options)")
    paths = shard_paths(gt, storage_options)
    if not paths:
        raise ConfigError(f"{role} {gt!r} has no finished non-empty shards (no samples to "
                          "train on)")
    if local:
        lost = [p for p in paths if not os.path.isfile(p)]
        if lost:
            more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
            raise ConfigError(
                f"{role} {gt!r}: its {MANIFEST} lists shards that are missing ({lost[0]!r}"
                f"{more}); rerun make_gt with --resume to write them again")
    return paths


def check_validation_data(root: str, set_name: str = "Set5", *, role: str = "val_root") -> None:
    """Refuse now a validation data root that :func:`benchmark_validation` would skip without
    a word: missing, a link to nothing, not a folder, or without images in
    ``<root>/benchmark/<set_name>/HR``.

    Raises:
        InputNotFoundError: ``root`` does not exist.
        ConfigError: it is no folder, or lacks the benchmark images.
    """
    from liif.data import IMAGE_SUFFIXES

    err = _absent(role, root)
    if err is not None:
        raise err
    if not os.path.isdir(root):
        raise ConfigError(f"{role} {root!r} is {_kind(root)}, not a data folder holding "
                          f"benchmark/{set_name}/HR")
    hr = Path(root) / "benchmark" / set_name / "HR"
    if not hr.is_dir():
        raise ConfigError(f"{role} {root!r} has no folder benchmark/{set_name}/HR (the "
                          "validation images; the set is chosen by --val-set: Set5, Set14 or B100)")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in hr.rglob("*")):
        raise ConfigError(f"{role} {root!r}: benchmark/{set_name}/HR holds no images")
