"""jobs.train_ttsr (TTSR-rec training on reference GT shards) and jobs.eval_refsr."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import liif
from jobs import cli, eval_refsr, train_ttsr
from liif import LIIF, save_checkpoint
from liif.ttsr import TTSR
from pipeline.refsr.evaluate import irrelevant_references
from pipeline.training.ttsr import RefSample, load_ref_samples

TINY = ["--num-res-blocks", "1+1+1+1", "--n-feats", "8", "--batch-size", "2", "--threads", "1",
        "--log-every", "1", "--save-every", "2", "--seed", "3"]
LIIF_ENC = {"name": "edsr-baseline",
            "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}}
LIIF_MLP = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}


def write_gt(root: Path, *, with_ref: bool = True, n: int = 6, lr_side: int = 8,
             ref_side: int = 24, sources: int = 2) -> Path:
    """A minimal GT output: manifest.json + shards/part-00000.parquet (uint8 samples)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: 4 * lr_side, : 4 * lr_side]
    rows: dict[str, list] = {k: [] for k in (
        "sample_id", "source_index", "source_uri", "window", "scale", "hr", "hr_shape", "hr_dtype",
        "lr", "lr_shape", "lr_dtype", "value_lo", "value_hi")}
    if with_ref:
        rows.update({k: [] for k in ("ref", "ref_shape", "ref_dtype", "ref_kind", "ref_params")})
    for i in range(n):
        c = 1 if i == n - 1 else 3  # one single-band sample
        base = 127 + 80 * np.sin(xx / (2.0 + i) + i) * np.cos(yy / 3.0)
        hr = np.clip(base[None] + rng.normal(0, 10, (c, *base.shape)), 0, 255).astype(np.uint8)
        lr = hr.reshape(c, lr_side, 4, lr_side, 4).mean(axis=(2, 4)).astype(np.uint8)
        ref = np.clip(hr[:, :ref_side, :ref_side].astype(int) + 5, 0, 255).astype(np.uint8)
        src = i % sources
        rows["sample_id"].append(f"s{src}-p{i}-k0")
        rows["source_index"].append(src)
        rows["source_uri"].append(f"/data/scene{src}.tif")
        rows["window"].append([0, 4 * lr_side, 40 * i, 40 * i + 4 * lr_side])
        rows["scale"].append(4.0)
        for key, arr in (("hr", hr), ("lr", lr)) + ((("ref", ref),) if with_ref else ()):
            rows[key].append(arr.tobytes())
            rows[f"{key}_shape"].append(list(arr.shape))
            rows[f"{key}_dtype"].append(str(arr.dtype))
        rows["value_lo"].append(0.0)
        rows["value_hi"].append(255.0)
        if with_ref:
            rows["ref_kind"].append("view" if i % 2 else "raster")
            rows["ref_params"].append(json.dumps({"offset": [0, 0]}))
    (root / "shards").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "shards" / "part-00000.parquet")
    manifest = {"format": "liif-gt/1", "complete": True, "planned_shards": 1,
                "shards": {"part-00000.parquet": {"file": "shards/part-00000.parquet",
                                                  "samples": n}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    rc = train_ttsr.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def gt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gt(tmp_path_factory.mktemp("gt") / "gt-ref")


def test_load_ref_samples(gt: Path) -> None:
    samples = load_ref_samples([str(gt)])
    assert len(samples) == 6
    s = samples[0]
    assert s.lr.shape == (3, 8, 8) and s.hr.shape == (3, 32, 32) and s.ref.shape == (3, 24, 24)
    assert s.value_range == (0.0, 255.0) and s.ref_kind == "raster" and s.window == (0, 32, 0, 32)
    assert samples[-1].lr.shape == (1, 8, 8)
    assert len(load_ref_samples([str(gt)], limit=2)) == 2


def test_train_4_steps(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc, stdout, _ = _run(capsys, ["--gt", str(gt), "--out", str(out), "--steps", "4", *TINY])
    assert rc == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["resumed_from"] == 0 and summary["samples"] == 6
    assert math.isfinite(summary["last_loss"]) and summary["last_loss"] > 0
    assert sum(line.startswith("train step ") for line in stdout.splitlines()) == 4
    for name in ("model.safetensors", "final.safetensors", "trainer.pt", "metrics.csv"):
        assert (out / name).is_file(), name
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,samples_per_s,seconds" and len(lines) == 5
    assert all(math.isfinite(float(v)) for line in lines[1:] for v in line.split(","))
    model = liif.load_model(out / "final.safetensors")
    assert isinstance(model, TTSR) and model.num_res_blocks == (1, 1, 1, 1) and model.n_feats == 8
    meta = liif.checkpoint.read_metadata(out / "final.safetensors")
    assert meta["training"]["step"] == 4 and meta["training"]["config"]["batch_size"] == 2
    state = torch.load(out / "trainer.pt", weights_only=True)
    assert state["step"] == 4 and "generator" in state["optimizers"]


def test_resume_matches_uninterrupted(gt: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    assert _run(capsys, ["--gt", str(gt), "--out", str(full), "--steps", "4", *TINY])[0] == 0
    assert _run(capsys, ["--gt", str(gt), "--out", str(split), "--steps", "2", *TINY])[0] == 0
    rc, stdout, _ = _run(capsys, ["--gt", str(gt), "--out", str(split), "--steps", "4", *TINY])
    assert rc == 0
    assert json.loads(stdout.strip().splitlines()[-1])["resumed_from"] == 2
    a = liif.load_model(full / "final.safetensors").state_dict()
    b = liif.load_model(split / "final.safetensors").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len((split / "metrics.csv").read_text().splitlines()) == 5
    # a different architecture in the same run directory is refused
    rc, _, err = _run(capsys, ["--gt", str(gt), "--out", str(split), "--steps", "6", *TINY,
                               "--n-feats", "16"])
    assert rc == 2 and "different architecture" in err and "16" in err


def test_missing_ref_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plain = write_gt(tmp_path / "plain", with_ref=False, n=2)
    rc, _, err = _run(capsys, ["--gt", str(plain), "--out", str(tmp_path / "r"), "--steps", "1",
                               *TINY])
    assert rc == 2
    assert f"GT output {str(plain)!r} has no reference columns" in err
    assert "make it with make_gt --reference" in err


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "'0'"),
    (["--steps", "-3"], "'-3'"),
    (["--batch-size", "0"], "'0'"),
    (["--num-res-blocks", "1+1"], "'1+1'"),
    (["--milestones", "1.5"], "'1.5'"),
])
def test_bad_values_exit_2(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                           argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        train_ttsr.main(["--gt", str(gt), "--out", str(tmp_path / "r"), *argv])
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_missing_gt_dir_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-ttsr", "--gt", missing, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and repr(missing) in capsys.readouterr().err


def _fake(i: int, source: str, window: tuple[int, int, int, int] | None) -> RefSample:
    z = np.zeros((3, 4, 4), np.uint8)
    return RefSample(f"s{i}", source, "gt", z, z, z, (0.0, 1.0), None, window)


def test_irrelevant_reference_choice() -> None:
    samples = [_fake(0, "a", None), _fake(1, "a", None), _fake(2, "b", None), _fake(3, "a", None)]
    picks = irrelevant_references(samples, 4)
    assert picks == [(2, "other source"), (2, "other source"), (3, "other source"),
                     (2, "other source")]
    one = [_fake(0, "a", (0, 8, 0, 8)), _fake(1, "a", (4, 12, 4, 12)), _fake(2, "a", (8, 16, 0, 8))]
    assert irrelevant_references(one, 3) == [
        (2, "same source, disjoint window"), (2, "same source, overlapping window"),
        (0, "same source, disjoint window")]
    assert irrelevant_references(one[:1], 1) == [(None, "none")]


def test_eval_refsr(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert _run(capsys, ["--gt", str(gt), "--out", str(run), "--steps", "1", *TINY])[0] == 0
    torch.manual_seed(0)
    tiny_liif = save_checkpoint(LIIF(LIIF_ENC, LIIF_MLP), tmp_path / "liif.safetensors")
    ckpt = run / "final.safetensors"
    report = tmp_path / "report.json"
    rc = eval_refsr.main(["--gt", str(gt), "--ttsr", str(ckpt), "--liif", str(tiny_liif),
                          "--json", str(report), "--progress-every", "2", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for method in ("bicubic", "liif", "ttsr (ref)", "ttsr (irrelevant ref)"):
        assert f"| {method} |" in out
    assert "ref_kind = view" in out and "ref_kind = raster" in out
    assert "6 other source" in out
    assert "6/6 samples" in err
    data = json.loads(report.read_text())
    assert data["samples"] == 6 and set(data["by_ref_kind"]) == {"raster", "view"}
    for m, s in data["methods"].items():
        assert s["n"] == 6, m
        assert math.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1, m
    # several checkpoints by name, a limit, and no JSON
    rc = eval_refsr.main(["--gt", str(gt), "--ttsr", f"a={ckpt}", f"b={ckpt}", "--liif",
                          str(tiny_liif), "--limit", "2", "--progress-every", "0"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "| a (ref) |" in out and "| b (irrelevant ref) |" in out
    assert "| 2 |" in out
