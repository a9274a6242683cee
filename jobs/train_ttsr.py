"""``liif train-ttsr``: TTSR-rec training (L1 only) on reference GT outputs, on the one training
loop (:mod:`pipeline.training.ttsr`, :mod:`liif.loop`); local backend (no Ray).

Examples::

    python -m jobs.train_ttsr --gt out/gt-ref --out runs/ttsr-rec --steps 20000 --threads 2
    python -m jobs.train_ttsr --gt out/gt-a out/gt-b --out runs/ttsr-rec --steps 20000 \\
        --init TTSR-rec.pt --milestones 0.5 0.75 --no-augment

RUN_DIR (``--out``) receives the run-folder layout of :mod:`liif.loop`: ``model.safetensors`` and
``trainer.pt`` every ``--save-every`` steps, ``metrics.csv`` (step, loss, lr, samples_per_s,
seconds) every ``--log-every`` steps, and at the end ``final.safetensors`` and a JSON summary line
on stdout. Rerunning with the same ``--out`` resumes (bit-identical to an uninterrupted run);
``--steps`` may be raised to train further, the architecture may not change.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liif.checkpoint import CheckpointError
from liif.ttsr.model import parse_num_res_blocks
from pipeline.io.jsontext import json_line
from pipeline.io.locations import check_paths
from pipeline.training.ttsr import GTReadError, TTSRTrainConfig, train_ttsr

__all__ = ["build_parser", "check_gt_dirs", "main"]


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
    except (GTReadError, CheckpointError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
