"""Gigapixel, for real: the engine's I/O path at >= 1 Gpx of output. Prints figures, never
passes or fails on time.

Input: a (3, h, w) uint8 Zarr v3 mosaic of real rasters of ``../shared/data/geo`` (704 px
crops of valid pixels of the Sentinel-2 TCI and the NAIP RGB bands, each placement flipped
differently), written block by block (one chunk row, a few chunks wide), never whole in
memory. The job is the engine with its test double
(:class:`pipeline.run.doubles.NullTileWorker`, a near-free model: the output tile is the
input's corner upsampled by nearest neighbour), so everything but the model is the real engine:
reads, fill checks, digests, chunked zstd + CRC32C writes, manifest records.

Each job runs in a fresh child process (``--_child``), so its peak RSS is that job's alone:
the child's own ``VmHWM`` (after the job; and after its imports, before the job) and the whole
process tree's RSS sampled from /proc every 0.5 s (Ray's processes, when ``--ray``). Not
``wait4``'s ``ru_maxrss``: Linux carries the forking parent's high-water mark across exec into
it, so it reads max(this script's own RSS, the child's). Figures:

1. ``--out-mpx`` (default 1000) output Mpx at ``--scale`` (default 2) and a ``--small-mpx``
   (16) comparison, in-process executor: Mpx/s end to end, the summary's ``stage_seconds``,
   output bytes on disk (and per pixel), peak RSS, and the big/small peak RSS ratio
   (target: within 1.2x);
2. input and output on S3 (a moto server on 127.0.0.1, fsspec ``storage_options``) at
   ``--s3-mpx`` (256) and ``--small-mpx``: Mpx/s, MiB/s moved (stored bytes read + written),
   peak RSS against the raw output size;
3. ``--ray``: the sizes of 1 with 2 Ray CPU actors (driver and actor peaks).

``--quick`` (16 and 4 Mpx, S3 at 8 and 4 Mpx) checks that the script works in well under a minute.
Figures also go to ``out/bench/gigapixel.txt``.

    python bench/gigapixel.py --quick
    python bench/gigapixel.py                     # 1 Gpx + 16 Mpx + S3 256 Mpx
    python bench/gigapixel.py --ray --no-s3       # add the Ray runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEO = Path(os.environ.get("LIIF_SHARED_DATA", ROOT.parent / "shared" / "data")) / "geo"
#: (file, rows, cols) crops of valid pixels (the Sentinel-2 tile's left third and the Landsat
#: scene's corners are nodata 0): 704 x 704 each
CELLS = (("naip_m_4709963_se_14_1_20100629_5m.tif", (0, 704), (0, 704)),
         ("sentinel2_TCI_100m.tif", (0, 704), (394, 1098)),
         ("naip_m_4709963_se_14_1_20100629_5m.tif", (19, 723), (230, 934)),
         ("sentinel2_TCI_100m.tif", (394, 1098), (394, 1098)))
REPORT = ROOT / "out" / "bench" / "gigapixel.txt"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
RESULT_TAG = "GIGAPIXEL_RESULT "
START_TAG = "GIGAPIXEL_START"
MiB = 2**20


# ------------------------------------------------------------------------------ the input


def load_variants(geo: Path = GEO) -> list[np.ndarray]:
    """The :data:`CELLS` crops (RGB), each in 4 flips: 16 (3, 704, 704) uint8 arrays."""
    import rasterio

    out = []
    for name, (r0, r1), (c0, c1) in CELLS:
        with rasterio.open(geo / name) as ds:
            cell = ds.read([1, 2, 3])[:, r0:r1, c0:c1]
        out += [np.ascontiguousarray(v) for v in
                (cell, cell[:, ::-1], cell[:, :, ::-1], cell[:, ::-1, ::-1])]
    return out


def mosaic_block(variants: list[np.ndarray], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows [r0, r1) and cols [c0, c1) of the endless mosaic: cell (i, j) is crop
    ``(i + j) % 4`` in flip ``(i // 4 + 2 * (j // 4)) % 4``, so neighbours always differ."""
    th, tw = variants[0].shape[1:]
    n = len(variants) // 4
    block = np.empty((3, r1 - r0, c1 - c0), dtype=np.uint8)
    for i in range(r0 // th, (r1 - 1) // th + 1):
        for j in range(c0 // tw, (c1 - 1) // tw + 1):
            cell = variants[((i + j) % n) * 4 + (i // 4 + 2 * (j // 4)) % 4]
            y0, y1 = max(r0, i * th), min(r1, (i + 1) * th)
            x0, x1 = max(c0, j * tw), min(c1, (j + 1) * tw)
            block[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] = cell[:, y0 - i * th:y1 - i * th,
                                                              x0 - j * tw:x1 - j * tw]
    return block


def build_input(uri: str, shape: tuple[int, int], *, chunk: int = 512, wide: int = 8,
                storage_options: dict[str, Any] | None = None,
                variants: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Write the (3, h, w) uint8 mosaic to a Zarr v3 array at ``uri`` block by block (one chunk
    row x ``wide`` chunks: ``3 * chunk * chunk * wide`` bytes in memory); its timings."""
    import zarr

    variants = variants if variants is not None else load_variants()
    h, w = shape
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"storage_options": storage_options} if storage_options else {}
    arr = zarr.create_array(uri, shape=(3, h, w), dtype="uint8", chunks=(3, chunk, chunk),
                            dimension_names=("band", "y", "x"), overwrite=True, **kw)
    step = chunk * wide
    for r0 in range(0, h, chunk):
        r1 = min(h, r0 + chunk)
        for c0 in range(0, w, step):
            c1 = min(w, c0 + step)
            arr[:, r0:r1, c0:c1] = mosaic_block(variants, r0, r1, c0, c1)
    return {"uri": uri, "shape": [3, h, w], "seconds": time.perf_counter() - t0}


def sides(out_mpx: float, scale: int) -> tuple[int, int]:
    """``(input side, output side)`` of a square job with at least ``out_mpx`` output Mpx."""
    side = math.ceil(math.sqrt(out_mpx * 1e6) / scale)
    return side, side * scale


# ------------------------------------------------------------------------------ memory


def vm_kib(pid: int | str, field: str) -> int | None:
    """``VmHWM`` / ``VmRSS`` (KiB) of ``pid`` from /proc, or None (gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/*/stat parent ids)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            parent[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


class TreeSampler:
    """Samples the RSS of a process tree every ``interval`` s: peak total and, per process,
    peak RSS (and last VmHWM) with its command name."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.peak_total_kib = 0
        self.timeline: list[tuple[float, int]] = []  # (seconds, RSS KiB of the root)
        self._t0 = time.perf_counter()
        self.job_t0 = 0.0
        self.procs: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def start_job(self) -> None:
        """Mark the start of the job (after the child's imports)."""
        self.job_t0 = time.perf_counter() - self._t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = 0
        for pid in _descendants(self.root):
            rss, hwm = vm_kib(pid, "VmRSS"), vm_kib(pid, "VmHWM")
            if rss is None:
                continue
            total += rss
            if pid == self.root:
                self.timeline.append((time.perf_counter() - self._t0, rss))
            info = self.procs.setdefault(pid, {"name": _comm(pid), "peak_rss_kib": 0})
            if info["name"].startswith("ray::IDLE"):  # an actor process not yet named
                info["name"] = _comm(pid)
            info["peak_rss_kib"] = max(info["peak_rss_kib"], rss)
            info["hwm_kib"] = max(info.get("hwm_kib", 0), hwm or 0)
        self.peak_total_kib = max(self.peak_total_kib, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _comm(pid: int) -> str:
    """A short name: ``comm`` (Ray sets ``ray::<Actor>``) and the script or module run."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            comm = fh.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = [x.decode(errors="replace") for x in fh.read().split(b"\0") if x]
    except OSError:
        return "?"
    script = next((os.path.basename(x) for x in args[1:] if not x.startswith("-")), "")
    return f"{comm} {script}".strip()[:48]


# ------------------------------------------------------------------------------ one job


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one null-model job as ``spec`` says, in this process; the result record."""
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.run.doubles import NULL_FAMILY, NullConfig
    from pipeline.run.engine import run_job
    from pipeline.run.executors import make_executor

    actor_hwm: list[int | None] = []
    held: dict[str, int] = {}

    def measured(cfg: Any, job: Any, worker_cls: type) -> Any:
        ex = make_executor(cfg, job, worker_cls)
        run = ex.run

        def run_measured(*args: Any, **kw: Any) -> list[dict[str, Any]]:
            records = run(*args, **kw)
            held.update(records=len(records), bytes=deep_size(records))
            return records

        ex.run = run_measured
        if not hasattr(ex, "pids"):
            return ex
        close = ex.close

        def close_measured() -> None:
            actor_hwm.extend(vm_kib(pid, "VmHWM") for pid in ex.pids())
            close()

        ex.close = close_measured
        return ex

    cfg = NullConfig(source=SourceSpec(spec["src"], storage_options=spec.get("so")),
                     output=OutputSpec(spec["out"], storage_options=spec.get("so")),
                     scale=spec["scale"], tile=spec.get("tile"), chunk=spec.get("chunk", 256),
                     shard=spec.get("shard"), executor=spec["executor"],
                     workers=spec.get("workers", 1), depth=spec.get("depth", 3),
                     overwrite=True, progress=spec.get("progress", True))
    if spec["executor"] == "ray":
        from pipeline.run.ray_executor import ensure_ray

        ensure_ray(num_cpus=spec.get("workers", 1))
    import torch  # noqa: F401 - the worker imports it: count it in the baseline
    import zarr  # noqa: F401

    if spec.get("so"):
        import s3fs  # noqa: F401
    hwm0 = vm_kib("self", "VmHWM")
    print(START_TAG, flush=True)  # the parent's RSS timeline starts here
    t0 = time.perf_counter()
    summary = run_job(cfg, NULL_FAMILY, executor_factory=measured)
    wall = time.perf_counter() - t0
    return {"summary": summary, "wall_s": wall, "driver_hwm_kib": vm_kib("self", "VmHWM"),
            "driver_hwm_before_job_kib": hwm0, "actor_hwm_kib": actor_hwm,
            "records_held": held}


def deep_size(obj: Any) -> int:
    """Bytes of ``obj`` and everything it holds (dicts, lists, tuples, strings, numbers)."""
    seen: set[int] = set()
    stack, total = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, list | tuple | set):
            stack += list(o)
    return total


def run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``child(spec)`` in a fresh interpreter: its record plus the process wall
    time and the sampled process tree."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **(env or {})},
                            cwd=str(ROOT))
    sampler = TreeSampler(proc.pid)
    assert proc.stdout is not None
    lines = []
    for raw in proc.stdout:
        lines.append(raw.decode())
        if lines[-1].startswith(START_TAG):
            sampler.start_job()
    sampler.stop()
    text = "".join(lines)
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {text[-2000:]}")
    line = next(x for x in text.splitlines() if x.startswith(RESULT_TAG))
    rec = json.loads(line[len(RESULT_TAG):])
    line, t_start = sampler.timeline, sampler.job_t0
    span = line[-1][0] - t_start if line else 0.0
    quarters = [max((r for t, r in line if t_start <= t <= t_start + q * span), default=None)
                for q in (0.25, 0.5, 0.75, 1.0)] if line else []
    rec.update(process_wall_s=time.perf_counter() - t0, driver_rss_quarters_kib=quarters,
               tree_peak_total_kib=sampler.peak_total_kib,
               tree=sorted(sampler.procs.values(), key=lambda p: -p["peak_rss_kib"]))
    return rec


# ------------------------------------------------------------------------------ storage


def local_bytes(path: Path) -> dict[str, int]:
    """Files, apparent bytes and allocated bytes under ``path``, and the image array's share."""
    out = {"files": 0, "bytes": 0, "disk_bytes": 0, "image_bytes": 0, "manifest_files": 0}
    for dirpath, _, names in os.walk(path):
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            out["files"] += 1
            out["bytes"] += st.st_size
            out["disk_bytes"] += st.st_blocks * 512
            rel = os.path.relpath(dirpath, path)
            if rel == "image" or rel.startswith("image" + os.sep):
                out["image_bytes"] += st.st_size
            elif rel.startswith("_manifest") and n != "zarr.json":
                out["manifest_files"] += 1
    return out


def s3_bytes(fs: Any, path: str) -> dict[str, int]:
    """Objects, bytes and the image array's share under ``bucket/prefix``."""
    found = fs.find(path, detail=True)
    image = [v["size"] for k, v in found.items() if k.startswith(f"{path}/image/")]
    manifest = [k for k in found if k.startswith(f"{path}/_manifest/")
                and not k.endswith("zarr.json")]
    return {"files": len(found), "bytes": sum(v["size"] for v in found.values()),
            "image_bytes": sum(image), "manifest_files": len(manifest)}


# ------------------------------------------------------------------------------ report


class Report:
    """Prints lines and keeps them for ``out/bench/gigapixel.txt``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path = REPORT) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")


def cpu_lines() -> list[str]:
    """The CPU model (lscpu), core count, torch's CPU capability and the load average."""
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        have = set(text.split("flags", 1)[1].split("\n", 1)[0].split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except (OSError, IndexError):
        pass
    import torch

    return [f"CPU: {model}, {os.cpu_count()} cores ({flags}); torch {torch.__version__} "
            f"capability {torch.backends.cpu.get_cpu_capability()}; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:,.0f} MiB"


def describe(rec: dict[str, Any], stored: dict[str, int], say: Callable[[str], None],
             label: str) -> None:
    """The figures of one job."""
    s = rec["summary"]
    H, W = s["out_shape"]
    mpx = H * W / 1e6
    raw = H * W * s["bands"]
    say(f"-- {label}: {s['in_shape'][1]} x {s['in_shape'][0]} -> {W} x {H} x {s['bands']} "
        f"({mpx:,.1f} Mpx, {raw / 1e9:.2f} GB raw), {s['tiles']} tiles of {s['tile']}, "
        f"{s['executor']} x{s['workers']}, {s['tiles_in_flight_per_worker']} in flight")
    say(f"   end to end (run_job) {rec['wall_s']:8.1f} s  {mpx / rec['wall_s']:7.2f} Mpx/s  "
        f"{raw / MiB / rec['wall_s']:7.1f} MiB/s raw out;  tiles phase {s['seconds']:.1f} s "
        f"{s['mpx_per_s']:.2f} Mpx/s;  child process {rec['process_wall_s']:.1f} s")
    say(f"   stage_seconds (summed over tiles) {s['stage_seconds']}")
    say(f"   output {stored['bytes']:,} B in {stored['files']:,} files "
        f"({stored['bytes'] / (H * W):.3f} B/px, {stored['bytes'] / raw:.3f} of raw); image "
        f"array {stored['image_bytes']:,} B ({stored['image_bytes'] / (H * W):.3f} B/px); "
        f"{stored['manifest_files']:,} manifest records"
        + (f"; {stored['disk_bytes']:,} B allocated" if "disk_bytes" in stored else ""))
    say(f"   peak RSS driver: VmHWM {mib(rec['driver_hwm_kib'])} (after imports, before the "
        f"job {mib(rec['driver_hwm_before_job_kib'])}: the job added "
        f"{mib(rec['driver_hwm_kib'] - rec['driver_hwm_before_job_kib'])}); process tree "
        f"total (sampled) {mib(rec['tree_peak_total_kib'])}; driver max RSS by 1/4, 2/4, "
        f"3/4, 4/4 of the run: {', '.join(mib(k) for k in rec['driver_rss_quarters_kib'])}")
    held = rec.get("records_held") or {}
    if held:
        say(f"   tile records the driver holds until the summary: {held['records']:,} records, "
            f"{held['bytes'] / MiB:.1f} MiB ({held['bytes'] / max(1, held['records']):,.0f} B "
            "each: grows with the tile count)")
    if rec["actor_hwm_kib"]:
        say(f"   peak RSS actors: {', '.join(mib(k) for k in rec['actor_hwm_kib'])}")
    if len(rec["tree"]) > 1:
        say(f"   tree ({len(rec['tree'])} processes, peak RSS): " + "; ".join(
            f"{p['name']} {mib(p['peak_rss_kib'])}" for p in rec["tree"][:8]))


def compare(big: dict[str, Any], small: dict[str, Any], say: Callable[[str], None]) -> None:
    """Peak-RSS ratios big / small (target: within 1.2x)."""
    mb, ms = (r["summary"]["output_mpx"] for r in (big, small))
    pairs = [("driver VmHWM", big["driver_hwm_kib"], small["driver_hwm_kib"]),
             ("driver VmHWM minus its import baseline",
              big["driver_hwm_kib"] - big["driver_hwm_before_job_kib"],
              small["driver_hwm_kib"] - small["driver_hwm_before_job_kib"])]
    if len(big["tree"]) > 1:  # one process: its VmHWM is exact, 0.5 s samples miss peaks
        pairs.append(("process tree (sampled)", big["tree_peak_total_kib"],
                      small["tree_peak_total_kib"]))
    if big["actor_hwm_kib"] and small["actor_hwm_kib"]:
        pairs.append(("max actor", max(big["actor_hwm_kib"]), max(small["actor_hwm_kib"])))
    for name, b, s in pairs:
        if b and s:
            say(f"   ratio {mb:,.0f} / {ms:,.0f} Mpx, {name}: {b / s:.3f}x (target <= 1.2)")
    say(f"   throughput ratio: {(mb / big['wall_s']) / (ms / small['wall_s']):.2f}x "
        "(big Mpx/s / small Mpx/s)")


# ------------------------------------------------------------------------------ sections


def codec_reference(variants: list[np.ndarray], scale: int, chunk: int,
                    say: Callable[[str], None]) -> None:
    """Bytes per pixel of the output codec (zstd 3) on a 1024 px block of the input, as is,
    upsampled by nearest neighbour (what the null model writes) and by bicubic (closer to a
    real model's smooth output): the null run's footprint against a real run's."""
    import numcodecs
    import torch

    zstd = numcodecs.Zstd(level=3)
    block = mosaic_block(variants, 1000, 2024, 3000, 4024)

    def bpp(img: np.ndarray) -> float:
        _, h, w = img.shape
        size = sum(len(zstd.encode(np.ascontiguousarray(img[:, r:r + chunk, c:c + chunk])))
                   for r in range(0, h, chunk) for c in range(0, w, chunk))
        return size / (h * w)

    near = block.repeat(scale, 1).repeat(scale, 2)
    t = torch.from_numpy(block).float()[None]
    bic = torch.nn.functional.interpolate(t, scale_factor=scale, mode="bicubic",
                                          align_corners=False)
    bic8 = bic[0].round().clamp(0, 255).to(torch.uint8).numpy()
    say(f"codec reference (zstd 3, chunk {chunk}, 3 bands, B per pixel): input {bpp(block):.3f}"
        f", nearest x{scale} {bpp(near):.3f}, bicubic x{scale} {bpp(bic8):.3f} (raw 3.000)")


def section_local(a: argparse.Namespace, work: Path, variants: list[np.ndarray],
                  say: Callable[[str], None], executor: str = "in-process",
                  workers: int = 1) -> None:
    """The big and the small job on local disk."""
    title = "in-process executor" if executor == "in-process" else f"Ray, {workers} actors"
    say(f"\n== local disk, {title}, x{a.scale}, chunk {a.chunk}")
    recs = {}
    for label, mpx in (("small", a.small_mpx), ("big", a.out_mpx)):
        in_side, _ = sides(mpx, a.scale)
        src = work / f"in_{in_side}.zarr"
        if not src.exists():
            b = build_input(str(src), (in_side, in_side), chunk=a.in_chunk, variants=variants)
            st = local_bytes(src)
            say(f"   input {in_side} x {in_side} x 3 built block by block in "
                f"{b['seconds']:.1f} s: {st['bytes']:,} B ({st['bytes'] / in_side ** 2:.3f} B/px)")
        out = work / f"out_{label}.zarr"
        spec = {"src": str(src), "out": str(out), "scale": a.scale, "tile": a.tile,
                "chunk": a.chunk, "executor": executor, "workers": workers, "depth": a.depth}
        rec = run_child(spec, RAY_ENV if executor == "ray" else None)
        describe(rec, local_bytes(out), say, f"{label} ({mpx:g} Mpx asked)")
        recs[label] = rec
        shutil.rmtree(out, ignore_errors=True)
    compare(recs["big"], recs["small"], say)


def section_s3(a: argparse.Namespace, variants: list[np.ndarray],
               say: Callable[[str], None]) -> None:
    """Input and output on a moto S3 server on loopback (this process hosts it; the job runs
    in the child, so moto's in-memory objects are not in the job's RSS)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    for k, v in S3_ENV.items():
        os.environ.setdefault(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        import s3fs

        host, port = server.get_host_and_port()
        so = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**so)
        fs.mkdir("gigapixel")
        say(f"\n== S3 (moto server on {host}:{port}): input and output s3://gigapixel/..., "
            f"in-process executor, x{a.scale}, chunk {a.chunk}")
        recs = {}
        for label, mpx in (("small", a.small_mpx), ("big", a.s3_mpx)):
            in_side, _ = sides(mpx, a.scale)
            src = f"s3://gigapixel/in_{in_side}.zarr"
            b = build_input(src, (in_side, in_side), chunk=a.in_chunk, storage_options=so,
                            variants=variants)
            st_in = s3_bytes(fs, src[5:])
            say(f"   input {in_side} x {in_side} x 3 uploaded block by block in "
                f"{b['seconds']:.1f} s: {st_in['bytes']:,} B in {st_in['files']} objects "
                f"({st_in['bytes'] / MiB / b['seconds']:.1f} MiB/s)")
            out = f"s3://gigapixel/out_{label}.zarr"
            spec = {"src": src, "out": out, "so": so, "scale": a.scale, "tile": a.tile,
                    "chunk": a.chunk, "executor": "in-process", "depth": a.depth}
            rec = run_child(spec, S3_ENV)
            st = s3_bytes(fs, out[5:])
            describe(rec, st, say, f"S3 {label} ({mpx:g} Mpx asked)")
            moved = st_in["bytes"] + st["bytes"]
            raw = rec["summary"]["output_mpx"] * 1e6 * rec["summary"]["bands"]
            say(f"   moved {moved / MiB:,.1f} MiB (input objects read + output objects written):"
                f" {moved / MiB / rec['wall_s']:.1f} MiB/s; raw output {raw / MiB:,.0f} MiB vs "
                f"driver peak {mib(rec['driver_hwm_kib'])}")
            recs[label] = rec
            fs.rm(out[5:], recursive=True)
            fs.rm(src[5:], recursive=True)
        compare(recs["big"], recs["small"], say)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-mpx", type=float, default=1000.0, help="big job's output Mpx")
    p.add_argument("--small-mpx", type=float, default=16.0, help="comparison job's output Mpx")
    p.add_argument("--s3-mpx", type=float, default=256.0, help="S3 job's output Mpx")
    p.add_argument("--scale", type=int, default=2, help="integer scale (the null model's)")
    p.add_argument("--chunk", type=int, default=256, help="output chunk side")
    p.add_argument("--tile", type=int, default=None, help="output tile side (default: the "
                   "engine's balanced plan)")
    p.add_argument("--depth", type=int, default=3, help="tiles in flight per worker")
    p.add_argument("--in-chunk", type=int, default=512, help="input chunk side")
    p.add_argument("--quick", action="store_true", help="16 / 4 Mpx, S3 8 / 4 Mpx: a smoke run")
    p.add_argument("--no-local", action="store_true", help="skip the local-disk runs")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 runs")
    p.add_argument("--ray", action="store_true", help="also the local runs on 2 Ray actors")
    p.add_argument("--workdir", type=Path, default=None, help="scratch parent (default: /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (inputs)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        rec = child(json.loads(a._child))
        print(RESULT_TAG + json.dumps(rec), flush=True)
        return 0
    if a.quick:
        a.out_mpx, a.small_mpx, a.s3_mpx = 16.0, 4.0, 8.0
    say = Report()
    say(f"bench/gigapixel.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    for line in cpu_lines():
        say(line)
    say("model: the engine's null test double (pipeline.run.doubles.NullTileWorker): no model "
        "cost, the real read / digest / write path; output tiles repeat per tile shape")
    variants = load_variants()
    codec_reference(variants, a.scale, a.chunk, say)
    work = Path(tempfile.mkdtemp(prefix="liif-gigapixel-", dir=a.workdir))
    t0 = time.perf_counter()
    try:
        if not a.no_local:
            section_local(a, work, variants, say)
        if a.ray:
            section_local(a, work, variants, say, executor="ray", workers=2)
        if not a.no_s3:
            section_s3(a, variants, say)
    finally:
        if a.keep:
            say(f"\nscratch kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        say(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end; total "
            f"{time.perf_counter() - t0:.0f} s")
        say.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
