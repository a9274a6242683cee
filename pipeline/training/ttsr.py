"""TTSR-rec training (L1 only) on reference ground truth, through the one training loop.

The data are the samples of ``make_gt --reference ...`` outputs (columns ``lr``, ``hr``, ``ref``
and their shapes/dtypes, ``value_lo``/``value_hi``), decoded into memory
(:func:`load_ref_samples`); batches are drawn with a seeded generator (:func:`liif.ttsr.ref_batch`,
the official flip/rot90 augmentation unless ``augment=False``). Optimisers as in the official
script: Adam, ``lr`` for the main network and ``lr_lte`` for the texture extractor, both
multiplied by ``gamma`` at each ``milestones`` fraction of ``steps``. The loop, the run folder
and resume are :mod:`liif.loop`'s (``model.safetensors``, ``trainer.pt``, ``metrics.csv``,
``final.safetensors``); a rerun with the same ``out`` resumes bit-identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liif.checkpoint import load_checkpoint, save_checkpoint
from liif.loop import (
    FINAL_FILE,
    METRICS_FILE,
    FolderPathError,
    Training,
    load_run,
    make_run_folder,
    run_loop,
    save_run,
    write_metrics,
)
from liif.train import progress_line
from liif.ttsr import TTSR, make_ttsr_optimizers, ref_batch, ttsr_train_step
from liif.ttsr.model import parse_num_res_blocks
from pipeline.errors import ConfigError, OutputNotWritableError

__all__ = ["GTReadError", "RefSample", "TTSRTrainConfig", "load_ref_samples", "train_ttsr"]

REF_COLUMNS = ("ref", "ref_shape", "ref_dtype")
BASE_COLUMNS = ("sample_id", "source_uri", "hr", "hr_shape", "hr_dtype", "lr", "lr_shape",
                "lr_dtype", "value_lo", "value_hi")
OPTIONAL_COLUMNS = ("ref_kind", "ref_params", "window")


class GTReadError(ConfigError):
    """A ground-truth output that cannot feed TTSR training or evaluation."""


# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True, eq=False)
class RefSample:
    """One decoded GT row: ``lr (C, h, w)``, ``hr (C, 4h, 4w)``, ``ref (C, R, R)`` in native
    units (``value_range`` maps them to [0, 1])."""

    sample_id: str
    source_uri: str
    gt: str
    lr: np.ndarray
    hr: np.ndarray
    ref: np.ndarray
    value_range: tuple[float, float]
    ref_kind: str | None = None
    window: tuple[int, int, int, int] | None = None  # HR crop in source pixels (r0, r1, c0, c1)


def _read_shard(path: str) -> tuple[list[str], Any]:
    import pyarrow.parquet as pq

    from pipeline.io.locations import resolve

    fs, p = resolve(path).fs()
    with fs.open(p, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = list(pf.schema_arrow.names)
        wanted = [c for c in (*BASE_COLUMNS, *REF_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        return names, pf.read(columns=wanted)


def load_ref_samples(gt_dirs: Sequence[str], *, limit: int | None = None) -> list[RefSample]:
    """Decode every row of the shards of ``gt_dirs`` (in order; at most ``limit`` rows).

    Raises:
        GTReadError: an output without shards or without the reference columns, a sample with
            more than 3 (or 2) bands, or a sample whose HR is not 4x its LR.
        pipeline.errors.InputNotFoundError: a directory that is not a GT output.
    """
    from pipeline.gt import decode_array, shard_paths

    samples: list[RefSample] = []
    for gt in gt_dirs:
        paths = shard_paths(str(gt))
        if not paths:
            raise GTReadError(f"GT output {str(gt)!r} has no finished shards")
        for path in paths:
            names, table = _read_shard(path)
            if "ref" not in names or any(c not in names for c in REF_COLUMNS):
                raise GTReadError(
                    f"GT output {str(gt)!r} has no reference columns "
                    f"({', '.join(c for c in REF_COLUMNS if c not in names)} missing in {path}); "
                    "make it with make_gt --reference ...")
            missing = [c for c in BASE_COLUMNS if c not in names]
            if missing:
                raise GTReadError(f"shard {path} lacks the columns {missing}")
            rows = table.to_pydict()
            for i in range(table.num_rows):
                sid = str(rows["sample_id"][i])
                empty = [k for k in ("lr", "hr", "ref") if rows[k][i] is None]
                if empty:
                    raise GTReadError(f"sample {sid!r} of {str(gt)!r} has no {empty} data")
                arrays = {k: decode_array(rows[k][i], rows[f"{k}_shape"][i], rows[f"{k}_dtype"][i])
                          for k in ("lr", "hr", "ref")}
                for k, a in arrays.items():
                    if a.ndim != 3 or a.shape[0] not in (1, 3):
                        raise GTReadError(
                            f"sample {sid!r} of {str(gt)!r}: {k} has shape {a.shape}, i.e. "
                            f"{a.shape[0] if a.ndim == 3 else '?'} bands; TTSR takes 3 (or 1)")
                lr, hr = arrays["lr"], arrays["hr"]
                if hr.shape[1:] != (4 * lr.shape[1], 4 * lr.shape[2]):
                    raise GTReadError(f"sample {sid!r} of {str(gt)!r}: hr {hr.shape[1:]} is not "
                                      f"4x its lr {lr.shape[1:]}; reference pairs need scale 4")
                window = rows["window"][i] if "window" in rows else None
                samples.append(RefSample(
                    sample_id=sid, source_uri=str(rows["source_uri"][i]), gt=str(gt),
                    lr=lr, hr=hr, ref=arrays["ref"],
                    value_range=(float(rows["value_lo"][i]), float(rows["value_hi"][i])),
                    ref_kind=rows["ref_kind"][i] if "ref_kind" in rows else None,
                    window=tuple(int(v) for v in window) if window is not None else None))
                if limit is not None and len(samples) >= limit:
                    return samples
    return samples


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class TTSRTrainConfig:
    """Everything a TTSR-rec run needs; saved in each checkpoint's ``training`` metadata."""

    gt: tuple[str, ...]
    out: str
    steps: int = 1000
    batch_size: int = 9
    lr: float = 1e-4
    lr_lte: float = 1e-5
    num_res_blocks: str = "16+16+8+4"
    n_feats: int = 64
    threads: int | None = None
    save_every: int = 200
    log_every: int = 20
    seed: int = 0
    init: str | None = None
    vgg_weights: str | None = None
    augment: bool = True
    milestones: tuple[float, ...] = field(default_factory=tuple)
    gamma: float = 0.5

    def __post_init__(self) -> None:
        for k in ("steps", "batch_size", "save_every", "log_every", "n_feats"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if not self.lr > 0 or not self.lr_lte >= 0:
            raise ValueError(f"need lr > 0 and lr_lte >= 0, got {self.lr!r} and {self.lr_lte!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        bad = [m for m in self.milestones if not 0 < m < 1]
        if bad:
            raise ValueError(f"milestones are fractions of steps in (0, 1), got {bad}")
        parse_num_res_blocks(self.num_res_blocks)
        if not self.gt:
            raise ValueError("need at least one GT output")

    def milestone_steps(self) -> list[int]:
        return sorted({max(1, int(round(f * self.steps))) for f in self.milestones})



# ---------------------------------------------------------------------------------- training


def _build_model(cfg: TTSRTrainConfig) -> TTSR:
    torch.manual_seed(cfg.seed)
    return TTSR(num_res_blocks=cfg.num_res_blocks, n_feats=cfg.n_feats,
                vgg_weights=cfg.vgg_weights)


def _load_init(model: TTSR, path: str) -> None:
    src = load_checkpoint(path)
    if not isinstance(src, TTSR):
        raise ConfigError(f"--init {path!r} holds a {type(src).__name__}, not a TTSR model")
    if src.spec["args"]["num_res_blocks"] != model.spec["args"]["num_res_blocks"] or \
            src.n_feats != model.n_feats:
        raise ConfigError(
            f"--init {path!r} is a TTSR with num_res_blocks {src.spec['args']['num_res_blocks']} "
            f"and n_feats {src.n_feats}; this run builds {model.spec['args']['num_res_blocks']} "
            f"and {model.n_feats}")
    model.load_state_dict(src.state_dict(), strict=True)


def _arch(spec: dict[str, Any]) -> dict[str, Any]:
    args = spec.get("args", {})
    return {"name": spec.get("name"), "num_res_blocks": list(args.get("num_res_blocks", [])),
            "n_feats": args.get("n_feats"), "res_scale": args.get("res_scale")}


def _training_meta(cfg: TTSRTrainConfig, step: int, seconds: float) -> dict[str, Any]:
    return {"kind": "ttsr-rec", "step": step, "seconds": round(seconds, 3), "config": asdict(cfg)}


def _batches(samples: Sequence[RefSample], cfg: TTSRTrainConfig,
             rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    n = len(samples)
    while True:
        idx = rng.choice(n, size=cfg.batch_size, replace=n < cfg.batch_size)
        chosen = [samples[int(i)] for i in idx]
        yield ref_batch([s.lr for s in chosen], [s.hr for s in chosen], [s.ref for s in chosen],
                        [s.value_range for s in chosen], augment=cfg.augment, rng=rng)


def train_ttsr(cfg: TTSRTrainConfig, *, samples: Sequence[RefSample] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) TTSR-rec in ``cfg.out``; returns the JSON-ready summary.

    ``samples`` overrides reading ``cfg.gt`` (for tests and notebooks).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    try:
        make_run_folder(out, role="run folder (--out)")
    except FolderPathError as e:  # a PipelineError: the job reports it (exit 2)
        raise OutputNotWritableError(str(e)) from e
    model = _build_model(cfg)
    optimizers = make_ttsr_optimizers(model, lr=cfg.lr, lr_lte=cfg.lr_lte)
    sched = torch.optim.lr_scheduler.MultiStepLR(optimizers["generator"],
                                                 milestones=cfg.milestone_steps(), gamma=cfg.gamma)
    t = Training(model=model, optimizers=optimizers, schedulers={"generator": sched})
    rng = np.random.default_rng(cfg.seed)
    resumed = load_run(out, t, rng=rng)
    if not resumed and cfg.init:
        _load_init(model, cfg.init)
    if samples is None:
        samples = load_ref_samples(cfg.gt)
    if not samples:
        raise GTReadError(f"the GT outputs {list(cfg.gt)} hold no samples")
    kinds = sorted({s.ref_kind or "?" for s in samples})
    start = t.step
    log(f"{len(samples)} samples from {len(cfg.gt)} GT output(s), ref kinds {kinds}; "
        f"{'resuming at step ' + str(start) if start else 'starting'} -> {cfg.steps} steps, "
        f"batch {cfg.batch_size}, {sum(p.numel() for p in model.parameters())} parameters")

    def step_fn(m: torch.nn.Module, batch: Any) -> float:
        return ttsr_train_step(m, batch, optimizers, mode="rec")["loss"]

    def on_log(row: dict[str, Any]) -> None:
        write_metrics(t.history, out / METRICS_FILE)
        log(progress_line(None, cfg.steps, row))

    def on_save(row: dict[str, Any]) -> None:
        save_run(out, t, training=_training_meta(cfg, t.step, t.seconds), rng=rng)

    run = run_loop(t, step_fn, _batches(samples, cfg, rng), steps=cfg.steps,
                   log_every=cfg.log_every, save_every=cfg.save_every,
                   samples_per_step=cfg.batch_size, on_log=on_log, on_save=on_save)
    final = save_checkpoint(model, out / FINAL_FILE,
                            training=_training_meta(cfg, t.step, t.seconds))
    losses = run["losses"]
    last = losses[-1] if losses else math.nan
    return {"out": str(out), "final": str(final), "steps": t.step, "resumed_from": start,
            "samples": len(samples), "batch_size": cfg.batch_size,
            "last_loss": last if math.isfinite(last) else None, "seconds": round(t.seconds, 3),
            "samples_per_s": run["samples_per_s"]}
