"""Which decode precision to use on a device: ``--precision auto`` picks bf16 only where the
hardware computes it natively, fp32 elsewhere.

Native bf16: a CPU whose flags include ``avx512_bf16`` or ``amx_bf16`` (Linux ``/proc/cpuinfo``;
measured here: bf16 matmuls ~2.5x fp32 with AVX512-BF16, while on an AVX2-only CPU ``bf16`` ran
4.7x *slower* than fp32), or an accelerator whose torch device module reports bf16 support
(e.g. CUDA GPUs with bf16 tensor cores, compute capability 8.0+).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

__all__ = ["PRECISIONS", "cpu_flags", "native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (one short phrase)."""
    device = torch.device(device)
    if device.type == "cpu":
        flags = cpu_flags()
        have = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if have:
            return True, f"this CPU has {' and '.join(have)}"
        cap = torch.backends.cpu.get_cpu_capability()
        return False, f"this CPU ({cap}) has no native bf16 (no avx512_bf16 / amx_bf16)"
    module: Any = torch.get_device_module(device)
    supported = getattr(module, "is_bf16_supported", None)
    if supported is not None and supported():
        return True, f"the {device.type} device supports bf16"
    return False, f"the {device.type} device does not report bf16 support"


def resolve_precision(requested: str, device: torch.device | str) -> tuple[str, str]:
    """``(precision, why)`` for ``requested`` (``auto``, ``fp32``, ``bf16``, ``fp16``) on
    ``device``. ``auto`` is bf16 where :func:`native_bf16`, else fp32; forcing bf16 where it is
    emulated warns (it can be several times slower than fp32).

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    native, why = native_bf16(device)
    if requested == "auto":
        return ("bf16", f"auto: {why}") if native else ("fp32", f"auto: {why}")
    if requested == "bf16" and not native:
        warnings.warn(f"--precision bf16 where {why}: bf16 is emulated there and can run several "
                      "times slower than fp32 (use --precision auto)", UserWarning, stacklevel=2)
    return requested, "requested"
