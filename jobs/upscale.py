"""Upscale a huge image with LIIF, tile by tile, on Ray (or in-process).

examples:
  liif upscale --input scene.tif --output scene_x4.zarr --scale 4
  liif upscale --input scene.tif --output scene_x4.tif --scale 4     # a COG, no Zarr kept
  liif upscale --input scene.tif --output scene.zarr --scale 2 4 8   # 3 sizes, one pass
  liif upscale --input s3://bucket/scene.tif --output s3://bucket/x4.zarr --scale 2.5 \\
      --workers 8 --gpus-per-worker 1 --cog x4.tif --preview x4.png
  liif upscale --input lr.tif --reference ref.tif --output sr.zarr --model TTSR.pt  # TTSR x4

The output format follows the name: *.zarr (or any other name) is a Zarr group, *.tif/*.tiff a
Cloud-Optimised GeoTIFF (written through a hidden working Zarr beside it, removed when the COG
is complete; --resume continues it). With no --input it runs the demo: a real sample image
bundled with scikit-image, upscaled x3.7 into ./out/ as Zarr plus a preview PNG. Ctrl-C stops
cleanly; rerun the same command with --resume to continue.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.io.jsontext import json_line

DEMO_SCALE = 3.7


def _parse_scale(text: str) -> float | tuple[float, float]:
    parts = text.replace("x", ",").split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"scale {text!r} is not a number or 'SY,SX' pair (e.g. 4, 2.7, 2,3.5)") from None
    if len(vals) == 1:
        return vals[0]
    if len(vals) == 2:
        return (vals[0], vals[1])
    raise argparse.ArgumentTypeError(f"scale {text!r} must be one number or two (SY,SX)")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be WIDTHxHEIGHT, e.g. 4000x3000") \
            from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return (h, w)


def _parse_json(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {e}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object")
    return v


def _parse_bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands {text!r} must be 0-based indices like 0,1,2") \
            from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="image URI: Zarr (v2/v3), GeoTIFF/COG, PNG/JPEG/TIFF; local or "
                   "fsspec (s3://, gs://, memory://, file://). Omit for the demo.")
    p.add_argument("--array-path", help="array inside a Zarr group")
    p.add_argument("--layout", default="auto", choices=["auto", "CHW", "HWC"])
    p.add_argument("--bands", type=_parse_bands, help="0-based bands to process, e.g. 0,1,2")
    p.add_argument("--storage-options", type=_parse_json, help="fsspec options (JSON) for input")
    p.add_argument("--output", help="output: a Zarr group (array 'image') or, for a name ending "
                   "in .tif/.tiff, a Cloud-Optimised GeoTIFF")
    p.add_argument("--output-storage-options", type=_parse_json)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scale", type=_parse_scale, nargs="+", metavar="S",
                   help="e.g. 4, 2.7, 0.5 or SY,SX like 2,3.5; several (--scale 2 4 8) render "
                   "every size from one encoder pass per tile: the largest is the group's "
                   "'image', the others scales/x<S>/image")
    g.add_argument("--size", type=_parse_size, nargs="+", metavar="WxH",
                   help="exact output size WIDTHxHEIGHT (several: as for --scale, under "
                   "scales/<W>x<H>/image)")
    p.add_argument("--model", default="edsr-baseline-liif",
                   help="checkpoint path (ours, or official LIIF .pth) or a bundled name")
    p.add_argument("--tile", type=int, help="output tile side (multiple of --chunk / --shard)")
    p.add_argument("--chunk", type=int, default=256, help="output Zarr chunk side (default 256)")
    p.add_argument("--shard", type=int, help="output Zarr shard side (multiple of --chunk)")
    p.add_argument("--overviews", type=_parse_levels, default=None, metavar="N|auto",
                   help="overview levels (block means, 1/2, 1/4, ...) written in the same pass "
                   "(default auto: down to about 512 px, as far as the tile size allows; 0: none)")
    p.add_argument("--value-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="input values mapped to [0, 1], e.g. 0 10000 for reflectance "
                   "(default: the dtype's range; 0..1 for floats)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="decode precision (default auto: bf16 where the hardware computes it "
                   "natively, i.e. AVX512-BF16/AMX CPUs or bf16 GPUs, else fp32)")
    p.add_argument("--executor", default="ray", choices=["ray", "in-process"])
    p.add_argument("--workers", type=int, default=None,
                   help="model actors (default: GPUs, else CPUs / threads-per-worker)")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("--tiles-in-flight", type=int, default=3, metavar="N",
                   help="tiles each worker holds at once: one computes while the others read "
                   "and write (default 3; 1 runs the stages one after another)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--resume", action="store_true", help="continue an interrupted output")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--max-output-pixels", type=_parse_count, default=None, metavar="N",
                   help="refuse larger outputs (default 4e9 = 4 Gpx; accepts 1e12, 10G, 4_000_000)")
    p.add_argument("--codec", default="auto", metavar="NAME[:LEVEL]",
                   help="Zarr compressor, always followed by a CRC32C checksum: auto (zstd for "
                   "8-bit data, blosc-zstd with byte shuffle for wider dtypes; chosen by "
                   "measurement), zstd, blosc-zstd, blosc-lz4, none; e.g. zstd:5")
    p.add_argument("--zarr-format", type=int, choices=[2, 3], default=3,
                   help="3 (default): Zarr v3 with GeoZarr attributes; 2: the layout GDAL 3.10 "
                   "opens with CRS, geotransform and nodata (x/y coordinates, _CRS; no --shard, "
                   "zstd only; GDAL reads no overviews from it)")
    p.add_argument("--cog", help="also export a Cloud-Optimised GeoTIFF to this path")
    p.add_argument("--cog-compress", default="deflate",
                   choices=["deflate", "zstd", "lzw", "lerc", "lerc_deflate", "lerc_zstd", "none"],
                   help="COG codec (default deflate, readable everywhere; zstd with --cog-level 1 "
                   "is ~2.6x faster at the same size; lerc for floats)")
    p.add_argument("--cog-level", type=int, default=None, help="COG codec level")
    p.add_argument("--cog-max-z-error", type=float, default=0.0,
                   help="LERC: largest error allowed (default 0 = lossless)")
    p.add_argument("--cog-threads", type=int, default=None,
                   help="GDAL compression threads for --cog (default: all CPUs)")
    p.add_argument("--preview", help="also write a downsampled PNG preview to this path")
    p.add_argument("--preview-size", type=int, default=1024, metavar="PX",
                   help="longer side of the --preview (default 1024)")
    p.add_argument("--compare", metavar="PNG",
                   help="also write a 1:1 crop of the output where the image has detail, beside "
                   "the bicubic upscale of the same input crop")
    p.add_argument("--compare-crop", type=int, default=512, metavar="PX",
                   help="side of the --compare crop in output pixels (default 512)")
    p.add_argument("--summary", help="also write the JSON summary to this file")
    p.add_argument("--no-progress", action="store_true")
    r = p.add_argument_group("reference-based x4 super-resolution (TTSR; scale fixed at 4)")
    r.add_argument("--reference", metavar="URI",
                   help="co-registered reference 4x finer than --input (Zarr, GeoTIFF, PNG...): "
                   "runs pipeline.refsr with a TTSR --model")
    r.add_argument("--ref-margin", type=_parse_margin, default=16, metavar="N|all",
                   help="LR pixels of reference searched around each tile (default 16; 'all': "
                   "the whole reference, equal to whole-image TTSR)")
    r.add_argument("--ref-bands", type=_parse_bands, help="0-based reference bands, e.g. 0,1,2")
    r.add_argument("--ref-value-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="reference values mapped to [0, 1] (default: its dtype's range)")
    r.add_argument("--ref-alignment", default="auto", choices=["auto", "georef", "pixel"],
                   help="georeferenced (both have transforms) or pixel grid x4 (default auto)")
    return p


def _parse_levels(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"overviews {text!r} must be 'auto' or 0..12") from None
    if not 0 <= v <= 12:
        raise argparse.ArgumentTypeError(f"overviews {text!r} must be 'auto' or 0..12")
    return v


def _parse_count(text: str) -> int:
    """A pixel count: ``1000000``, ``1_000_000``, ``1e12``, ``4G``, ``500M``, ``2.5k``."""
    t = text.strip().replace("_", "").replace(",", "")
    mult = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}.get(t[-1:].lower(), 1.0)
    if mult != 1.0:
        t = t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a pixel count (e.g. 4000000000, 4e9, 4G)") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1, got {value:g}")
    return int(value)


def _parse_margin(text: str) -> int | None:
    if text.strip().lower() in ("all", "global", "none"):
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ref margin {text!r} must be an integer >= 0 or 'all'") \
            from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"ref margin {text!r} must be an integer >= 0 or 'all'")
    return v


def _run_reference(parser: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    """``--reference``: reference-based x4 (pipeline.refsr) with the shared options."""

    if a.scale is not None and a.scale not in (4.0, (4.0, 4.0)):
        parser.error(f"--reference runs TTSR at a fixed x4; got --scale {a.scale}")
    if a.products:
        parser.error("--reference renders one output size (TTSR x4); give one --scale/--size")
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.refsr import RefSRConfig, run_refsr

    def build() -> RefSRConfig:
        return RefSRConfig(
            source=SourceSpec(a.input, array_path=a.array_path, layout=a.layout,
                              storage_options=a.storage_options, bands=a.bands),
            reference=SourceSpec(a.reference, layout=a.layout, storage_options=a.storage_options,
                                 bands=a.ref_bands),
            output=OutputSpec(a.output, a.output_storage_options), model=a.model,
            ref_margin=a.ref_margin, alignment=a.ref_alignment, size=a.size,
            ref_value_range=tuple(a.ref_value_range) if a.ref_value_range else None,
            **_common_options(a))

    return _run_and_report(a, build, run_refsr)


def demo_input(out_dir: Path) -> Path:
    """The bundled sample (scikit-image's astronaut photo) as a Zarr array in ``out_dir``."""
    import numpy as np
    import zarr
    from skimage import data

    path = out_dir / "astronaut.zarr"
    if not (path / "zarr.json").exists():
        img = np.ascontiguousarray(data.astronaut().transpose(2, 0, 1))  # (3, 512, 512) uint8
        arr = zarr.create_array(str(path), shape=img.shape, dtype=img.dtype,
                                chunks=(3, 256, 256), overwrite=True)
        arr[:] = img
    return path


def _default_workers(gpus_per_worker: float | None, threads: int | None) -> tuple[int, float]:
    import os

    try:
        import torch

        n_gpu = torch.cuda.device_count()
    except Exception:  # torch always imports here; be safe for odd installs
        n_gpu = 0
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if n_gpu else 0.0
    if gpus_per_worker:
        return max(1, int(n_gpu / gpus_per_worker)), gpus_per_worker
    return max(1, (os.cpu_count() or 1) // (threads or 1)), 0.0


def _common_options(a: argparse.Namespace) -> dict:
    """The tiling, value, executor and output options both jobs (LIIF and TTSR) take."""
    workers, gpus, threads = _resources(a)
    return dict(
        tile=a.tile, chunk=a.chunk, shard=a.shard,
        value_range=tuple(a.value_range) if a.value_range else None, precision=a.precision,
        executor=a.executor, workers=workers, gpus_per_worker=gpus, threads_per_worker=threads,
        ray_address=a.address, overwrite=a.overwrite, resume=a.resume,
        # 0 is an error, not "unset"
        **({} if a.max_output_pixels is None else {"max_output_pixels": a.max_output_pixels}),
        cog=a.cog, preview=a.preview, summary=a.summary, progress=not a.no_progress,
        depth=a.tiles_in_flight, working_output=a.working_output, overviews=a.overviews,
        codec=a.codec, zarr_format=a.zarr_format, cog_compress=a.cog_compress,
        cog_level=a.cog_level, cog_max_z_error=a.cog_max_z_error, cog_threads=a.cog_threads,
        preview_size=a.preview_size, compare=a.compare, compare_crop=a.compare_crop)


def _run_and_report(a: argparse.Namespace, build: Callable[[], Any],
                    run: Callable[[Any], dict[str, Any]]) -> int:
    """Build the config and run it; print the JSON summary (exit 0) or the error (exit 2).

    The job itself writes ``--summary`` (atomically, checked before any work)."""
    from liif.errors import LiifError

    try:
        summary = run(build())
    except LiifError as e:  # bad input: the message and exit 2; anything else is a bug
        sys.stderr.write(f"error: {e}\n")
        for note in getattr(e, "__notes__", ()):
            sys.stderr.write(f"  {note}\n")
        return 2
    except KeyboardInterrupt as e:
        notes = " ".join(getattr(e, "__notes__", ()))
        sys.stderr.write(f"\ninterrupted. {notes or 'Rerun the same command with --resume.'}\n")
        return 130
    print(json_line(summary))
    return 0


def _resources(a: argparse.Namespace) -> tuple[int, float, int | None]:
    """(workers, gpus per worker, threads per worker) from the flags and the visible hardware."""
    import os

    threads = a.threads_per_worker
    workers, gpus = _default_workers(a.gpus_per_worker, threads)
    if a.workers is not None:
        workers = a.workers
    if threads is None and not gpus:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    return workers, gpus, threads


def _choose_output_format(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``--output x.tif`` (or ``--cog`` alone) writes a COG through a hidden working Zarr beside
    it; other output names are Zarr; ``.png``/``.jpg`` outputs are refused with what to do."""
    a.working_output = False
    if a.output is None and a.cog is not None:
        a.output = a.cog
    if a.output is None:
        return
    low = a.output.rstrip("/").lower()
    if low.endswith((".png", ".jpg", ".jpeg", ".webp")):
        parser.error(f"--output {a.output!r}: the outputs are Zarr (.zarr) or a COG (.tif); for "
                     "a small PNG view use --preview")
    if low.endswith((".tif", ".tiff")):
        if a.cog is not None and a.cog != a.output:
            parser.error(f"--output {a.output!r} is already a GeoTIFF; drop --cog {a.cog!r} or "
                         "give --output a .zarr name")
        a.cog = a.output
        head, _, name = a.output.rstrip("/").rpartition("/")
        a.output = f"{head}/.{name}.zarr" if head or a.output.startswith("/") else f".{name}.zarr"
        a.working_output = True


def _check_job_paths(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Under ``ray job submit`` the entrypoint runs in an unpacked copy of ``--working-dir``:
    relative local paths would read that copy or write into it (lost when the job ends)."""
    import os

    env = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not env:
        return
    try:
        working_dir = json.loads(env).get("runtime_env", {}).get("working_dir")
    except ValueError:
        working_dir = None
    if not working_dir:
        return
    for flag in ("input", "output", "reference", "cog", "preview", "compare", "summary"):
        value = getattr(a, flag, None)
        if isinstance(value, str) and value and "://" not in value and not value.startswith(
                ("/", "~")):
            parser.error(
                f"--{flag} {value!r} is a relative path, but this runs under `ray job submit`, "
                f"inside an unpacked copy of --working-dir ({os.getcwd()}): relative paths read "
                "from or write into that temporary copy. Use an absolute path or a URL "
                "(s3://..., gs://...)")


def main(argv: list[str] | None = None) -> int:
    import os

    from pipeline.run.ray_executor import RAY_ENV_DEFAULTS

    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    parser = build_parser()
    a = parser.parse_args(argv)
    a.products = ()
    for name in ("scale", "size"):  # the first size; the others are further products
        values = getattr(a, name)
        if values:
            setattr(a, name, values[0])
            a.products = tuple(values[1:])
    demo = a.input is None
    if demo and a.reference is not None:
        parser.error("--reference needs --input (the demo has no reference)")
    if demo:
        if a.output is not None:
            parser.error("--output needs --input (without --input the demo writes to ./out/)")
        out_dir = Path("out")
        out_dir.mkdir(exist_ok=True)
        a.input = str(demo_input(out_dir))
        if a.scale is None and a.size is None:
            a.scale = DEMO_SCALE
        tag = f"x{a.scale:g}" if isinstance(a.scale, float) else (
            f"x{a.scale[0]:g}_{a.scale[1]:g}" if a.scale else f"{a.size[1]}x{a.size[0]}")
        a.output = str(out_dir / f"astronaut_{tag}.zarr")
        a.preview = a.preview or str(out_dir / f"astronaut_{tag}.preview.png")
        if not a.overwrite:
            a.resume = True  # re-running the demo continues/keeps the existing result
    _choose_output_format(parser, a)
    _check_job_paths(parser, a)
    if a.output is None:
        parser.error("--output is required with --input")
    if a.reference is not None:
        return _run_reference(parser, a)
    if a.scale is None and a.size is None:
        parser.error("give --scale or --size")

    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.upscale import UpscaleConfig, run_upscale

    def build() -> UpscaleConfig:
        return UpscaleConfig(
            source=SourceSpec(a.input, array_path=a.array_path, layout=a.layout,
                              storage_options=a.storage_options, bands=a.bands),
            output=OutputSpec(a.output, a.output_storage_options),
            scale=a.scale, size=a.size, model=a.model, products=a.products,
            **_common_options(a))

    return _run_and_report(a, build, run_upscale)


if __name__ == "__main__":
    raise SystemExit(main())
