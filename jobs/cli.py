"""The ``liif`` command: one entry point for every job (``liif <command> --help`` for each)."""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

#: command -> (job module, one line on what it does)
COMMANDS = {
    "upscale": ("jobs.upscale", "super-resolve an image tile by tile (LIIF any scale; TTSR x4 "
                "with --reference) into Zarr or a COG"),
    "eval": ("jobs.evaluate", "benchmark table: Y-PSNR on Set5/Set14/B100 or on your rasters, "
             "vs bicubic"),
    "train": ("jobs.train", "train or fine-tune LIIF (--backend ray: Ray Train DDP; local: "
              "this process)"),
    "make-gt": ("jobs.make_gt", "cut resolution-varied (LR, HR) training pairs from rasters "
                "into Parquet shards"),
    "train-ttsr": ("jobs.train_ttsr", "train TTSR-rec (reference-based) on reference ground "
                   "truth"),
    "eval-refsr": ("jobs.eval_refsr", "score bicubic / LIIF / TTSR with relevant and "
                   "irrelevant references"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: liif <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'liif <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        sys.stderr.write(f"liif: unknown command {argv[0]!r}\n{usage()}\n")
        return 2
    return int(importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
