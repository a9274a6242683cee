"""``ray job submit`` of the GT and training jobs' smoke tests against a real ``ray start`` head."""

from __future__ import annotations

import json

import pytest

from pipeline.gt import read_manifest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _summary(stdout: str) -> dict:
    """The job's JSON summary: the last stdout line that parses as a JSON object."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in the job output:\n{stdout[-2000:]}")


def test_submit_make_gt_smoke(submit_job, tmp_path):
    out = tmp_path / "gt"
    res = submit_job(["python", "-m", "jobs.make_gt", "--smoke-test", "--output", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = _summary(res.stdout)
    assert s["samples"] > 0 and s["skipped_nodata"] > 0
    manifest = read_manifest(str(out))
    assert manifest["complete"] and manifest["counts"]["samples"] == s["samples"]
    assert len(list((out / "shards").glob("part-*.parquet"))) == s["shards"]


def test_submit_train_smoke(submit_job, tmp_path):
    import liif

    storage = tmp_path / "runs"
    res = submit_job(["python", "-m", "jobs.train", "--smoke-test", "--storage-path", str(storage),
                      "--run-name", "submitted"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = _summary(res.stdout)
    assert s["step"] == 6 and s["final_loadable"] is True
    final = storage / "submitted" / "final.safetensors"
    assert s["final"] == str(final) and final.is_file()
    assert (storage / "submitted" / "metrics.csv").read_text().count("\n") == 7  # header + 6
    liif.load_model(final)
