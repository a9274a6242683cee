"""The product's promise: tiled pipeline output == whole-image ``liif.upscale`` output (no seams).

Tiny randomised EDSR-baseline-style (halo 8) and RDN-style (halo 9) models; float32 Zarr inputs in
0..1 so the stored output is the model output itself; image sizes that are not multiples of the
tile, several tiles per axis, and an image smaller than one tile. A negative control shows that
the comparison detects seams (a plan without halo differs), so the exactness checks can fail.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import liif
from pipeline.geometry.tiling import plan_tiles
from pipeline.io.sources import SourceSpec
from pipeline.io.values import to_unit
from pipeline.io.zarr_output import OutputSpec
from pipeline.upscale import LiifTileJob, TileWorker, UpscaleConfig, run_upscale

ENCODERS = {
    "edsr": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 8}},
    "rdn": {"name": "rdn", "args": {"no_upsampling": True, "G0": 8, "D": 2, "C": 2, "G": 4}},
}
HALOS = {"edsr": 8, "rdn": 9}
IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}
TOL = 1e-5


def make_tiny_checkpoint(path: Path, kind: str = "edsr", seed: int = 0, std: float = 0.15) -> Path:
    """Save a tiny LIIF with seeded N(0, std) weights (outputs vary, mostly inside (0, 1))."""
    torch.manual_seed(seed)
    model = liif.LIIF(ENCODERS[kind], imnet_spec=IMNET)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, std)
    return liif.save_checkpoint(model, path)


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> str:
    """Write ``data`` as a Zarr v3 array at ``path``; returns the path as a string."""
    if chunks is None:
        chunks = tuple(min(s, 16) if i else s for i, s in enumerate(data.shape))
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks)
    arr[...] = data
    return str(path)


def read_output(uri: str) -> np.ndarray:
    """The pipeline output array ``(C, H, W)``."""
    return np.asarray(zarr.open_array(uri, path="image", mode="r")[...])


def whole(ckpt: Path, image: np.ndarray, **kw: object) -> np.ndarray:
    """Whole-image ``liif.upscale`` of a (3, h, w) float image in [0, 1]."""
    model = liif.load_model(ckpt)
    return liif.upscale(model, torch.from_numpy(np.ascontiguousarray(image)), **kw).numpy()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per encoder kind."""
    d = tmp_path_factory.mktemp("ckpt")
    return {k: make_tiny_checkpoint(d / f"{k}.safetensors", k, seed=i) for i, k in enumerate(ENCODERS)}


def run(ckpt: Path, src: str, out: Path, *, tile: int, chunk: int, shard: int | None = None,
        **kw: object) -> dict:
    """In-process pipeline run; returns the summary."""
    cfg = UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(out)), model=str(ckpt),
                        executor="in-process", tile=tile, chunk=chunk, shard=shard, progress=False,
                        **{"precision": "fp32", **kw})
    return run_upscale(cfg)


# (id, in_shape, kwargs for scale/size, tile, chunk)
CASES = [
    ("x1.5", (37, 53), {"scale": 1.5}, 32, 16),
    ("x2", (23, 31), {"scale": 2.0}, 16, 16),
    ("x2.7", (19, 27), {"scale": 2.7}, 32, 16),
    ("x4", (23, 31), {"scale": 4.0}, 32, 16),
    ("x7.3", (9, 11), {"scale": 7.3}, 32, 16),
    ("x12", (7, 9), {"scale": 12.0}, 32, 16),
    ("x30", (6, 7), {"scale": 30.0}, 64, 32),
    ("x2,3.5", (17, 13), {"scale": (2.0, 3.5)}, 16, 16),
    ("size50x77", (21, 29), {"size": (50, 77)}, 32, 16),
]


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize(("case", "in_shape", "target", "tile", "chunk"), CASES,
                         ids=[c[0] for c in CASES])
def test_tiled_equals_whole(tmp_path: Path, ckpts: dict[str, Path], kind: str, case: str,
                            in_shape: tuple[int, int], target: dict, tile: int, chunk: int) -> None:
    """Several tiles per axis, image not a multiple of the tile: max |tiled - whole| <= 1e-5."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{case}".encode()))
    img = rng.random((3, *in_shape), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    summary = run(ckpts[kind], src, tmp_path / "out.zarr", tile=tile, chunk=chunk, **target)
    out = read_output(str(tmp_path / "out.zarr"))
    ref = whole(ckpts[kind], img, **target)
    H, W = ref.shape[1:]
    assert out.shape == ref.shape == (3, *summary["out_shape"])
    assert summary["halo"] == HALOS[kind]
    # the plan really has several tiles per axis and a partial last tile
    assert math.ceil(H / tile) >= 2 and math.ceil(W / tile) >= 2
    assert summary["tiles"] == math.ceil(H / tile) * math.ceil(W / tile)
    assert H % tile or W % tile
    # the model output varies across pixels (the comparison is meaningful)
    assert ref.std() > 0.02 and ((ref > 0) & (ref < 1)).mean() > 0.5
    assert np.abs(out.astype(np.float64) - ref).max() <= TOL


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_image_smaller_than_one_tile(tmp_path: Path, ckpts: dict[str, Path], kind: str) -> None:
    """A 11x13 input at x2.7 fits in one 64-px tile; the result still equals the whole image."""
    img = np.random.default_rng(7).random((3, 11, 13), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    summary = run(ckpts[kind], src, tmp_path / "out.zarr", tile=64, chunk=16, scale=2.7)
    assert summary["tiles"] == 1
    out = read_output(str(tmp_path / "out.zarr"))
    ref = whole(ckpts[kind], img, scale=2.7)
    assert out.shape == ref.shape == (3, 30, 35)
    assert np.abs(out.astype(np.float64) - ref).max() <= TOL


def test_sharded_output_equals_whole(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    """Tiles that write whole shards (shard 32 of 16-px chunks) give the same exact result."""
    img = np.random.default_rng(3).random((3, 29, 23), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    summary = run(ckpts["edsr"], src, tmp_path / "out.zarr", tile=32, chunk=16, shard=32, scale=3.3)
    assert summary["tiles"] == 3 * 3
    out = read_output(str(tmp_path / "out.zarr"))
    ref = whole(ckpts["edsr"], img, scale=3.3)
    assert np.abs(out.astype(np.float64) - ref).max() <= TOL


def test_downscale_equals_whole(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    """Scale < 1 (allowed by the CLI) tiles exactly too: 61x47 at x0.6."""
    img = np.random.default_rng(4).random((3, 61, 47), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    summary = run(ckpts["rdn"], src, tmp_path / "out.zarr", tile=16, chunk=16, scale=0.6)
    assert summary["tiles"] == 3 * 2
    out = read_output(str(tmp_path / "out.zarr"))
    ref = whole(ckpts["rdn"], img, scale=0.6)
    assert np.abs(out.astype(np.float64) - ref).max() <= TOL


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_uint8_output_is_rounded_whole(tmp_path: Path, ckpts: dict[str, Path], kind: str) -> None:
    """uint8 in, uint8 out: output == rint(clip(whole * 255)), except possibly at exact .5 ties."""
    raw = np.random.default_rng(11).integers(0, 256, (3, 23, 31), dtype=np.uint8)
    src = write_zarr(tmp_path / "in.zarr", raw)
    summary = run(ckpts[kind], src, tmp_path / "out.zarr", tile=32, chunk=16, scale=2.7)
    assert summary["dtype"] == "uint8" and summary["tiles"] == 2 * 3
    out = read_output(str(tmp_path / "out.zarr"))
    assert out.dtype == np.uint8
    ref = whole(ckpts[kind], to_unit(raw, (0.0, 255.0)), scale=2.7).astype(np.float64) * 255
    expected = np.clip(np.rint(ref), 0, 255)
    diff = np.abs(out.astype(np.float64) - expected)
    near_tie = np.abs(ref - np.floor(ref) - 0.5) < 1e-3
    assert diff.max() <= 1
    assert not (diff > 0)[~near_tie].any(), "uint8 output differs from rounded whole-image output"
    assert len(np.unique(out)) > 50  # real variation, not a constant image


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_missing_halo_would_show_seams(tmp_path: Path, ckpts: dict[str, Path], kind: str) -> None:
    """Negative control: tiles read WITHOUT the halo differ from the whole image by far more than
    the tolerance, so the exactness tests above are able to fail."""
    img = np.random.default_rng(5).random((3, 23, 31), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    ref = whole(ckpts[kind], img, scale=4.0)
    job = LiifTileJob(source=SourceSpec(src), output_uri=str(tmp_path / "unused.zarr"),
                  output_storage_options=None, model=str(ckpts[kind]), in_shape=(23, 31),
                  out_shape=(92, 124), value_range=(0.0, 1.0), out_dtype="float32",
                  precision="fp32")
    worker = TileWorker(job)
    for halo, expect_exact in ((HALOS[kind], True), (0, False)):
        plan = plan_tiles((23, 31), (92, 124), tile=32, halo=halo, chunk=16)
        out = np.zeros_like(ref)
        for t in plan.tiles():
            out[:, t.out_window.row0:t.out_window.row1, t.out_window.col0:t.out_window.col1] = \
                worker.upscale_window(t)
        err = float(np.abs(out - ref).max())
        assert (err <= TOL) == expect_exact, f"halo {halo}: max error {err}"
