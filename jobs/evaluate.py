"""``liif eval``: the official LIIF benchmark table (Set5 / Set14 / B100, x2..x12, Y-PSNR) for a
model against bicubic.

    python -m jobs.evaluate --model edsr-baseline-liif --data ../shared/data/benchmark \
        [--sets Set5 Set14 B100] [--scales 2 3 4 6 8 12] [--precision fp32] [--limit N] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liif eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="edsr-baseline-liif", help="checkpoint path or bundled name")
    p.add_argument("--data", default="../shared/data/benchmark",
                   help="folder holding <set>/HR/*.png (default ../shared/data/benchmark)")
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100"])
    p.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4, 6, 8, 12])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--limit", type=int, default=None, help="at most N images per set")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bicubic", action="store_true")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--json", help="also write the raw numbers as JSON here")
    a = p.parse_args(argv)
    import torch

    from liif import load_model
    from liif.evaluation import bicubic_upscale, evaluate_folder, format_table, model_method

    if a.threads:
        torch.set_num_threads(a.threads)
    bad = [s for s in a.scales if s < 1]
    if bad:
        p.error(f"scales {bad} must be >= 1")
    data = Path(a.data)
    missing = [s for s in a.sets if not (data / s / "HR").is_dir()]
    if missing:
        sys.stderr.write(f"error: no HR folder for {missing} under {str(data)!r}\n")
        return 2
    try:
        model = load_model(a.model)
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    methods = {"liif": model_method(model, precision=a.precision)}
    if not a.no_bicubic:
        methods = {"bicubic": bicubic_upscale, **methods}
    results, t0 = {}, time.time()
    for s in a.sets:
        results[s] = evaluate_folder(data / s / "HR", a.scales, methods, limit=a.limit,
                                     progress=lambda m: print(m, file=sys.stderr, flush=True))
    table = format_table(results, a.scales)
    print(table)
    print(f"({time.time() - t0:.0f} s, model {a.model}, precision {a.precision})", file=sys.stderr)
    if a.out:
        Path(a.out).write_text(table + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "precision": a.precision,
                                            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
