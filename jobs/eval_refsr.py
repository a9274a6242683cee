"""``liif eval-refsr``: x4 bicubic vs LIIF vs TTSR (relevant and irrelevant reference) on held-out
reference GT outputs.

Examples::

    python -m jobs.eval_refsr --gt out/gt-ref-heldout --ttsr runs/ttsr-rec/final.safetensors
    python -m jobs.eval_refsr --gt out/heldout --ttsr ours=runs/a/final.safetensors \\
        official=TTSR-rec.pt --liif edsr-baseline-liif --limit 200 --json out/refsr.json

Per sample (LR, HR and reference mapped to [0, 1] with the sample's value range, clipped):

* ``bicubic``: :func:`liif.resize.resize_bicubic` x4 (``antialias=True``, i.e. PIL's a = -0.5
  cubic kernel, the MATLAB ``imresize`` kernel on upscaling), clamped to [0, 1];
* ``liif``: ``liif.upscale(model, lr, scale=4)`` with ``--liif`` (default: the bundled model);
* ``ttsr`` (each ``--ttsr``): ``reference_upscale`` with the sample's own reference
  (``ref``), and with an irrelevant one (``irrelevant ref``): the reference of the next sample
  in order (cyclically) whose ``source_uri`` differs; when every sample comes from one source,
  the next sample whose HR window does not overlap this one's (reported in the output), and
  only failing that any other sample (reported as overlapping).

Scores: Y-PSNR (:func:`liif.metrics.psnr`, shave 4) and Y-SSIM (:func:`liif.metrics.ssim_y`,
shave 4), means over the samples. Prints a markdown table (and one per ``ref_kind`` when both
kinds occur), writes ``--json`` if asked, and a progress line every ``--progress-every`` samples
to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from jobs.labels import parse_labelled
from jobs.train_ttsr import check_gt_dirs
from liif.errors import LiifError
from pipeline.io.jsontext import json_safe
from pipeline.io.zarr_output import CREATED_BY
from pipeline.refsr.evaluate import evaluate_refsr, load_ttsr, markdown_table
from pipeline.training.ttsr import GTReadError, load_ref_samples

__all__ = ["build_parser", "main", "parse_ttsr_args"]


def parse_ttsr_args(values: Sequence[str]) -> list[tuple[str, str]]:
    """``["PATH", "NAME=PATH", ...]`` -> ``[(name, path)]``; a bare path is named ``ttsr`` when
    alone, else after its file stem. Duplicate names raise ``ValueError``."""
    pairs = parse_labelled(values, flag="--ttsr", lone="ttsr")
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--ttsr names must be unique, got {dup} more than once")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif eval-refsr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", nargs="+", required=True, metavar="DIR",
                   help="held-out reference GT outputs (make_gt --reference ...)")
    p.add_argument("--ttsr", nargs="*", default=[], metavar="[NAME=]PATH",
                   help="TTSR checkpoints (ours or official .pt); several as NAME=PATH")
    p.add_argument("--liif", default="edsr-baseline-liif", metavar="MODEL",
                   help="LIIF checkpoint or bundled name (default: the bundled model)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N samples only")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report here")
    p.add_argument("--progress-every", type=int, default=10, metavar="N",
                   help="progress line to stderr every N samples (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    check_gt_dirs(p, a.gt)
    if a.limit is not None and a.limit < 1:
        p.error(f"--limit must be a positive integer, got {a.limit!r}")
    if a.progress_every < 0:
        p.error(f"--progress-every must be >= 0, got {a.progress_every!r}")
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads must be a positive integer, got {a.threads!r}")
        torch.set_num_threads(a.threads)
    from pipeline.io.atomic import check_target, exists
    from pipeline.io.locations import check_paths, model_files, resolve

    try:
        ttsr_paths = parse_ttsr_args(a.ttsr)
        check_paths({"--json": a.json}, {"--gt": a.gt, "--ttsr": [path for _, path in ttsr_paths],
                                         "--liif": model_files(a.liif)})
        if a.json and exists(resolve(a.json)):  # now, not after the evaluation: only our own
            check_target(resolve(a.json), overwrite=True, role="--json")  # report is replaced
    except (ValueError, LiifError) as e:
        p.error(str(e))
    from liif import load_model

    try:
        ttsr = [(name, load_ttsr(path)) for name, path in ttsr_paths]
        liif_model = load_model(a.liif)
        samples = load_ref_samples(a.gt)
        if not samples:
            raise GTReadError(f"the GT outputs {a.gt} hold no samples")
        report = evaluate_refsr(samples, ttsr=ttsr, liif_model=liif_model, limit=a.limit,
                                progress_every=a.progress_every)
    except LiifError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"gt": list(a.gt), "liif": a.liif, "ttsr": dict(ttsr_paths), **report}
    print(markdown_table(report["methods"], f"x4 on {report['samples']} samples"))
    for kind, table in report["by_ref_kind"].items():
        print()
        print(markdown_table(table, f"ref_kind = {kind}"))
    if ttsr:
        notes = ", ".join(f"{n} {how}" for how, n in report["irrelevant_reference"].items())
        print(f"\nirrelevant reference: {notes}")
        if any(how != "other source" for how in report["irrelevant_reference"]):
            print("note: not every sample has a reference from another source; the irrelevant "
                  "reference then comes from the same source (see the counts above)")
    if a.json:
        from pipeline.io.atomic import write_bytes
        from pipeline.io.locations import resolve

        write_bytes(resolve(a.json), json.dumps(
            json_safe({"created_by": CREATED_BY, **report}), indent=1).encode(),
                    make_parents=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
