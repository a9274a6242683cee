"""Shared fixtures. Ray settings must be in the environment before ray is imported anywhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

for _k, _v in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep a single-node cluster on 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "OMP_NUM_THREADS": "1",  # 2 cores: one thread per process avoids oversubscription
}.items():
    os.environ.setdefault(_k, _v)

# Ray binds its log handler to the sys.stderr of the moment it is first imported (ray 2.x,
# PlainRayHandler). Imported inside a test that uses capsys, that stream is closed after the
# test and every later Ray log line becomes a '--- Logging error ---' traceback. Importing it
# here binds it to pytest's session-long capture instead.
import ray  # noqa: E402

SHARED_DATA = Path(
    os.environ.get("LIIF_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (research datasets); skips the test when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"shared research data not found at {SHARED_DATA} (set LIIF_SHARED_DATA)")
    return SHARED_DATA


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """An in-process local Ray (4 logical CPUs on loopback), shared by the whole session."""
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    yield ray
    ray.shutdown()


def _start_head(tmp_path_factory) -> tuple[object, dict]:
    """Start ``ray start --head --block`` on loopback with fresh ports; returns (process, info)
    once the dashboard answers, or (process, {"error": why}) after ending the process group."""
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the `ray` command is not installed")
    gcs, dash, agent, client, metrics = (_free_port() for _ in range(5))
    minw = 20000 + (os.getpid() % 100) * 100
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    temp = tmp_path_factory.mktemp("rayhead")
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
           f"--metrics-export-port={metrics}", f"--min-worker-port={minw}",
           f"--max-worker-port={minw + 99}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return proc, {"address": address, "gcs": f"127.0.0.1:{gcs}", "env": env}
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            _end_head(proc)
            return proc, {"error": f"ray start --head exited with {proc.returncode} (logs: {temp})"}
    os.killpg(proc.pid, signal.SIGTERM)
    _end_head(proc)
    return proc, {"error": "ray head did not come up within 90 s"}


def _end_head(proc) -> None:
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # the whole process group: gcs, raylet and workers of this head only
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real ``ray start --head`` on loopback with its own ports; yields the dashboard address.

    Ended by PID (never ``ray stop``, which would kill every Ray process on the machine). A head
    whose dashboard modules time out under heavy CPU load exits with 1; it is tried once more.
    """
    errors = []
    for _ in range(2):
        proc, info = _start_head(tmp_path_factory)
        if "error" not in info:
            break
        errors.append(info["error"])
    else:
        pytest.fail("; ".join(errors))
    yield info
    _end_head(proc)


def _submit_job(ray_head: dict, entrypoint: list[str], *, cwd: str | Path, timeout: float = 300):
    """``ray job submit --working-dir . -- <entrypoint>`` against ``ray_head``; retries the submit
    once if the head was not ready. Returns the CompletedProcess."""
    import shutil
    import subprocess
    import sys
    import time

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    cmd = [ray_bin, "job", "submit", f"--address={ray_head['address']}", "--working-dir", ".",
           "--", *entrypoint]
    for attempt in range(2):
        res = subprocess.run(cmd, cwd=cwd, env=ray_head["env"], capture_output=True, text=True,
                             timeout=timeout)
        if res.returncode == 0 or attempt == 1 or "Connection" not in res.stderr:
            return res
        time.sleep(3)
    return res


@pytest.fixture(scope="session")
def submit_job(ray_head):
    """``submit_job(entrypoint: list[str], cwd=repo_root)`` -> CompletedProcess of ``ray job submit``."""
    root = Path(__file__).resolve().parents[1]

    def run(entrypoint: list[str], *, cwd: str | Path = root, timeout: float = 300):
        return _submit_job(ray_head, entrypoint, cwd=cwd, timeout=timeout)

    return run


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test process: on 2 shared cores, OpenMP barriers between two
    threads make small ops far slower (measured up to 100x under load). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------- tiny checkpoints

TINY_ENCODER = {"name": "edsr-baseline",
                "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 8}}
TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}


def make_tiny_liif(path: Path, seed: int = 0) -> Path:
    """A tiny EDSR-baseline LIIF (halo 8) with seeded random weights, saved as ours."""
    import torch

    import liif

    torch.manual_seed(seed)
    model = liif.LIIF(TINY_ENCODER, imnet_spec=TINY_IMNET)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.15)
    return liif.save_checkpoint(model, path)


@pytest.fixture(scope="session")
def tiny_liif(tmp_path_factory) -> Path:
    """Path of a tiny seeded LIIF checkpoint (shared by the session)."""
    return make_tiny_liif(tmp_path_factory.mktemp("tiny_liif") / "liif.safetensors")


@pytest.fixture(scope="session")
def tiny_ttsr(tmp_path_factory) -> Path:
    """Path of a tiny seeded TTSR checkpoint (1+1+1+1 blocks, 8 features; radius 24 LR px)."""
    import torch

    import liif
    from liif.ttsr import TTSR

    torch.manual_seed(0)
    model = TTSR(num_res_blocks="1+1+1+1", n_feats=8)
    return liif.save_checkpoint(model, tmp_path_factory.mktemp("tiny_ttsr") / "ttsr.safetensors")


def tree_digest(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (or the file itself) -> sha256 of its bytes
    ("dir" for folders): compare before/after to prove nothing was written or destroyed."""
    import hashlib

    out = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[os.path.join(dirpath, name)] = "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback for the session: ``{"endpoint", "options", "fs"}`` with one
    bucket ``liif-test``; ``options`` are the fsspec storage options that reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        import s3fs

        endpoint = f"http://{host}:{port}"
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("liif-test")
        yield {"endpoint": endpoint, "options": options, "fs": fs}
    server.stop()


def cli_exit(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``main(argv)`` of a job as the shell sees it: its exit code, argparse's included."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1


def upscale_cli(argv: list[str]) -> int:
    """``jobs.upscale.main(argv)`` as the shell sees it (:func:`cli_exit`)."""
    from jobs.upscale import main

    return cli_exit(main, argv)


def random_tif(path: Path, size: int = 32, seed: int = 0, low: int = 0) -> Path:
    """A seeded random (3, size, size) uint8 GeoTIFF (EPSG:32618, 10 m pixels) at ``path``."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    data = np.random.default_rng(seed).integers(low, 256, (3, size, size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3,
                       dtype="uint8", crs="EPSG:32618",
                       transform=Affine(10.0, 0, 500000, 0, -10.0, 4e6)) as d:
        d.write(data)
    return path


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    """The job's summary: the last stdout line, as JSON."""
    import json

    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])
