"""``liif train-ttsr``: in-process TTSR-rec training (L1 only, no Ray) on reference GT outputs.

Examples::

    python -m jobs.train_ttsr --gt out/gt-ref --out runs/ttsr-rec --steps 20000 --threads 2
    python -m jobs.train_ttsr --gt out/gt-a out/gt-b --out runs/ttsr-rec --steps 20000 \\
        --init TTSR-rec.pt --milestones 0.5 0.75 --no-augment

Reads every shard of each ``--gt`` output (``make_gt --reference ...``: columns ``lr``, ``hr``,
``ref`` and their shapes/dtypes, ``value_lo``/``value_hi``), holds the decoded samples in memory
and draws batches with a seeded generator (:func:`liif.ttsr.ref_batch`, the official TTSR
flip/rot90 augmentation unless ``--no-augment``). Optimisers as in the official script: Adam,
``--lr`` for the main network and ``--lr-lte`` for the texture extractor, both multiplied by
``--gamma`` at each ``--milestones`` fraction of ``--steps``.

RUN_DIR (``--out``) receives ``last.safetensors`` and ``state.pt`` (optimizer, step, generator
state) every ``--save-every`` steps, ``metrics.csv`` (step, loss, samples_per_s, seconds) every
``--log-every`` steps, and at the end ``final.safetensors`` and a JSON summary line on stdout.
Rerunning with the same ``--out`` resumes from ``state.pt`` (bit-identical to an uninterrupted
run); ``--steps`` may be raised to train further, the architecture may not change.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liif.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from liif.ttsr import TTSR, make_ttsr_optimizers, ref_batch, ttsr_train_step
from liif.ttsr.model import parse_num_res_blocks
from pipeline.io.locations import check_paths

__all__ = ["GTReadError", "RefSample", "ResumeError", "TTSRTrainConfig", "load_ref_samples",
           "main", "train_ttsr"]

REF_COLUMNS = ("ref", "ref_shape", "ref_dtype")
BASE_COLUMNS = ("sample_id", "source_uri", "hr", "hr_shape", "hr_dtype", "lr", "lr_shape",
                "lr_dtype", "value_lo", "value_hi")
OPTIONAL_COLUMNS = ("ref_kind", "ref_params", "window")
STATE_FILE = "state.pt"
LAST_FILE = "last.safetensors"
FINAL_FILE = "final.safetensors"
METRICS_FILE = "metrics.csv"
METRICS_FIELDS = ("step", "loss", "samples_per_s", "seconds")


class GTReadError(ValueError):
    """A ground-truth output that cannot feed TTSR training or evaluation."""


class ResumeError(ValueError):
    """A run directory whose saved state does not fit the requested run."""


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
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
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

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rates for the update after ``step`` updates."""
        return self.gamma ** sum(1 for m in self.milestone_steps() if step >= m)


# ---------------------------------------------------------------------------------- training


def _build_model(cfg: TTSRTrainConfig) -> TTSR:
    torch.manual_seed(cfg.seed)
    return TTSR(num_res_blocks=cfg.num_res_blocks, n_feats=cfg.n_feats,
                vgg_weights=cfg.vgg_weights)


def _load_init(model: TTSR, path: str) -> None:
    src = load_checkpoint(path)
    if not isinstance(src, TTSR):
        raise ResumeError(f"--init {path!r} holds a {type(src).__name__}, not a TTSR model")
    if src.spec["args"]["num_res_blocks"] != model.spec["args"]["num_res_blocks"] or \
            src.n_feats != model.n_feats:
        raise ResumeError(
            f"--init {path!r} is a TTSR with num_res_blocks {src.spec['args']['num_res_blocks']} "
            f"and n_feats {src.n_feats}; this run builds {model.spec['args']['num_res_blocks']} "
            f"and {model.n_feats}")
    model.load_state_dict(src.state_dict(), strict=True)


def _arch(spec: dict[str, Any]) -> dict[str, Any]:
    args = spec.get("args", {})
    return {"name": spec.get("name"), "num_res_blocks": list(args.get("num_res_blocks", [])),
            "n_feats": args.get("n_feats"), "res_scale": args.get("res_scale")}


def _resume(out: Path, model: TTSR, optimizers: dict[str, torch.optim.Optimizer],
            rng: np.random.Generator) -> tuple[int, float]:
    """Restore the state of ``out``; returns ``(step, seconds)`` (``(0, 0.0)`` when none)."""
    spath, wpath = out / STATE_FILE, out / LAST_FILE
    if not spath.exists():
        return 0, 0.0
    if not wpath.exists():
        raise ResumeError(f"{spath} exists but {wpath} does not; cannot resume")
    try:
        meta = read_metadata(wpath)
    except CheckpointError as e:
        raise ResumeError(f"cannot resume from {wpath}: {e}") from e
    if _arch(meta["spec"]) != _arch(model.spec):
        raise ResumeError(
            f"{out} holds a run of a different architecture ({_arch(meta['spec'])}); this run "
            f"asks for {_arch(model.spec)}: use another --out or the same architecture")
    state = torch.load(spath, map_location="cpu", weights_only=True)
    step = int(state["step"])
    saved = int(meta["training"].get("step", -1))
    if saved != step:
        raise ResumeError(f"{wpath} is at step {saved} but {spath} at step {step} (interrupted "
                          "while saving?); remove the newer file to resume from the older one")
    model.load_state_dict(load_checkpoint(wpath).state_dict(), strict=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    rng.bit_generator.state = json.loads(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return step, float(state.get("seconds", 0.0))


def _save(out: Path, model: TTSR, optimizers: dict[str, torch.optim.Optimizer],
          rng: np.random.Generator, step: int, seconds: float, cfg: TTSRTrainConfig) -> None:
    save_checkpoint(model, out / LAST_FILE, training=_training_meta(cfg, step, seconds))
    state = {"step": step, "seconds": seconds,
             "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
             "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def _training_meta(cfg: TTSRTrainConfig, step: int, seconds: float) -> dict[str, Any]:
    return {"kind": "ttsr-rec", "step": step, "seconds": round(seconds, 3), "config": asdict(cfg)}


def _open_metrics(path: Path, start: int) -> None:
    """Keep the rows up to ``start`` (a resumed run redoes the steps after its last save)."""
    rows: list[dict[str, str]] = []
    if path.exists() and start > 0:
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRICS_FIELDS)
        w.writeheader()
        w.writerows(rows)


def train_ttsr(cfg: TTSRTrainConfig, *, samples: Sequence[RefSample] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) TTSR-rec in ``cfg.out``; returns the JSON-ready summary.

    ``samples`` overrides reading ``cfg.gt`` (for tests and notebooks).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _build_model(cfg)
    optimizers = make_ttsr_optimizers(model, lr=cfg.lr, lr_lte=cfg.lr_lte)
    base_lrs = [g["lr"] for g in optimizers["generator"].param_groups]
    rng = np.random.default_rng(cfg.seed)
    start, prior_seconds = _resume(out, model, optimizers, rng)
    if start == 0 and cfg.init:
        _load_init(model, cfg.init)
    if samples is None:
        samples = load_ref_samples(cfg.gt)
    if not samples:
        raise GTReadError(f"the GT outputs {list(cfg.gt)} hold no samples")
    n = len(samples)
    kinds = sorted({s.ref_kind or "?" for s in samples})
    log(f"{n} samples from {len(cfg.gt)} GT output(s), ref kinds {kinds}; "
        f"{'resuming at step ' + str(start) if start else 'starting'} -> {cfg.steps} steps, "
        f"batch {cfg.batch_size}, {sum(p.numel() for p in model.parameters())} parameters")
    metrics = out / METRICS_FILE
    _open_metrics(metrics, start)
    step = start
    t0 = time.perf_counter()
    t_win, win_losses = t0, []
    last_loss = math.nan
    while step < cfg.steps:
        factor = cfg.lr_factor(step)
        for g, base in zip(optimizers["generator"].param_groups, base_lrs, strict=True):
            g["lr"] = base * factor
        idx = rng.choice(n, size=cfg.batch_size, replace=n < cfg.batch_size)
        chosen = [samples[int(i)] for i in idx]
        batch = ref_batch([s.lr for s in chosen], [s.hr for s in chosen],
                          [s.ref for s in chosen], [s.value_range for s in chosen],
                          augment=cfg.augment, rng=rng)
        last_loss = ttsr_train_step(model, batch, optimizers, mode="rec")["loss"]
        step += 1
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"the loss became {last_loss} at step {step}")
        win_losses.append(last_loss)
        seconds = prior_seconds + time.perf_counter() - t0
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            sps = len(win_losses) * cfg.batch_size / max(now - t_win, 1e-9)
            mean = float(np.mean(win_losses))
            with metrics.open("a", newline="") as fh:
                csv.writer(fh).writerow([step, f"{mean:.6g}", f"{sps:.4g}", f"{seconds:.3f}"])
            log(f"step {step}/{cfg.steps} loss {mean:.5f} lr {base_lrs[0] * factor:.3g} "
                f"{sps:.2f} samples/s {seconds:.1f}s")
            t_win, win_losses = now, []
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save(out, model, optimizers, rng, step, seconds, cfg)
    seconds = prior_seconds + time.perf_counter() - t0
    final = save_checkpoint(model, out / FINAL_FILE, training=_training_meta(cfg, step, seconds))
    run_steps = step - start
    run_seconds = time.perf_counter() - t0
    return {"out": str(out), "final": str(final), "steps": step, "resumed_from": start,
            "samples": n, "batch_size": cfg.batch_size,
            "last_loss": last_loss if math.isfinite(last_loss) else None,
            "seconds": round(seconds, 3),
            "samples_per_s": round(run_steps * cfg.batch_size / run_seconds, 3)
            if run_steps and run_seconds > 0 else None}


# --------------------------------------------------------------------------------------- CLI


def _checked(kind: type, ok: Any, what: str) -> Any:
    """An argparse ``type`` that converts with ``kind`` and requires ``ok(value)``."""

    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
        return v

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
_fraction = _checked(float, lambda v: 0 < v < 1, "a fraction of --steps in (0, 1)")


def _blocks(value: str) -> str:
    try:
        parse_num_res_blocks(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def check_gt_dirs(parser: argparse.ArgumentParser, dirs: Sequence[str]) -> None:
    """``parser.error`` (exit 2) for a local ``--gt`` directory that does not exist."""
    for d in dirs:
        if "://" not in d and not Path(d).is_dir():
            parser.error(f"--gt {d!r} does not exist or is not a directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif train-ttsr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", nargs="+", required=True, metavar="DIR",
                   help="reference GT outputs (make_gt --reference ...)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumable)")
    p.add_argument("--steps", type=_positive_int, default=1000)
    p.add_argument("--batch-size", type=_positive_int, default=9, help="official TTSR: 9")
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="main network learning rate")
    p.add_argument("--lr-lte", type=_non_negative_float, default=1e-5,
                   help="texture extractor (LTE) learning rate")
    p.add_argument("--num-res-blocks", type=_blocks, default="16+16+8+4")
    p.add_argument("--n-feats", type=_positive_int, default=64)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--save-every", type=_positive_int, default=200)
    p.add_argument("--log-every", type=_positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start weights: ours (.safetensors) or an official TTSR .pt")
    p.add_argument("--vgg-weights", default=None, metavar="PATH",
                   help="local torchvision VGG19 file initialising the LTE")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="official TTSR flips/rot90 (default on)")
    p.add_argument("--milestones", nargs="*", type=_fraction, default=[], metavar="FRAC",
                   help="fractions of --steps where the learning rates are multiplied by --gamma")
    p.add_argument("--gamma", type=_positive_float, default=0.5)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    check_gt_dirs(p, a.gt)
    for flag, path in (("--init", a.init), ("--vgg-weights", a.vgg_weights)):
        if path is not None and not Path(path).is_file():
            p.error(f"{flag} {path!r} is not a file")
    try:
        cfg = TTSRTrainConfig(
            gt=tuple(a.gt), out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
            lr_lte=a.lr_lte, num_res_blocks=a.num_res_blocks, n_feats=a.n_feats,
            threads=a.threads, save_every=a.save_every, log_every=a.log_every, seed=a.seed,
            init=a.init, vgg_weights=a.vgg_weights, augment=a.augment,
            milestones=tuple(a.milestones), gamma=a.gamma)
        check_paths({"--out": a.out}, {"--gt": a.gt, "--init": a.init,
                                      "--vgg-weights": a.vgg_weights})
    except ValueError as e:
        p.error(str(e))
    from pipeline.errors import PipelineError

    try:
        summary = train_ttsr(cfg, log=lambda s: print(s, flush=True))
    except (GTReadError, ResumeError, CheckpointError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
