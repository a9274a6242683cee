"""Reference-based x4 (TTSR) pipeline: tiled == whole image, halo, receptive radius, alignment
(georeferenced and pixel grid), executors, resume and error cases. A tiny TTSR (1+1+1+1 blocks,
8 features) and tiny images keep it fast on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine

import liif
from jobs.upscale import main
from liif.ttsr import TTSR, reference_upscale
from liif.ttsr.receptive import ttsr_output_reach, ttsr_receptive_radius
from pipeline.errors import (
    BandSelectionError,
    ConfigError,
    InputNotFoundError,
    OutputExistsError,
)
from pipeline.io.sources import SourceSpec
from pipeline.io.values import fill_invalid
from pipeline.io.zarr_output import OutputSpec
from pipeline.refsr import (
    CrsMismatchError,
    RefAlignment,
    ReferenceAlignmentError,
    ReferenceCoverageError,
    RefSRConfig,
    ResolutionRatioError,
    align_reference,
    prepare_refsr,
    run_refsr,
)

TOL = 1e-5
CRS_A, CRS_B = "EPSG:32633", "EPSG:32634"
X0, Y0 = 500_000.0, 4_600_000.0  # LR origin (top-left corner), metres
CLI = ["--executor", "in-process", "--no-progress", "--threads-per-worker", "1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TTSR (receptive radius 24 LR px) with seeded random weights, saved as ours."""
    torch.manual_seed(0)
    model = TTSR(num_res_blocks="1+1+1+1", n_feats=8)
    return liif.save_checkpoint(model, tmp_path_factory.mktemp("ttsr") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> TTSR:
    return liif.load_model(ckpt)


def write_zarr(path: Path, data: np.ndarray, attrs: dict | None = None) -> str:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                            chunks=(data.shape[0], 16, 16), attributes=attrs or {})
    arr[...] = data
    return str(path)


def write_tif(path: Path, data: np.ndarray, transform: Affine, crs: str | None) -> str:
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype,
                       crs=CRS.from_user_input(crs) if crs else None, transform=transform) as dst:
        dst.write(data)
    return str(path)


def read_output(uri: str | Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(uri), path="image", mode="r")[...])


def records(out: Path) -> dict[str, dict]:
    d = out / "_manifest"
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json") if p.name != "zarr.json"}


def config(ckpt: Path, src: str, ref: str, out: Path, **kw: object) -> RefSRConfig:
    base = dict(tile=32, chunk=16, executor="in-process", threads_per_worker=1, progress=False)
    base.update(kw)
    return RefSRConfig(source=SourceSpec(src), reference=SourceSpec(ref),
                       output=OutputSpec(str(out)), model=str(ckpt), **base)


def whole(model: TTSR, lr: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Whole-image TTSR of float (3, h, w) / (3, Hr, Wr) arrays in [0, 1]."""
    return reference_upscale(model, torch.from_numpy(lr), torch.from_numpy(ref)).numpy()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, ckpt: Path, model: TTSR) -> dict:
    """LR 20x24 + pixel-grid reference 80x96 (float32 Zarr), their whole-image TTSR output and
    the in-process tiled run with the whole reference searched by every tile (3x3 tiles)."""
    d = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(1)
    lr = rng.random((3, 20, 24), dtype=np.float32)
    ref = rng.random((3, 80, 96), dtype=np.float32)
    src, refp = write_zarr(d / "lr.zarr", lr), write_zarr(d / "ref.zarr", ref)
    summary = run_refsr(config(ckpt, src, refp, d / "out.zarr", ref_margin=None))
    return {"d": d, "lr": lr, "ref": ref, "src": src, "refp": refp, "summary": summary,
            "whole": whole(model, lr, ref), "out": read_output(d / "out.zarr")}


# -------------------------------------------------------------------- tiled == whole image


def test_tiled_equals_whole_image_with_global_reference(small: dict) -> None:
    """Every tile searches the whole reference: the tiled output equals ``reference_upscale``
    of the whole image (9 tiles, each writing its own chunks)."""
    s = small["summary"]
    assert (s["tiles"], s["tiles_run"], s["global_search"]) == (9, 9, True)
    assert s["alignment"] == "pixel" and s["ref_offset"] == [0, 0] and s["halo"] == 24
    assert small["out"].shape == (3, 80, 96)
    assert np.abs(small["out"] - small["whole"]).max() <= TOL


def test_output_attrs_record_model_weights_and_reference(small: dict, ckpt: Path) -> None:
    attrs = zarr.open_array(str(small["d"] / "out.zarr"), path="image").attrs
    from liif.checkpoint import file_sha256

    assert attrs["model"]["name"] == "ttsr"
    assert attrs["model"]["args"]["num_res_blocks"] == [1, 1, 1, 1]
    assert attrs["model"]["weights_sha256"] == file_sha256(ckpt)
    assert attrs["model"]["receptive_radius"] == 24
    assert attrs["reference_uri"] == small["refp"]
    assert attrs["reference"]["alignment"]["method"] == "pixel"
    assert attrs["scale"] == [4.0, 4.0] and attrs["in_shape"] == [20, 24]


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LR 16x80 (wider than a tile plus two halos) and its 64x320 pixel-grid reference."""
    d = tmp_path_factory.mktemp("strip")
    rng = np.random.default_rng(2)
    lr = rng.random((3, 16, 80), dtype=np.float32)
    ref = rng.random((3, 64, 320), dtype=np.float32)
    return {"d": d, "lr": lr, "ref": ref, "src": write_zarr(d / "lr.zarr", lr),
            "refp": write_zarr(d / "ref.zarr", ref)}


def test_halo_cropped_tiles_equal_whole_image(strip: dict, ckpt: Path, model: TTSR) -> None:
    """Tiles of 16 LR columns read 16 + 2 * (24 + 2..3) columns, fewer than the 80 of the image,
    so the halo is really cropped off; with the whole reference searched the output still
    equals the whole-image TTSR."""
    out = strip["d"] / "global.zarr"
    # a small search budget makes each tile walk the reference in chunks of ~60 positions:
    # exact search gives the same result whatever the chunk
    s = run_refsr(config(ckpt, strip["src"], strip["refp"], out, tile=64, ref_margin=None,
                         test_hooks={"search_bytes": 8 * 1100 * 60}))
    assert s["tiles"] == 5 and s["global_search"]
    widths = {k: r["in_pixels"] // 16 for k, r in records(out).items()}
    assert max(widths.values()) < 80, widths  # the middle tiles do not read the whole image
    assert np.abs(read_output(out) - whole(model, strip["lr"], strip["ref"])).max() <= TOL


def test_local_margin_is_ttsr_restricted_to_each_tiles_reference_window(
        strip: dict, ckpt: Path, model: TTSR) -> None:
    """With margin 1 each tile equals whole-image TTSR of the *whole* LR with the reference
    restricted to that tile's window (exact: the halo is wide enough), which differs from the
    global search (the approximation). Without the halo a tile would differ: the check bites."""
    out = strip["d"] / "local.zarr"
    s = run_refsr(config(ckpt, strip["src"], strip["refp"], out, tile=64, ref_margin=1))
    assert not s["global_search"]
    result, lr = read_output(out), torch.from_numpy(strip["lr"])
    recs = records(out)
    assert len(recs) == 5
    for key, rec in recs.items():
        o, w = rec["out_window"], rec["ref_window"]
        # footprint cols [16 tx, 16 tx + 16) plus 1 LR px of margin, clamped: 4x in ref px
        tx = int(key.split("_")[1])
        assert (w["row0"], w["row1"]) == (0, 64)
        assert (w["col0"], w["col1"]) == (max(0, 64 * tx - 4), min(320, 64 * tx + 68))
        ref_win = torch.from_numpy(strip["ref"][:, w["row0"]:w["row1"], w["col0"]:w["col1"]])
        oracle = reference_upscale(model, lr, ref_win).numpy()
        rows, cols = slice(o["row0"], o["row1"]), slice(o["col0"], o["col1"])
        assert np.abs(result[:, rows, cols] - oracle[:, rows, cols]).max() <= TOL, key
        if key == "0_2":
            no_halo = reference_upscale(model, lr[:, :, 32:48], ref_win).numpy()
            assert np.abs(no_halo - oracle[:, rows, cols]).max() > 1e-3
    global_out = whole(model, strip["lr"], strip["ref"])
    assert np.abs(result - global_out).max() > 1e-3


def test_worker_bounds_the_search_block(strip: dict, ckpt: Path, tmp_path: Path) -> None:
    """The worker shrinks the model's search chunk so that a chunk x query-positions float64
    block fits ``search_bytes``, never above the checkpoint's own chunk."""
    from pipeline.refsr import RefTileJob, RefTileWorker

    job = RefTileJob(source=SourceSpec(strip["src"]), reference=SourceSpec(strip["refp"]),
                     alignment=RefAlignment("pixel", 0, 0, (16, 80), (64, 320)),
                     output_uri=str(tmp_path / "unused.zarr"), output_storage_options=None,
                     model=str(ckpt), in_shape=(16, 80), out_shape=(64, 320),
                     value_range=(0.0, 1.0),
                     ref_value_range=(0.0, 1.0), out_dtype="float32", search_bytes=8 * 1000 * 37)
    worker = RefTileWorker(job)
    try:
        assert worker.max_search_chunk == 4096
        worker._set_search_chunk(1000)
        assert worker.model.search_chunk == 37
        worker._set_search_chunk(1)
        assert worker.model.search_chunk == 4096
    finally:
        worker.close()


# ------------------------------------------------------------------------ receptive radius


def test_receptive_radius_values() -> None:
    assert ttsr_receptive_radius((1, 1, 1, 1)) == 24
    assert ttsr_receptive_radius((16, 16, 8, 4)) == 102
    # one more x1 block after the texture fusion: two 3x3 convs of 4 output px each; a small
    # SFE is hidden behind the texture path (search + transfer reach 27 output px)
    assert ttsr_output_reach((1, 2, 1, 1)) - ttsr_output_reach((1, 1, 1, 1)) == 8
    assert ttsr_output_reach((2, 1, 1, 1)) == ttsr_output_reach((1, 1, 1, 1))
    with pytest.raises(ValueError, match="num_res_blocks"):
        ttsr_receptive_radius((1, 1, 1))


def test_receptive_radius_bounds_the_effect_of_one_lr_pixel(ckpt: Path) -> None:
    """Change one LR pixel (reference fixed): output pixels change only within 4 * radius of
    its 4x4 block, and bit-identical elsewhere. Float64, He-scaled weights and the unclamped
    output keep far, weak dependencies above rounding, so the observed reach comes close to
    the derived bound (which rounds each stage up; hard-attention paths need an argmax flip)."""
    from liif.ttsr.infer import prepare_ttsr_inputs

    model = liif.load_model(ckpt).double().train()  # train mode: no final clamp
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.weight.requires_grad:
                fan_in = conv.weight[0].numel()
                conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    radius = ttsr_receptive_radius(model.num_res_blocks)
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(3, 56, 56, generator=g, dtype=torch.float64) * 0.8 + 0.1
    ref = torch.rand(3, 32, 48, generator=g, dtype=torch.float64)

    def sr(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(*prepare_ttsr_inputs(x, ref))[0]

    r, c = 28, 27
    lr2 = lr.clone()
    lr2[:, r, c] = 1.0 - lr2[:, r, c]
    changed = (sr(lr2) != sr(lr)).any(0)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert len(ys), "the perturbation changed nothing"
    assert 4 * (r - radius) >= 0 and 4 * (r + 1 + radius) <= 224  # the bound lies inside
    assert 4 * (c - radius) >= 0 and 4 * (c + 1 + radius) <= 224
    reach = {"up": r - int(ys.min()) // 4, "down": int(ys.max()) // 4 - r,
             "left": c - int(xs.min()) // 4, "right": int(xs.max()) // 4 - c}
    assert max(reach.values()) <= radius, (reach, radius)
    assert min(reach.values()) >= radius - 5, (reach, radius)  # the bound is nearly tight


# ------------------------------------------------------------------------------- alignment


def _geo_pair(d: Path, *, ref_res: float = 10.0, shift_px: tuple[float, float] = (12, 6),
              ref_shape: tuple[int, int] = (104, 112), crs_ref: str = CRS_A, seed: int = 4
              ) -> tuple[str, str, np.ndarray, np.ndarray]:
    """LR 20x24 at 40 m and a reference at ``ref_res`` whose origin lies ``shift_px`` (rows,
    cols) reference pixels above/left of the LR origin. uint8 GeoTIFFs."""
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    ref = rng.integers(0, 256, (3, *ref_shape), dtype=np.uint8)
    t_lr = Affine(40.0, 0, X0, 0, -40.0, Y0)
    t_ref = Affine(ref_res, 0, X0 - shift_px[1] * ref_res, 0, -ref_res, Y0 + shift_px[0] * ref_res)
    return (write_tif(d / "lr.tif", lr, t_lr, CRS_A), write_tif(d / "ref.tif", ref, t_ref, crs_ref),
            lr, ref)


def test_georeferenced_alignment_maps_windows_and_equals_whole(tmp_path: Path, ckpt: Path,
                                                               model: TTSR) -> None:
    """Reference at 10 m whose origin is 12 rows / 6 cols of reference pixels before the 40 m LR
    origin: LR pixel (r, c) is reference block (12 + 4r, 6 + 4c). Tile windows follow, and with
    the whole reference searched the output equals TTSR on the aligned reference crop."""
    src, refp, lr, ref = _geo_pair(tmp_path)
    out = tmp_path / "out.zarr"
    s = run_refsr(config(ckpt, src, refp, out, ref_margin=2))
    assert s["alignment"] == "georef" and s["ref_offset"] == [12, 6]
    # tile (0, 0): footprint LR [0, 8) x [0, 8), margin 2 -> blocks rows [-2, 10) (3 blocks
    # exist above row 0), cols [-1, 10) (only one whole block left of col 0: 6 // 4 = 1)
    w = records(out)["0_0"]["ref_window"]
    assert (w["row0"], w["row1"], w["col0"], w["col1"]) == (4, 52, 2, 46)
    # tile (2, 2): footprint LR [16, 20) x [16, 24), margin 2 -> rows [14, 22), cols [14, 26):
    # the reference has (104 - 12) // 4 = 23 block rows and (112 - 6) // 4 = 26 block cols
    w = records(out)["2_2"]["ref_window"]
    assert (w["row0"], w["row1"], w["col0"], w["col1"]) == (12 + 56, 12 + 88, 6 + 56, 6 + 104)
    attrs = zarr.open_array(str(out), path="image").attrs
    assert CRS.from_user_input(attrs["crs"]) == CRS.from_user_input(CRS_A)
    assert attrs["transform"] == [10.0, 0.0, X0, 0.0, -10.0, Y0]

    out_g = tmp_path / "global.zarr"
    run_refsr(config(ckpt, src, refp, out_g, ref_margin=None))
    crop = ref[:, 0:12 + 4 * 23, 2:6 + 4 * 26].astype(np.float32) / 255  # whole blocks only
    expected = np.rint(whole(model, lr.astype(np.float32) / 255, crop) * 255)
    got = read_output(out_g).astype(np.float64)
    assert read_output(out_g).dtype == np.uint8
    assert np.abs(got - expected).max() <= 1  # uint8 rounding of equal floats (within 1e-5)


@pytest.mark.parametrize(
    ("ref_res", "shift", "error", "match"),
    [
        (20.0, (0, 0), ResolutionRatioError, r"ratio input/reference is 2 "),
        (10.4, (0, 0), ResolutionRatioError, r"not 4 within"),
        (10.0, (0.5, 0), ReferenceAlignmentError, r"not aligned.*row 0\.5"),
        (10.0, (-4, 0), ReferenceCoverageError, r"does not cover the input footprint"),
    ],
)
def test_georeferenced_errors(tmp_path: Path, ckpt: Path, ref_res: float, shift: tuple,
                              error: type, match: str) -> None:
    src, refp, _, _ = _geo_pair(tmp_path, ref_res=ref_res, shift_px=shift, ref_shape=(96, 104))
    out = tmp_path / "out.zarr"
    with pytest.raises(error, match=match):
        run_refsr(config(ckpt, src, refp, out))
    assert not out.exists()  # nothing written


def test_crs_mismatch_is_refused(tmp_path: Path, ckpt: Path) -> None:
    src, refp, _, _ = _geo_pair(tmp_path, crs_ref=CRS_B)
    with pytest.raises(CrsMismatchError, match="EPSG:32633.*differs.*EPSG:32634"):
        prepare_refsr(config(ckpt, src, refp, tmp_path / "out.zarr"))


def test_ratio_within_tolerance_is_accepted() -> None:
    t_lr = (40.0, 0.0, X0, 0.0, -40.0, Y0)
    t_ref = (10.0 + 1e-7, 0.0, X0 - 80.0, 0.0, -10.0, Y0 + 40.0)
    al = align_reference((20, 24), None, t_lr, (100, 110), None, t_ref)
    assert (al.method, al.row_off, al.col_off) == ("georef", 4, 8)
    with pytest.raises(CrsMismatchError, match="has a CRS"):
        align_reference((20, 24), CRS_A, t_lr, (100, 110), None, t_ref)


def test_pixel_grid_alignment_png_reference_and_nodata(tmp_path: Path, ckpt: Path,
                                                       model: TTSR) -> None:
    """No georeference: reference pixel (4r, 4c) is LR pixel (r, c); a PNG reference larger than
    4x the LR gives windows past the LR footprint; LR nodata pixels stay nodata."""
    rng = np.random.default_rng(5)
    lr = rng.integers(1, 60000, (3, 20, 24), dtype=np.uint16)
    lr[:, 4:6, 8:10] = 0
    ref = rng.integers(0, 256, (90, 104, 3), dtype=np.uint8)
    src = write_zarr(tmp_path / "lr.zarr", lr, attrs={"nodata": 0})
    Image.fromarray(ref).save(tmp_path / "ref.png")
    out = tmp_path / "out.zarr"
    s = run_refsr(config(ckpt, src, str(tmp_path / "ref.png"), out, ref_margin=3))
    assert s["alignment"] == "pixel" and s["ref_offset"] == [0, 0]
    # tile (2, 2): footprint LR [16, 20) x [16, 24) + 3 -> blocks rows [13, 22) (90 // 4 = 22),
    # cols [13, 26) (104 // 4 = 26): past the LR footprint where the reference allows
    w = records(out)["2_2"]["ref_window"]
    assert (w["row0"], w["row1"], w["col0"], w["col1"]) == (52, 88, 52, 104)
    result = read_output(out)
    assert result.dtype == np.uint16
    assert (result[:, 16:24, 32:40] == 0).all()
    assert (result[:, :16] != 0).any()

    out_g = tmp_path / "global.zarr"
    run_refsr(config(ckpt, src, str(tmp_path / "ref.png"), out_g, ref_margin=None))
    lr_unit = fill_invalid(lr.astype(np.float32) / 65535, (lr == 0).all(axis=0))
    ref_unit = ref.transpose(2, 0, 1)[:, :88, :104].astype(np.float32) / 255
    expected = np.rint(whole(model, lr_unit, ref_unit) * 65535)
    got = read_output(out_g).astype(np.float64)
    valid = np.ones(got.shape[1:], bool)
    valid[16:24, 32:40] = False
    assert np.abs(got - expected)[:, valid].max() <= 1


def test_one_georeferenced_raster_falls_back_to_pixel_grid_with_warning(tmp_path: Path) -> None:
    t = (40.0, 0.0, X0, 0.0, -40.0, Y0)
    with pytest.warns(UserWarning, match="only the input is georeferenced"):
        al = align_reference((20, 24), CRS_A, t, (80, 96), None, None)
    assert al == RefAlignment("pixel", 0, 0, (20, 24), (80, 96))
    with pytest.raises(ReferenceAlignmentError, match="needs both rasters georeferenced"):
        align_reference((20, 24), CRS_A, t, (80, 96), None, None, mode="georef")


def test_reference_window_geometry() -> None:
    al = RefAlignment("georef", 6, 3, (10, 12), (50, 60))
    # blocks: rows [-1, 11), cols [0, 14) (3 // 4 = 0 whole blocks left of the LR origin)
    assert al.blocks() == (-1, 11, 0, 14) and al.covers_input()
    w = al.ref_window((2, 5), (0, 4), margin=2)
    assert (w.row0, w.row1, w.col0, w.col1) == (6 + 0, 6 + 28, 3, 3 + 24)
    assert al.full_window().shape == (48, 56)
    assert al.ref_window((0, 10), (0, 12), margin=100) == al.full_window()


# ------------------------------------------------------------------------- input errors


def test_error_cases_write_nothing(tmp_path: Path, ckpt: Path, small: dict) -> None:
    out = tmp_path / "out.zarr"
    with pytest.raises(InputNotFoundError, match="reference not found.*nope.tif"):
        run_refsr(config(ckpt, small["src"], str(tmp_path / "nope.tif"), out))
    too_small = write_zarr(tmp_path / "small_ref.zarr", small["ref"][:, :79])
    with pytest.raises(ReferenceCoverageError, match=r"\(79 x 96 px\) does not cover.*too small"):
        run_refsr(config(ckpt, small["src"], too_small, out))
    one_band = write_zarr(tmp_path / "grey.zarr", small["ref"][:1])
    with pytest.raises(BandSelectionError, match="1 band.*input has 3"):
        run_refsr(config(ckpt, small["src"], one_band, out))
    with pytest.raises(ConfigError, match="not a reference-based TTSR model"):
        run_refsr(config("edsr-baseline-liif", small["src"], small["refp"], out))
    with pytest.raises(ConfigError, match="ref_margin -1"):
        config(ckpt, small["src"], small["refp"], out, ref_margin=-1)
    assert not out.exists()


def test_existing_output_refused_then_resume_reruns_only_missing_tiles(
        tmp_path: Path, ckpt: Path, small: dict) -> None:
    out = tmp_path / "out.zarr"
    shutil.copytree(small["d"] / "out.zarr", out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_refsr(config(ckpt, small["src"], small["refp"], out, ref_margin=None))
    (out / "_manifest" / "1_2.json").unlink()
    arr = zarr.open_array(str(out), path="image", mode="r+")
    arr[:, 32:64, 64:96] = 7.0
    s = run_refsr(config(ckpt, small["src"], small["refp"], out, ref_margin=None, resume=True))
    assert (s["tiles_run"], s["tiles_skipped"]) == (1, 8)
    assert np.array_equal(read_output(out), small["out"])
    with pytest.raises(ConfigError, match="fingerprint differs"):  # other margin: other job
        run_refsr(config(ckpt, small["src"], small["refp"], out, ref_margin=2, resume=True))


def test_cli_reference_option(tmp_path: Path, ckpt: Path, small: dict,
                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.zarr"
    args = ["--input", small["src"], "--reference", small["refp"], "--output", str(out),
            "--model", str(ckpt), "--tile", "32", "--chunk", "16", "--ref-margin", "all", *CLI]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_search"] and summary["reference"] == small["refp"]
    assert np.abs(read_output(out) - small["whole"]).max() <= TOL
    assert main(args) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--overwrite", "--scale", "3"])
    assert "fixed x4" in capsys.readouterr().err
    bad = ["--input", small["src"], "--reference", str(tmp_path / "missing.zarr"), "--output",
           str(tmp_path / "o2.zarr"), "--model", str(ckpt), *CLI]
    assert main(bad) == 2
    assert "reference not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- Ray


@pytest.mark.ray
def test_ray_executor_equals_in_process(ray_local, tmp_path: Path, ckpt: Path,
                                        small: dict) -> None:
    """Two Ray actors hosting RefTileWorker write the same output as the in-process run."""
    out = tmp_path / "ray.zarr"
    s = run_refsr(config(ckpt, small["src"], small["refp"], out, ref_margin=None,
                         executor="ray", workers=2))
    assert s["executor"] == "ray" and s["tiles_run"] == 9
    assert np.abs(read_output(out) - small["out"]).max() <= TOL
    assert len({r["worker"] for r in records(out).values()}) == 2
