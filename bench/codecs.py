"""Zarr v3 codecs for the output array, measured on real imagery (prints a table; never passes or
fails on time).

Every configuration ends with the CRC32C checksum codec, as our outputs do
(``compressors=(<codec>, Crc32cCodec())``), and is written as the output is: chunks
``(C, 256, 256)``, the whole array assigned at once, into an in-memory store (no disk in the
figures). Per configuration and image, best of ``--repeat``:

* ``enc MB/s/thread``: raw bytes / CPU seconds of this process (user + sys, every thread) while
  encoding, with zarr's codec pool limited to one worker (``threading.max_workers = 1``) and
  Blosc's internal threads off: the cost per core, what a Ray actor writing tiles pays;
* ``dec MB/s``: the same for reading the whole array back (one worker);
* ``ratio``: raw bytes / stored bytes (chunks with their checksums, plus < 1 kB of metadata).

Images (``--data``, default ../shared/data): uint8 = the real rasters (Landsat 7 RGB, Sentinel-2
TCI, NAIP RGBN; whole, 0.6-1.2 Mpx) and, with ``--sr ZARR``, a 4 Mpx crop of an upscaled output
(what the output codec really stores); uint16 = the 4-band reflectance raster of
``geo_more`` (values 488-2102) upscaled x4 bicubic on floats and rounded (1.1 Mpx, like an SR
output of 16-bit data); float32 = the same /10000 and the float32 DSM (x4 bicubic, 1.2 Mpx).

    nice -n 10 python bench/codecs.py --sr out/bench/naip_m_4709963_se_14_1_20100629_5m_x4.zarr
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
CHUNK = 256


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def configs() -> list[tuple[str, Any]]:
    """(label, compressor or None) for every configuration measured."""
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    out: list[tuple[str, Any]] = [("crc32c only (no compression)", None)]
    for level in (0, 1, 3, 5, 9):
        note = " (= zstd's default 3)" if level == 0 else ""
        out.append((f"zstd level {level}{note}", ZstdCodec(level=level)))
    for cname in ("lz4", "zstd"):
        for shuffle in (BloscShuffle.shuffle, BloscShuffle.bitshuffle):
            note = " (= zstd 9)" if cname == "zstd" else ""
            out.append((f"blosc {cname} clevel 5{note} {shuffle.value}",
                        BloscCodec(cname=cname, clevel=5, shuffle=shuffle)))
    # c-blosc maps its clevel c to zstd level 2c - 1 (c < 9): clevel 1 = zstd 1, 2 = zstd 3
    for clevel in (1, 2):
        out.append((f"blosc zstd clevel {clevel} (= zstd {2 * clevel - 1}) shuffle",
                    BloscCodec(cname="zstd", clevel=clevel, shuffle=BloscShuffle.shuffle)))
    return out


def bicubic_x4(arr: np.ndarray) -> np.ndarray:
    """(C, h, w) float -> (C, 4h, 4w) float64 (antialiased bicubic, as liif.resize)."""
    import torch

    from liif.resize import resize_bicubic

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    return resize_bicubic(t, (arr.shape[1] * 4, arr.shape[2] * 4)).numpy()


def images(data: Path, sr: str | None) -> list[tuple[str, np.ndarray]]:
    import rasterio

    out = []
    for name, rel in (("Landsat 7 RGB (uint8)", "geo/landsat7_RGB.byte.tif"),
                      ("Sentinel-2 TCI (uint8)", "geo/sentinel2_TCI_100m.tif"),
                      ("NAIP RGBN (uint8)", "geo/naip_m_4709963_se_14_1_20100629_5m.tif")):
        if (data / rel).exists():
            with rasterio.open(data / rel) as src:
                out.append((name, src.read()))
    if sr:
        from pipeline.io.zarr_output import ZarrOutput

        o = ZarrOutput(sr)
        _, h, w = o.shape
        r0, c0 = max(0, h // 2 - 1024), max(0, w // 2 - 1024)
        crop = o.read((r0, min(h, r0 + 2048)), (c0, min(w, c0 + 2048)))
        out.append((f"SR output crop {crop.shape[1]}x{crop.shape[2]} ({crop.dtype})", crop))
    refl = data / "geo_more/reflectance_float64_4band.tif"
    if refl.exists():
        with rasterio.open(refl) as src:
            up = bicubic_x4(src.read())
        out.append(("reflectance x4 (uint16)", np.clip(np.rint(up), 0, 65535).astype(np.uint16)))
        out.append(("reflectance x4 / 10000 (float32)", (up / 10000).astype(np.float32)))
    dsm = data / "geo_more/dsm_float32_nodata.tif"
    if dsm.exists():
        with rasterio.open(dsm) as src:
            a = src.read().astype(np.float64)
            nodata = src.nodata
        valid = a != nodata
        a[~valid] = a[valid].mean()
        out.append(("DSM x4 (float32)", bicubic_x4(a).astype(np.float32)))
    return out


def measure(img: np.ndarray, compressor: Any, repeat: int) -> dict[str, float]:
    import zarr
    from zarr.codecs import Crc32cCodec
    from zarr.storage import MemoryStore

    raw = img.nbytes
    best_enc = best_dec = float("inf")
    stored = 0
    for _ in range(repeat):
        store = MemoryStore()
        comps = (Crc32cCodec(),) if compressor is None else (compressor, Crc32cCodec())
        arr = zarr.create_array(store, shape=img.shape, dtype=img.dtype,
                                chunks=(img.shape[0], CHUNK, CHUNK), compressors=comps,
                                fill_value=0)
        c0 = cpu_seconds()
        arr[...] = img
        best_enc = min(best_enc, cpu_seconds() - c0)
        c0 = cpu_seconds()
        back = arr[...]
        best_dec = min(best_dec, cpu_seconds() - c0)
        assert np.array_equal(back, img, equal_nan=img.dtype.kind == "f")
        stored = arr.nbytes_stored()
    return {"enc_mb_s": raw / 1e6 / best_enc, "dec_mb_s": raw / 1e6 / best_dec,
            "ratio": raw / stored, "stored": stored, "raw": raw}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sr", help="an upscaled output (Zarr) to take a 2048x2048 crop of")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()

    import numcodecs
    import zarr

    numcodecs.blosc.use_threads = False
    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    data = Path(args.data)
    imgs = images(data, args.sr)
    if not imgs:
        sys.exit(f"no imagery found under {data} (see ../shared/data/MANIFEST.md)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}; chunks (C, {CHUNK}, "
          f"{CHUNK}); best of {args.repeat}; load average {load:.1f}; MB = 1e6 bytes")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, img in imgs:
        print(f"\n{name}: {img.shape[0]} x {img.shape[1]} x {img.shape[2]}, "
              f"{img.nbytes / 1e6:.1f} MB")
        print(f"  {'codec (+ crc32c)':44s} {'enc MB/s/thread':>15s} {'dec MB/s':>9s} {'ratio':>6s}")
        for label, comp in configs():
            r = measure(img, comp, args.repeat)
            results.setdefault(name, {})[label] = r
            print(f"  {label:44s} {r['enc_mb_s']:15.0f} {r['dec_mb_s']:9.0f} {r['ratio']:6.2f}",
                  flush=True)
    # one summary line per codec over all images: total raw / total stored, harmonic speeds
    print(f"\nall images together ({'total raw / total stored'}; speeds over the total bytes)")
    print(f"  {'codec (+ crc32c)':44s} {'enc MB/s/thread':>15s} {'dec MB/s':>9s} {'ratio':>6s}")
    for label, _ in configs():
        rows = [results[name][label] for name in results]
        raw = sum(r["raw"] for r in rows)
        enc = raw / 1e6 / sum(r["raw"] / 1e6 / r["enc_mb_s"] for r in rows)
        dec = raw / 1e6 / sum(r["raw"] / 1e6 / r["dec_mb_s"] for r in rows)
        print(f"  {label:44s} {enc:15.0f} {dec:9.0f} {raw / sum(r['stored'] for r in rows):6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
