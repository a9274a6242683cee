"""--precision auto: bf16 only where the hardware computes it natively; the summary says which
precision ran and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import liif.precision as prec
from pipeline.io.sources import SourceSpec
from pipeline.io.zarr_output import OutputSpec
from pipeline.upscale import UpscaleConfig, run_upscale


@pytest.mark.parametrize(("flags", "expect"), [
    (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),
    (frozenset({"avx2", "amx_tile", "amx_bf16"}), "bf16"),
    (frozenset({"avx2", "fma"}), "fp32"),
    (frozenset({"avx512f", "avx512bw"}), "fp32"),  # AVX512 without BF16 emulates it
])
def test_auto_picks_bf16_only_with_native_support(monkeypatch: pytest.MonkeyPatch,
                                                  flags: frozenset, expect: str) -> None:
    monkeypatch.setattr(prec, "cpu_flags", lambda: flags)
    got, why = prec.resolve_precision("auto", "cpu")
    assert got == expect and why.startswith("auto: ")


def test_forcing_bf16_where_it_is_emulated_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(UserWarning, match="emulated"):
        assert prec.resolve_precision("bf16", "cpu") == ("bf16", "requested")
    assert prec.resolve_precision("fp32", "cpu") == ("fp32", "requested")
    with pytest.raises(ValueError, match="'fp64' is not one of"):
        prec.resolve_precision("fp64", "cpu")


def test_the_summary_says_which_precision_ran_and_why(tmp_path: Path, tiny_liif: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2"}))
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 16, 16), dtype="float32")
    arr[:] = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    s = run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                                  output=OutputSpec(str(tmp_path / "o.zarr")), scale=2,
                                  model=str(tiny_liif), executor="in-process", progress=False))
    assert s["precision"] == "fp32" and "no native bf16" in s["precision_why"]
