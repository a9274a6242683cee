"""Training data for the local backend: GT shards streamed from a ``make_gt`` output, and the
validation callable both backends use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError

__all__ = ["GT_COLUMNS", "GTShardSampler", "benchmark_validation"]

GT_COLUMNS = ["hr", "hr_shape", "hr_dtype", "lr", "lr_shape", "lr_dtype", "value_lo", "value_hi"]


class GTShardSampler:
    """Batches from the finished shards of a GT output, one shard in memory at a time.

    Each pass visits the shards in a seeded random order and each shard's rows in a seeded
    random order; ``batch(batch_size, rng)`` has :class:`liif.data.ImageFolderSampler`'s
    interface (inp, coord, cell, gt; :func:`liif.pairs.batch_from_pairs`).
    """

    def __init__(self, gt: str, *, sample_q: int, augment: bool = True) -> None:
        from pipeline.gt import shard_paths

        self.paths = shard_paths(gt)
        if not self.paths:
            raise ConfigError(f"ground truth {gt!r} has no finished non-empty shards")
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
