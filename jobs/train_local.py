"""``liif train``: single-process LIIF training from a YAML config (the paper's recipe)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from liif.train import TrainConfig, check_init, psnr_model_on, train
from pipeline.io.locations import check_paths, model_files


def set5_validation(data_root: Path, scales=(2, 4), names=("bird", "butterfly", "head")):
    """A quick validation callable: mean Y-PSNR on a few Set5 images (None if data is absent)."""
    hr_dir = data_root / "benchmark" / "Set5" / "HR"
    if not hr_dir.is_dir():
        return None
    from liif.data import load_rgb
    from liif.evaluation import benchmark_pair

    pairs = [(*benchmark_pair(load_rgb(hr_dir / f"{n}.png"), s), s) for n in names for s in scales]

    def validate(model) -> dict[str, float]:
        return {f"set5_subset_x{'_'.join(map(str, scales))}": round(psnr_model_on(model, pairs), 3)}

    return validate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liif train", description=__doc__)
    p.add_argument("--config", required=True, help="YAML file with TrainConfig keys")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys (YAML values), e.g. steps=2000 amp=bf16")
    p.add_argument("--val-data", default=None, help="root of shared data for Set5 validation")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from these weights (bundled name or checkpoint path)")
    a = p.parse_args(argv)
    cfg_path = Path(a.config)
    if not cfg_path.is_file():
        p.error(f"config {a.config!r} does not exist")
    try:
        cfg = TrainConfig.from_yaml(cfg_path, a.set)
        if a.init is not None:
            cfg = dataclasses.replace(cfg, init=a.init)
        check_init(cfg)
        check_paths({"out_dir": cfg.out_dir},
                    {"--config": a.config, "data": list(cfg.data), "--val-data": a.val_data,
                     "--init": model_files(cfg.init)})
    except (TypeError, ValueError, FileNotFoundError) as e:
        p.error(str(e))
    validate = set5_validation(Path(a.val_data)) if a.val_data else None
    summary = train(cfg, validate=validate, log=lambda s: print(s, flush=True))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
