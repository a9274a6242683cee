"""Scoring reference-based SR: bicubic, LIIF and TTSR (relevant and irrelevant reference) on
reference GT samples, in Y-PSNR and Y-SSIM (shave 4)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from liif.checkpoint import CheckpointError
from liif.ttsr.data import to_unit_chw
from pipeline.training.ttsr import RefSample

__all__ = ["evaluate_refsr", "irrelevant_references", "load_ttsr", "markdown_table"]


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


def load_ttsr(path: str) -> torch.nn.Module:
    from liif import load_model
    from liif.ttsr import TTSR

    model = load_model(path)
    if not isinstance(model, TTSR):
        raise CheckpointError(f"--ttsr {path!r} holds a {type(model).__name__}, not a TTSR model")
    return model


