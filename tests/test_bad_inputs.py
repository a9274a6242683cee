"""Bad inputs through the CLI (``jobs.upscale.main``): a non-zero exit (2), an error on stderr that
names the bad value, and nothing written or overwritten (every file's bytes compared before/after,
including an existing output's)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_tiny_liif as tiny_checkpoint

from jobs.upscale import main

COMMON = ["--executor", "in-process", "--no-progress", "--workers", "1", "--threads-per-worker", "1"]



def zarr_array(path: Path, shape: tuple[int, ...], dtype: str, fill: bool = True) -> str:
    """Create a Zarr array (random contents when ``fill``)."""
    arr = zarr.create_array(str(path), shape=shape, dtype=dtype)
    if fill and all(shape):
        arr[...] = np.random.default_rng(0).random(shape).astype(dtype)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Valid jobs here set torch's thread count in this process (--threads-per-worker); undo it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Shared fixtures: a model, a valid input, assorted bad inputs and one finished output."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f: dict[str, str] = {"dir": str(d)}
    f["model"] = str(tiny_checkpoint(d / "model.safetensors"))
    f["input"] = zarr_array(d / "in.zarr", (3, 20, 24), "float32")
    (d / "notes.txt").write_text("this is not an image\n")
    f["notes"] = str(d / "notes.txt")
    (d / "corrupt.zarr").mkdir()
    (d / "corrupt.zarr" / "zarr.json").write_text("{not json")
    f["corrupt"] = str(d / "corrupt.zarr")
    f["complex"] = zarr_array(d / "complex.zarr", (3, 8, 8), "complex64", fill=False)
    f["uint32"] = zarr_array(d / "uint32.zarr", (3, 8, 8), "uint32")
    f["empty"] = zarr_array(d / "empty.zarr", (3, 0, 5), "float32")
    f["4d"] = zarr_array(d / "four_d.zarr", (1, 3, 8, 8), "float32")
    png = d / "truncated.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 7).save(png)
    png.write_bytes(png.read_bytes()[:60])
    f["truncated_png"] = str(png)
    # seeded garbage: which error torch.load raises depends on the bytes (see REGRESSIONS)
    for seed in (0, 17, 54, 62):
        (d / f"garbage{seed}.pth").write_bytes(np.random.default_rng(seed).bytes(512))
    (d / "garbage.safetensors").write_bytes(np.random.default_rng(1).bytes(512))
    torch.save({"weights": torch.zeros(3)}, d / "not_a_model.pth")
    f["not_a_model"] = str(d / "not_a_model.pth")
    (d / "a_file").write_text("a regular file\n")
    f["a_file"] = str(d / "a_file")
    (d / "plain_dir").mkdir()
    (d / "plain_dir" / "keep.txt").write_text("keep me\n")
    f["plain_dir"] = str(d / "plain_dir")
    zarr.create_group(str(d / "foreign.zarr"))
    f["foreign"] = str(d / "foreign.zarr")
    f["existing"] = str(d / "existing.zarr")
    rc = main(["--input", f["input"], "--output", f["existing"], "--scale", "2", "--model",
               f["model"], "--tile", "32", "--chunk", "16", *COMMON])
    assert rc == 0
    return f


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and directory under ``roots`` -> sha256 of its bytes ("dir" for directories)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[os.path.join(dirpath, name)] = "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def run_main(argv: list[str]) -> int:
    """``main(argv)``'s exit code, including argparse's ``SystemExit``."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1


@dataclass(frozen=True)
class Case:
    """``argv(fx, tmp)`` -> CLI arguments; ``expect``: substrings stderr must contain."""

    argv: Callable[[dict[str, str], Path], list[str]]
    expect: tuple[str, ...]


def _job(src: str = "{fx}/in.zarr", *extra: str, out: str = "{tmp}/out.zarr",
         model: str = "{fx}/model.safetensors", scale: str | None = "2"
         ) -> Callable[[dict[str, str], Path], list[str]]:
    """A valid job with one thing changed; ``{fx}`` (shared fixtures) and ``{tmp}`` (this test's
    directory) are filled in at run time."""

    def build(f: dict[str, str], tmp: Path) -> list[str]:
        argv = ["--input", src, "--output", out, "--model", model, *COMMON]
        argv += ["--scale", scale] if scale is not None else []
        return [a.replace("{tmp}", str(tmp)).replace("{fx}", f["dir"]) for a in [*argv, *extra]]

    return build


def _own_input_as_output(f: dict[str, str], tmp: Path) -> list[str]:
    """--output == --input --overwrite, on a private copy of the input (the bug destroys it)."""
    import shutil

    own = tmp / "own.zarr"
    if not own.exists():
        shutil.copytree(Path(f["dir"]) / "in.zarr", own)
    return _job(str(own), "--overwrite", out=str(own))(f, tmp)


CASES: dict[str, Case] = {
    "missing_input": Case(_job("{tmp}/does-not-exist.zarr"), ("does-not-exist.zarr", "not found")),
    "text_file": Case(_job("{fx}/notes.txt"), ("notes.txt", "not a supported image")),
    "truncated_png": Case(_job("{fx}/truncated.png"), ("truncated.png",)),
    "corrupt_zarr_metadata": Case(_job("{fx}/corrupt.zarr"), ("corrupt.zarr", "corrupt zarr metadata")),
    "complex_dtype": Case(_job("{fx}/complex.zarr"), ("complex64", "unsupported dtype")),
    "uint32_dtype": Case(_job("{fx}/uint32.zarr"), ("uint32", "unsupported dtype")),
    "zero_size": Case(_job("{fx}/empty.zarr"), ("empty.zarr", "0 row(s)")),
    "four_d_array": Case(_job("{fx}/four_d.zarr"), ("(1, 3, 8, 8)",)),
    "array_path_missing": Case(_job("{fx}/in.zarr", "--array-path", "nope"), ("'nope'",)),
    "scale_zero": Case(_job(scale="0"), ("scale", "got 0.0")),
    "scale_negative": Case(_job(scale="-2"), ("scale", "got -2.0")),
    "scale_nan": Case(_job(scale="nan"), ("scale", "nan")),
    "scale_inf": Case(_job(scale="inf"), ("scale", "inf")),
    "scale_text": Case(_job(scale="abc"), ("--scale", "'abc'")),
    "scale_three_values": Case(_job(scale="1,2,3"), ("--scale", "'1,2,3'")),
    "size_zero": Case(_job("{fx}/in.zarr", "--size", "0x5", scale=None), ("--size", "'0x5'")),
    "size_bad_format": Case(_job("{fx}/in.zarr", "--size", "12by5", scale=None), ("--size", "'12by5'")),
    "no_scale_or_size": Case(_job(scale=None), ("--scale or --size",)),
    "too_many_output_pixels": Case(_job("{fx}/in.zarr", "--max-output-pixels", "1000"),
                                   ("40 x 48", "1,000")),
    "max_output_pixels_zero": Case(_job("{fx}/in.zarr", "--max-output-pixels", "0"), ("got 0",)),
    "max_output_pixels_negative": Case(_job("{fx}/in.zarr", "--max-output-pixels", "-5"),
                                       ("got -5",)),
    "band_out_of_range": Case(_job("{fx}/in.zarr", "--bands", "0,1,5"), ("band index 5", "0..2")),
    "band_not_a_number": Case(_job("{fx}/in.zarr", "--bands", "0,a"), ("--bands", "'0,a'")),
    "unwritable_output": Case(_job(out="{fx}/a_file/out.zarr"), ("a_file", "not a directory")),
    "existing_output": Case(_job("{fx}/in.zarr", "--tile", "32", "--chunk", "16", out="{fx}/existing.zarr"),
                            ("existing.zarr", "already exists")),
    "resume_different_scale": Case(
        _job("{fx}/in.zarr", "--tile", "32", "--chunk", "16", "--resume",
             out="{fx}/existing.zarr", scale="3"),
        ("existing.zarr", "cannot resume", "out_shape")),
    "resume_foreign_zarr": Case(_job("{fx}/in.zarr", "--resume", out="{fx}/foreign.zarr"),
                                ("foreign.zarr", "not a liif-pipeline Zarr output")),
    "overwrite_non_zarr_dir": Case(_job("{fx}/in.zarr", "--overwrite", out="{fx}/plain_dir"),
                                   ("plain_dir", "refusing to overwrite")),
    "resume_and_overwrite": Case(_job("{fx}/in.zarr", "--resume", "--overwrite"),
                                 ("--overwrite", "not allowed with", "--resume")),
    "tile_not_multiple_of_chunk": Case(_job("{fx}/in.zarr", "--tile", "40", "--chunk", "16"),
                                       ("tile 40", "chunk 16")),
    "shard_not_multiple_of_chunk": Case(_job("{fx}/in.zarr", "--shard", "40", "--chunk", "16"),
                                        ("shard 40", "chunk 16")),
    "tile_not_multiple_of_shard": Case(
        _job("{fx}/in.zarr", "--tile", "48", "--shard", "32", "--chunk", "16"), ("tile 48", "shard 32")),
    "chunk_too_small": Case(_job("{fx}/in.zarr", "--chunk", "8", "--tile", "16"), ("chunk 8",)),
    "workers_zero": Case(_job("{fx}/in.zarr", "--workers", "0"), ("workers 0",)),
    "value_range_reversed": Case(_job("{fx}/in.zarr", "--value-range", "1", "0"), ("(1.0, 0.0)",)),
    "value_range_nan": Case(_job("{fx}/in.zarr", "--value-range", "nan", "1"), ("nan",)),
    "model_missing": Case(_job(model="{tmp}/no-such-model.safetensors"),
                          ("no-such-model.safetensors",)),
    "model_garbage_safetensors": Case(_job(model="{fx}/garbage.safetensors"),
                                      ("garbage.safetensors", "not a valid safetensors file")),
    "model_garbage_pth": Case(_job(model="{fx}/garbage0.pth"),
                              ("garbage0.pth", "not a readable torch checkpoint")),
    "model_not_a_model": Case(_job(model="{fx}/not_a_model.pth"), ("not_a_model.pth", "unrecognised")),
    "storage_options_bad_json": Case(_job("{fx}/in.zarr", "--storage-options", "{bad"),
                                     ("--storage-options", "'{bad'")),
    "storage_options_not_object": Case(_job("{fx}/in.zarr", "--storage-options", "[1]"),
                                       ("--storage-options", "'[1]'")),
    "threads_zero": Case(_job("{fx}/in.zarr", "--threads-per-worker", "0"), ("threads per worker 0",)),
    "output_without_input": Case(lambda f, t: ["--output", str(t / "o.zarr"), "--scale", "2"],
                                 ("--output needs --input",)),
}

REGRESSIONS = {
    **{f"model_garbage_pth_{seed}_{err}": (
        Case(_job(model=f"{{fx}}/garbage{seed}.pth"), (f"garbage{seed}.pth",)),
        f"was: liif/checkpoint.py _torch_load() catches only UnpicklingError, RuntimeError, "
        f"EOFError, OSError; torch.load(weights_only=True) on these garbage bytes raises {err}: "
        f"{'a traceback' if err != 'UnicodeDecodeError' else 'exit 2 without the file name'}")
       for seed, err in ((17, "IndexError"), (54, "UnicodeDecodeError"), (62, "KeyError"))},
    "output_is_input_with_overwrite": (
        Case(_own_input_as_output, ("own.zarr",)),
        "was: pipeline/upscale.py prepare() does not refuse --output == --input; with --overwrite "
        "create_zarr_output deletes the input and the job 'succeeds' reading zeros"),
    "cog_target_exists": (
        Case(_job("{fx}/in.zarr", "--cog", "{fx}/a_file"), ("a_file", "already exists")),
        "was: pipeline/upscale.py checks the --cog target only after the whole job ran: exit 2 "
        "but the Zarr output is left behind"),
    "preview_parent_missing": (
        Case(_job("{fx}/in.zarr", "--preview", "{tmp}/no-dir/p.png"), ("no-dir",)),
        "was: pipeline/upscale.py checks the --preview target only after the whole job ran: "
        "exit 2 but the Zarr output is left behind"),
}


def check_case(case: Case, fx: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> None:
    """Run one bad case from an empty working directory and check rc, stderr and the filesystem."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    roots = (Path(fx["dir"]), tmp_path)
    argv = case.argv(fx, tmp_path)
    before = snapshot(*roots)
    capsys.readouterr()
    rc = run_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc} for {argv}; stderr: {err[-500:]}"
    for text in case.expect:
        assert text in err, f"{text!r} not in stderr: {err[-800:]}"
    assert "Traceback" not in err
    assert snapshot(*roots) == before, "the filesystem changed"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, fx: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """Each bad input: exit 2, stderr names the bad value, nothing written or overwritten."""
    check_case(CASES[name], fx, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_bad_input_regression(name: str, fx: dict[str, str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Bad inputs that once slipped through (regressions; the reasons say what went wrong)."""
    check_case(REGRESSIONS[name][0], fx, tmp_path, monkeypatch, capsys)


def test_at_least_fifteen_cases() -> None:
    """The brief asks for at least 15 distinct bad-input cases."""
    assert len(CASES) + len(REGRESSIONS) >= 15


def test_valid_job_passes_the_same_checks(fx: dict[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the shared arguments make a valid job (exit 0, output written), so each bad case
    fails because of its one bad value."""
    monkeypatch.chdir(tmp_path)
    argv = _job()(fx, tmp_path)
    assert run_main(argv) == 0
    assert (tmp_path / "out.zarr" / "image" / "zarr.json").is_file()
