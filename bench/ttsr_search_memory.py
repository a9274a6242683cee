"""Peak memory and time of TTSR's relevance search: search_full vs search_chunked.

Fixed LR (LTE level-3 map of ``--lr-side``^2 positions, 256 channels) against growing reference
maps. Prints figures only; nothing passes or fails.

How memory is measured (tracemalloc does not see torch's allocations):

* CPU: the peak resident set size of this process during the call, minus the RSS just before it.
  The kernel's peak counter (VmHWM) is reset before each call by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0). The script re-executes itself with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every large tensor by mmap and returns it on
  free: the RSS then follows the live tensors instead of keeping freed heap pages. Where
  clear_refs is unavailable, the figure falls back to ``ru_maxrss`` growth, a lower bound
  (marked ``>=``).
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor bytes,
  not the caching allocator's reserve).

``relevance MiB`` is the analytic size of the largest relevance block held at once (float64
accumulation + float32 copy for the exact search, float32 only for ``--include-fp32`` rows).

Usage: ``python bench/ttsr_search_memory.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

_MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
if os.environ.get(_MMAP_ENV) is None and sys.platform.startswith("linux") and __name__ == "__main__":
    os.environ[_MMAP_ENV] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from liif.ttsr.search import search_chunked, search_full  # noqa: E402

MiB = 1024 * 1024


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("VmHWM not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """Peak memory above the level before ``fn()`` (MiB) and the method's qualifier."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MiB, ""
    if sys.platform.startswith("linux") and _reset_hwm():
        before = _rss_kib()
        fn()
        return max(_hwm_kib() - before, 0) / 1024, ""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(after - before, 0) / 1024, ">="


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one timing repeat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr-side", type=int, default=None, help="LR level-3 side (32)")
    parser.add_argument("--ref-sides", type=int, nargs="+", default=None,
                        help="reference level-3 sides (32 64 96 128)")
    parser.add_argument("--chunk", type=int, default=None, help="reference positions per chunk")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--include-fp32", action="store_true",
                        help="also time search_chunked(exact=False)")
    args = parser.parse_args(argv)
    lr_side = args.lr_side or (16 if args.quick else 32)
    ref_sides = args.ref_sides or ([16, 32, 48] if args.quick else [32, 64, 96, 128])
    chunk = args.chunk or (256 if args.quick else 1024)
    repeats = args.repeats or (1 if args.quick else 3)
    device = torch.device(args.device)
    torch.manual_seed(0)
    q = torch.randn(1, args.channels, lr_side, lr_side, device=device)
    n_q = lr_side * lr_side
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"C={args.channels} LR level-3 {lr_side}x{lr_side} ({n_q} positions) chunk={chunk}")
    print(f"{'ref side':>8} {'ref pos':>8} {'method':>14} {'peak MiB':>10} "
          f"{'relevance MiB':>14} {'time ms':>9}")
    for side in ref_sides:
        k = torch.randn(1, args.channels, side, side, device=device)
        n_ref = side * side
        runs: list[tuple[str, Callable[[], object], float]] = [
            ("full", lambda k=k: search_full(q, k), n_ref * n_q * 12 / MiB),
            ("chunked", lambda k=k: search_chunked(q, k, chunk),
             min(chunk, n_ref) * n_q * 12 / MiB),
        ]
        if args.include_fp32:
            runs.append(("chunked-fp32", lambda k=k: search_chunked(q, k, chunk, exact=False),
                         min(chunk, n_ref) * n_q * 4 / MiB))
        full_index = None
        for name, fn, rel_mib in runs:
            peak, qual = peak_extra_mib(fn, device)
            ms = median_ms(fn, device, repeats)
            result = fn()
            if full_index is None:
                full_index = result.index
            agree = "" if torch.equal(result.index, full_index) else "  (indices differ)"
            print(f"{side:>8} {n_ref:>8} {name:>14} {qual + f'{peak:.1f}':>10} "
                  f"{rel_mib:>14.1f} {ms:>9.1f}{agree}")


if __name__ == "__main__":
    main()
