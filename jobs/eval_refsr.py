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
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.train_ttsr import GTReadError, RefSample, check_gt_dirs, load_ref_samples
from liif.checkpoint import CheckpointError
from liif.ttsr.data import to_unit_chw

__all__ = ["irrelevant_references", "main", "markdown_table", "parse_ttsr_args"]


def parse_ttsr_args(values: Sequence[str]) -> list[tuple[str, str]]:
    """``["PATH", "NAME=PATH", ...]`` -> ``[(name, path)]``; a bare path is named ``ttsr`` when
    alone, else after its file stem. Duplicate names raise ``ValueError``."""
    pairs = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = ("ttsr" if len(values) == 1 else Path(v).stem), v
        if not name or not path:
            raise ValueError(f"--ttsr expects PATH or NAME=PATH, got {v!r}")
        pairs.append((name, path))
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--ttsr names must be unique, got {dup} more than once")
    return pairs


def _overlap(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool | None:
    if a is None or b is None:
        return None  # unknown
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def irrelevant_references(samples: Sequence[RefSample], n_eval: int
                          ) -> list[tuple[int | None, str]]:
    """For each of the first ``n_eval`` samples: ``(index of the sample whose reference is used,
    how it was chosen)``; how is ``"other source"``, ``"same source, disjoint window"``,
    ``"same source, overlapping window"`` or ``"none"`` (a single sample: index ``None``)."""
    n = len(samples)
    out: list[tuple[int | None, str]] = []
    for i in range(n_eval):
        order = [(i + k) % n for k in range(1, n)]
        j = next((j for j in order if samples[j].source_uri != samples[i].source_uri), None)
        if j is not None:
            out.append((j, "other source"))
            continue
        j = next((j for j in order if _overlap(samples[i].window, samples[j].window) is False),
                 None)
        if j is not None:
            out.append((j, "same source, disjoint window"))
        elif order:
            out.append((order[0], "same source, overlapping window"))
        else:
            out.append((None, "none"))
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    table = {}
    for m in methods:
        got = [r[m] for r in rows if m in r]
        table[m] = {"psnr": _mean([g["psnr"] for g in got]),
                    "ssim": _mean([g["ssim"] for g in got]), "n": len(got)}
    return table


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def markdown_table(summary: dict[str, dict[str, Any]], title: str | None = None) -> str:
    """``| method | PSNR | SSIM | n |`` rows from ``{method: {psnr, ssim, n}}``."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| method | PSNR (Y, dB) | SSIM (Y) | n |", "|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {_fmt(s['psnr'], 2)} | {_fmt(s['ssim'], 4)} | {s['n']} |")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def evaluate_refsr(samples: Sequence[RefSample], *, ttsr: Sequence[tuple[str, torch.nn.Module]],
                   liif_model: torch.nn.Module, limit: int | None = None,
                   progress_every: int = 10) -> dict[str, Any]:
    """Score every method on the first ``limit`` samples; returns the JSON-ready report."""
    from liif import upscale
    from liif.metrics import psnr, ssim_y
    from liif.resize import resize_bicubic
    from liif.ttsr import reference_upscale

    n_eval = len(samples) if limit is None else min(limit, len(samples))
    picks = irrelevant_references(samples, n_eval)
    methods = ["bicubic", "liif"]
    for name, _ in ttsr:
        methods += [f"{name} (ref)", f"{name} (irrelevant ref)"]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(n_eval):
        s = samples[i]
        lr = to_unit_chw(s.lr, s.value_range, f"lr of {s.sample_id}")
        hr = to_unit_chw(s.hr, s.value_range, f"hr of {s.sample_id}")
        ref = to_unit_chw(s.ref, s.value_range, f"ref of {s.sample_id}")
        size = (4 * lr.shape[1], 4 * lr.shape[2])
        srs = {"bicubic": resize_bicubic(lr, size).clamp(0.0, 1.0),
               "liif": upscale(liif_model, lr, scale=4)}
        j, how = picks[i]
        for name, model in ttsr:
            srs[f"{name} (ref)"] = reference_upscale(model, lr, ref)
            if j is not None:
                other = samples[j]
                ref_j = to_unit_chw(other.ref, other.value_range, f"ref of {other.sample_id}")
                srs[f"{name} (irrelevant ref)"] = reference_upscale(model, lr, ref_j)
        row: dict[str, Any] = {"sample_id": s.sample_id, "ref_kind": s.ref_kind,
                               "irrelevant_ref_from": None if j is None else samples[j].sample_id,
                               "irrelevant_ref_choice": how}
        for m, sr in srs.items():
            row[m] = {"psnr": psnr(sr, hr, scale=4), "ssim": ssim_y(sr, hr, shave=4)}
        rows.append(row)
        if progress_every and ((i + 1) % progress_every == 0 or i + 1 == n_eval):
            el = time.perf_counter() - t0
            print(f"{i + 1}/{n_eval} samples, {el:.1f}s ({(i + 1) / el:.2f} samples/s)",
                  file=sys.stderr, flush=True)
    kinds = sorted({r["ref_kind"] for r in rows if r["ref_kind"] is not None})
    by_kind = ({k: _summarise([r for r in rows if r["ref_kind"] == k], methods) for k in kinds}
               if len(kinds) > 1 else {})
    choices: dict[str, int] = {}
    for _, how in picks:
        choices[how] = choices.get(how, 0) + 1
    return {"samples": n_eval, "methods": _summarise(rows, methods), "by_ref_kind": by_kind,
            "irrelevant_reference": choices, "per_sample": rows}


def _load_ttsr(path: str) -> torch.nn.Module:
    from liif import load_model
    from liif.ttsr import TTSR

    model = load_model(path)
    if not isinstance(model, TTSR):
        raise CheckpointError(f"--ttsr {path!r} holds a {type(model).__name__}, not a TTSR model")
    return model


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
    from pipeline.io.locations import check_paths, model_files

    try:
        ttsr_paths = parse_ttsr_args(a.ttsr)
        check_paths({"--json": a.json}, {"--gt": a.gt, "--ttsr": [path for _, path in ttsr_paths],
                                         "--liif": model_files(a.liif)})
    except ValueError as e:
        p.error(str(e))
    from liif import load_model
    from pipeline.errors import PipelineError

    try:
        ttsr = [(name, _load_ttsr(path)) for name, path in ttsr_paths]
        liif_model = load_model(a.liif)
        samples = load_ref_samples(a.gt)
        if not samples:
            raise GTReadError(f"the GT outputs {a.gt} hold no samples")
        report = evaluate_refsr(samples, ttsr=ttsr, liif_model=liif_model, limit=a.limit,
                                progress_every=a.progress_every)
    except (GTReadError, CheckpointError, FileNotFoundError, PipelineError) as e:
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

        write_bytes(resolve(a.json), json.dumps(_json_safe(report), indent=1).encode(),
                    make_parents=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
