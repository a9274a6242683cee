"""The CLI behaves like the tools our users know: output format from the name, usual number
forms, the plan before work, Ctrl-C that leaves a resumable output, clear errors under
`ray job submit`, help that reads well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import upscale_cli

from jobs import cli
from jobs.upscale import _parse_count, main

COMMON = ["--executor", "in-process", "--workers", "1", "--threads-per-worker", "1",
          "--precision", "fp32"]


@pytest.fixture()
def src(tmp_path: Path) -> str:
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 24, 20), dtype="uint8")
    arr[:] = np.random.default_rng(0).integers(0, 255, (3, 24, 20), dtype=np.uint8)
    return str(tmp_path / "in.zarr")


def test_output_ending_in_tif_is_a_cog_without_a_leftover_zarr(
        tmp_path: Path, src: str, tiny_liif: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scene_x2.tif"
    rc = upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--model", str(tiny_liif),
               "--no-progress", *COMMON])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(out) and summary["cog"] == str(out)
    with rasterio.open(out) as ds:
        assert ds.shape == (48, 40) and ds.count == 3
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "scene_x2.tif"]
    # a second run refuses to replace it without --overwrite
    assert upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--model",
                 str(tiny_liif), "--no-progress", *COMMON]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cog_alone_needs_no_output(tmp_path: Path, src: str, tiny_liif: Path) -> None:
    cog = tmp_path / "only.tif"
    assert upscale_cli(["--input", src, "--cog", str(cog), "--scale", "2", "--model", str(tiny_liif),
                 "--no-progress", *COMMON]) == 0
    assert cog.is_file() and not (tmp_path / ".only.tif.zarr").exists()


@pytest.mark.parametrize("name", ["out.png", "out.JPG"])
def test_image_file_outputs_are_refused_with_what_to_do(tmp_path: Path, src: str, name: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert upscale_cli(["--input", src, "--output", str(tmp_path / name), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "--preview" in err and ".tif" in err and not (tmp_path / name).exists()


@pytest.mark.parametrize(("text", "value"), [("1e12", 10**12), ("4G", 4 * 10**9),
                                             ("4_000_000", 4_000_000), ("2.5k", 2500),
                                             ("1,000", 1000)])
def test_pixel_counts_accept_the_usual_forms(text: str, value: int) -> None:
    assert _parse_count(text) == value


def test_the_default_limit_refuses_a_ten_gigapixel_size(src: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--size",
                 "100000x100000", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "4,000,000,000" in err and not (tmp_path / "o.zarr").exists()
    assert upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--size", "100x100",
                 "--max-output-pixels", "1e3", *COMMON]) == 2
    assert "1,000" in capsys.readouterr().err


def test_the_plan_is_printed_before_work(tmp_path: Path, src: str, tiny_liif: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2",
                 "--model", str(tiny_liif), *COMMON]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("plan: 20 x 24 -> 40 x 48 x 3 uint8") and "tiles" in lines[0]
    # not a terminal: newline-terminated progress lines, never carriage returns
    assert "\r" not in err and any(line.startswith("tiles ") for line in lines)


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path, src: str, tiny_liif: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.run.executors import make_executor
    from pipeline.upscale import UpscaleConfig, run_upscale

    def interrupting(cfg: object, job: object, worker_cls: type) -> object:
        ex = make_executor(cfg, job, worker_cls)
        run = ex.run

        def run_until_two(work: object, progress: object, **kw: object) -> object:
            items = list(work)
            run(items[:2], progress, **kw)
            raise KeyboardInterrupt
        ex.run = run_until_two
        return ex

    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec

    cfg = UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(tmp_path / "o.zarr")),
                        scale=2, model=str(tiny_liif), tile=16, chunk=16, executor="in-process",
                        progress=False, precision="fp32")
    with pytest.raises(KeyboardInterrupt) as info:
        run_upscale(cfg, executor_factory=interrupting)
    assert "--resume" in " ".join(info.value.__notes__)
    lease = tmp_path / ".o.zarr.lease.json"
    assert not lease.exists()  # the lease was released
    rc = upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2", "--model",
               str(tiny_liif), "--tile", "16", "--chunk", "16", "--resume", "--no-progress",
               *COMMON])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tiles_verified"] == 2 and summary["tiles_run"] == summary["tiles"] - 2


def test_the_cli_says_how_to_resume_after_ctrl_c(monkeypatch: pytest.MonkeyPatch, src: str,
                                                 tmp_path: Path, tiny_liif: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pipeline.upscale as up

    def interrupted(cfg: object, **kw: object) -> dict:
        e = KeyboardInterrupt()
        e.add_note("3 of 9 tiles are finished and kept; rerun the same command with --resume")
        raise e

    monkeypatch.setattr(up, "run_upscale", interrupted)
    rc = upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2", *COMMON])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "--resume" in err and "Traceback" not in err


def test_relative_paths_under_ray_job_submit_are_explained(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}))
    assert upscale_cli(["--input", "data/scene.tif", "--output", "/abs/out.zarr", "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "--input 'data/scene.tif' is a relative path" in err and "ray job submit" in err
    assert "absolute path or a URL" in err


def test_liif_help_describes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("upscale", "eval", "train", "make-gt", "train-ttsr", "eval-refsr"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), "")
        assert len(line.split()) > 2, f"no description for {name!r} in:\n{out}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: liif upscale")


def test_a_ray_address_that_does_not_answer_fails_fast(src: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    t0 = time.perf_counter()
    rc = upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2",
               "--executor", "ray", "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"127.0.0.1:{port}" in err and "ray start --head" in err
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "o.zarr").exists()  # nothing written before the connection
    assert upscale_cli(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2",
                 "--executor", "ray", "--address", "http://127.0.0.1:8265"]) == 2
    assert "dashboard URL" in capsys.readouterr().err


def test_without_an_address_a_fresh_local_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """No address: ensure_ray asks for a new local instance (address="local"), so a stale
    /tmp/ray/ray_current_cluster left by a stopped `ray start` head is never joined."""
    import ray

    from pipeline.run import ray_executor

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_executor.ensure_ray()
    assert calls and calls[0]["address"] == "local"


def _codec_names(arr: zarr.Array) -> list[str]:
    return [type(c).__name__ for c in arr.metadata.codecs]


@pytest.mark.parametrize(("dtype", "expected"), [("uint8", "ZstdCodec"), ("uint16", "BloscCodec"),
                                                 ("float32", "BloscCodec")])
def test_auto_codec_follows_the_dtype_and_ends_with_a_checksum(
        tmp_path: Path, tiny_liif: Path, dtype: str, expected: str) -> None:
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 16, 16), dtype=dtype)
    src[:] = np.random.default_rng(1).integers(1, 200, (3, 16, 16)).astype(dtype)
    out = tmp_path / "o.zarr"
    assert upscale_cli(["--input", str(tmp_path / "in.zarr"), "--output", str(out), "--scale", "2",
                 "--model", str(tiny_liif), "--no-progress", *COMMON]) == 0
    names = _codec_names(zarr.open_group(str(out), mode="r")["image"])
    assert expected in names and names[-1] == "Crc32cCodec"


def test_an_explicit_codec_and_level_are_used(tmp_path: Path, src: str, tiny_liif: Path) -> None:
    out = tmp_path / "o.zarr"
    assert upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--codec", "blosc-lz4:3",
                 "--model", str(tiny_liif), "--no-progress", *COMMON]) == 0
    arr = zarr.open_group(str(out), mode="r")["image"]
    blosc = [c for c in arr.metadata.codecs if type(c).__name__ == "BloscCodec"]
    assert blosc and blosc[0].cname.value == "lz4" and blosc[0].clevel == 3


@pytest.mark.parametrize(("flags", "needle"), [
    (["--codec", "gzip"], "gzip"), (["--codec", "zstd:99"], "99"),
    (["--codec", "zstd:x"], "zstd:x"),
    (["--cog", "c.tif", "--cog-compress", "lerc", "--cog-max-z-error", "-1"], "-1"),
    (["--cog", "c.tif", "--cog-threads", "0"], "--cog-threads"),
    (["--preview", "p.png", "--preview-size", "0"], "--preview-size"),
    (["--compare", "c.png", "--compare-crop", "8"], "--compare-crop")])
def test_bad_output_options_fail_before_anything_is_written(
        tmp_path: Path, src: str, tiny_liif: Path, flags: list[str], needle: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    flags = [str(tmp_path / f) if f.endswith((".tif", ".png")) else f for f in flags]
    out = tmp_path / "o.zarr"
    assert upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--model",
                 str(tiny_liif), "--no-progress", *COMMON, *flags]) == 2
    assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_compare_writes_output_beside_bicubic(tmp_path: Path, tiny_liif: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 40, 40), dtype="uint8")
    src[:] = np.random.default_rng(2).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    cmp_png = tmp_path / "cmp.png"
    assert upscale_cli(["--input", str(tmp_path / "in.zarr"), "--output", str(tmp_path / "o.zarr"),
                 "--scale", "2", "--compare", str(cmp_png), "--compare-crop", "32",
                 "--model", str(tiny_liif), "--no-progress", *COMMON]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["compare"]["path"] == str(cmp_png)
    with Image.open(cmp_png) as im:
        w, h = im.size
    assert h == 32 and w >= 64  # two 32-px panels side by side
    (r0, r1), (c0, c1) = summary["compare"]["output_window"]
    assert (r1 - r0, c1 - c0) == (32, 32)
    assert summary["compare"]["shape"][0] == h and summary["compare"]["shape"][1] == w
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["image"]
    left = np.asarray(Image.open(cmp_png).convert("RGB"))[:, :32].transpose(2, 0, 1)
    np.testing.assert_array_equal(left, out[:, r0:r1, c0:c1])  # the left panel is the output


def test_preview_reads_the_smallest_adequate_overview(tmp_path: Path, tiny_liif: Path) -> None:
    from PIL import Image

    from pipeline.io.zarr_create import open_zarr_output
    from pipeline.io.zarr_output import OutputSpec
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 128, 128), dtype="uint8")
    src[:] = np.random.default_rng(3).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    out = tmp_path / "o.zarr"
    prev = tmp_path / "p.png"
    assert upscale_cli(["--input", str(tmp_path / "in.zarr"), "--output", str(out), "--scale", "2",
                 "--overviews", "2", "--chunk", "64", "--tile", "256", "--preview", str(prev),
                 "--preview-size", "64", "--model", str(tiny_liif), "--no-progress",
                 *COMMON]) == 0
    z = open_zarr_output(OutputSpec(str(out)))
    assert z.levels == 2
    level2 = z.level(2)[:]  # 64 x 64: exactly the preview size
    shown = np.asarray(Image.open(prev)).transpose(2, 0, 1)
    np.testing.assert_array_equal(shown, level2)


def test_cog_codec_options_reach_the_file(tmp_path: Path, src: str, tiny_liif: Path) -> None:
    cog = tmp_path / "c.tif"
    assert upscale_cli(["--input", src, "--cog", str(cog), "--scale", "2", "--cog-compress", "zstd",
                 "--cog-level", "1", "--cog-threads", "1", "--model", str(tiny_liif),
                 "--no-progress", *COMMON]) == 0
    with rasterio.open(cog) as ds:
        assert ds.compression is not None and ds.compression.name.lower() == "zstd"
