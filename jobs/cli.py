"""The ``liif`` command: ``liif upscale | eval | train | make-gt | train-ttsr | eval-refsr``
(thin wrappers over the job modules)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"upscale": "jobs.upscale", "eval": "jobs.evaluate", "train": "jobs.train",
                "make-gt": "jobs.make_gt", "train-ttsr": "jobs.train_ttsr",
                "eval-refsr": "jobs.eval_refsr"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        bad = "" if not argv or argv[0] in ("-h", "--help") else f"unknown command {argv[0]!r}\n"
        sys.stderr.write(bad + "usage: liif {" + ",".join(commands) + "} [options]\n")
        return 0 if not bad and argv else 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
