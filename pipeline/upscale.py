"""The LIIF family: upscale a huge image by any scale, tile by tile (:func:`run_upscale`).

The family supplies what differs from the engine (:mod:`pipeline.run.engine`): its config, its
plan (the output size from a scale or a size, the model's ``halo``, balanced tiles) and
:class:`TileWorker`, whose :meth:`TileWorker.infer` encodes a window and decodes the tile's
output pixels in the global frame, which makes tiled output equal to whole-image output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry.affine import scaled_transform
from pipeline.geometry.tiling import (
    Tile,
    TilePlan,
    Window,
    balanced_plan,
    check_output_size,
    default_tile_for,
    out_size_for_scale,
    plan_tiles,
    scale_of,
)
from pipeline.io.sources import SourceInfo, SourceSpec, probe_source
from pipeline.io.values import default_value_range, merge_groups, parse_value_range
from pipeline.io.zarr_output import PRODUCTS_GROUP, ZarrOutput
from pipeline.run.engine import ExecutorFactory, JobPlan, Product, Role, model_location, run_job
from pipeline.run.options import DEFAULT_MAX_OUTPUT_PIXELS, JobOptions
from pipeline.run.worker import BaseTileWorker, TileJob

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "LIIF_FAMILY", "LiifTileJob", "TileWorker",
           "UpscaleConfig", "canonical", "prepare", "run_upscale"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class UpscaleConfig(JobOptions):
    """One LIIF upscale job: the shared options plus the input, the size (exactly one of
    ``scale`` / ``size`` ``(H, W)``), the model, the value range and the decode precision."""

    source: SourceSpec
    scale: float | tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    model: str = "edsr-baseline-liif"
    value_range: tuple[float, float] | None = None
    precision: str = "auto"  # bf16 where the hardware has it natively, else fp32
    #: further products from the same tiles: scales when ``scale`` is given, sizes (H, W) when
    #: ``size`` is; the largest output is ``image``, the others ``scales/<label>/image``
    products: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.scale is None) == (self.size is None):
            raise ConfigError(f"give exactly one of scale or size (got scale={self.scale!r}, "
                              f"size={self.size!r})")
        if self.products and self.working_output:
            raise ConfigError("several scales need a Zarr --output (a .tif --output holds one "
                              "image); write the Zarr and export each product from it")
        labels = [product_label(v, self.scale is not None)
                  for v in (self.scale if self.scale is not None else self.size, *self.products)]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"the output sizes {labels} repeat one: give each once")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of auto, fp32, bf16, fp16")


@dataclass(frozen=True, kw_only=True)
class LiifTileJob(TileJob):
    """The LIIF worker's job: the shared fields plus the decode precision and query chunk."""

    precision: str = "auto"
    chunk_pixels: int = 4096


class TileWorker(BaseTileWorker):
    """The LIIF family: encode the window, decode the tile's output pixels in the global frame.

    The decode precision is resolved on the worker's own device (``auto``: bf16 only where it is
    native, :func:`liif.precision.resolve_precision`); every record says which ran and why.
    """

    job: LiifTileJob

    def load_model(self) -> Any:
        from liif.precision import resolve_precision

        self.precision, self.precision_why = resolve_precision(self.job.precision, self.device)
        return super().load_model()

    def infer(self, tile: Tile, unit: np.ndarray, more: Any = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        outs, extra = self.infer_targets(tile.in_window, unit,
                                         [(tile.out_window, self.job.out_shape)])
        return outs[0], extra

    def infer_targets(self, window: Window, unit: np.ndarray,
                      targets: list[tuple[Window, tuple[int, int]]]
                      ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Encode ``unit`` (input ``window``) once per band group and decode every target
        ``(out window, out shape)`` from the same latents, in the global frame of each size."""
        import torch

        from liif.infer import decode, first_map, normalize

        job = self.job
        x = torch.from_numpy(np.ascontiguousarray(unit)).to(self.device)
        per_target: list[list[np.ndarray]] = [[] for _ in targets]
        with torch.inference_mode():
            for g in self.groups:
                img = normalize(x[list(g)]).unsqueeze(0)
                feat = self.model.encode(img)
                first = first_map(self.model, feat, self.precision)  # shared by every size
                for outs, (ow, shape) in zip(per_target, targets, strict=True):
                    pred = decode(self.model, feat, in_shape=job.in_shape, out_shape=shape,
                                  rows=(ow.row0, ow.row1), cols=(ow.col0, ow.col1),
                                  offset=(window.row0, window.col0),
                                  chunk_pixels=job.chunk_pixels, precision=self.precision,
                                  first=first)[0]
                    outs.append((pred * 0.5 + 0.5).clamp_(0, 1).cpu().numpy())
        bands = tuple(range(self.source.shape[0]))
        merged = [merge_groups(outs, self.groups, bands) for outs in per_target]
        return merged, {"precision": self.precision, "precision_why": self.precision_why}


def product_label(value: Any, is_scale: bool) -> str:
    """``x4``, ``x2.5``, ``x2_3`` for scales (SY, SX); ``4000x3000`` (W x H) for sizes."""
    if is_scale:
        sy, sx = (value, value) if not isinstance(value, tuple | list) else value
        return f"x{float(sy):g}" if float(sy) == float(sx) else f"x{float(sy):g}_{float(sx):g}"
    h, w = value
    return f"{int(w)}x{int(h)}"


def _out_shape(cfg: UpscaleConfig, value: Any, in_shape: tuple[int, int]) -> tuple[int, int]:
    try:
        shape = (out_size_for_scale(in_shape, value) if cfg.scale is not None
                 else (int(value[0]), int(value[1])))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if min(shape) < 1:
        raise ConfigError(f"output size {shape} must be positive")
    try:
        check_output_size(shape, cfg.max_output_pixels)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return shape


def _model_info(model_ref: str) -> tuple[dict[str, Any], int, str]:
    from liif.checkpoint import file_sha256, load_checkpoint, resolve

    path = resolve(model_ref)
    model = load_checkpoint(path)
    if not hasattr(model, "halo") or model.spec.get("name") != "liif":
        raise ConfigError(f"model {model_ref!r} ({model.spec['name']}) is not a LIIF model; "
                          "reference-based models need --reference")
    return model.spec, int(model.halo), file_sha256(path)


def plan_summary(tiles: TilePlan) -> int | list[int]:
    """The tile side of a plan for summaries and fingerprints: one number when square and
    uniform, else ``[rows, cols]`` of the largest tile (balanced plans hold explicit starts,
    which the fingerprint records too)."""
    th, tw = tiles.tile_shape
    return th if th == tw and tiles.starts is None else [th, tw]


def base_attrs(cfg: Any, info: SourceInfo, out_shape: tuple[int, int],
               scale: tuple[float, float], vr: tuple[float, float],
               model: dict[str, Any]) -> dict[str, Any]:
    """The output attributes every family writes (georeference of the output grid, values,
    model, source); families add their own keys."""
    _, h, w = info.shape
    return {
        "scale": [scale[0], scale[1]], "in_shape": [h, w], "out_shape": list(out_shape),
        "model": model, "source_uri": cfg.source.uri, "crs": info.crs,
        "transform": (list(scaled_transform(info.transform, (h, w), out_shape))
                      if info.transform else None),
        "value_range": list(vr), "nodata": info.out_nodata, "bands": info.band_info,
    }


def prepare(cfg: UpscaleConfig) -> JobPlan:
    """Validate the job and compute its plan; writes nothing. The model loads last."""
    info = probe_source(cfg.source)
    C, h, w = info.shape
    is_scale = cfg.scale is not None
    sizes = [(v, _out_shape(cfg, v, (h, w)))
             for v in (cfg.scale if is_scale else cfg.size, *cfg.products)]
    # the largest output is the main one ('image', tiled, with overviews); the others follow
    main = max(range(len(sizes)), key=lambda i: (sizes[i][1][0] * sizes[i][1][1], -i))
    out_shape = sizes[main][1]
    others = [sizes[i] for i in range(len(sizes)) if i != main]
    vr = parse_value_range(cfg.value_range or default_value_range(info.dtype))
    cfg.grid  # noqa: B018 - checks shard and tile before the model loads
    spec, halo, sha = _model_info(cfg.model)
    sy, sx = scale_of((h, w), out_shape)
    max_tile = default_tile_for(halo, (sy, sx), chunk=cfg.grid)
    levels, grid = cfg.levels_and_grid(out_shape, max_tile)
    if cfg.tile is None:  # near-equal tiles, at least two per worker where the image allows
        tiles = balanced_plan((h, w), out_shape, max_tile=max(max_tile, grid), halo=halo,
                              grid=grid, workers=cfg.workers)
    else:
        tiles = plan_tiles((h, w), out_shape, tile=cfg.tile, halo=halo, chunk=grid)
    tile = plan_summary(tiles)
    attrs = base_attrs(cfg, info, out_shape, (sy, sx), vr,
                       {**spec, "weights_sha256": sha, "ref": cfg.model})
    attrs["job"] = {"source": cfg.source.uri, "bands": list(cfg.source.bands or []),
                    "in_shape": [h, w], "out_shape": list(out_shape), "weights_sha256": sha,
                    "value_range": list(vr), "tile": tile, "precision": cfg.precision,
                    "starts": [list(s) for s in tiles.starts] if tiles.starts else None}
    attrs["input_identity"] = {"input": info.identity}
    products = []
    for value, shape in others:
        pattrs = base_attrs(cfg, info, shape, scale_of((h, w), shape), vr, attrs["model"])
        pattrs["product_of"] = "image"
        products.append(Product(f"{PRODUCTS_GROUP}/{product_label(value, is_scale)}", shape,
                                pattrs))
    if products:
        attrs["job"]["products"] = [[p.path, list(p.out_shape)] for p in products]
        attrs["products"] = [p.array for p in products]
    return JobPlan(bands=C, in_shape=(h, w), out_shape=out_shape, dtype=info.dtype,
                   nodata=info.out_nodata, masked_only=info.masked_only, value_range=vr,
                   tiles=tiles, tile=tile, halo=halo,
                   attrs=attrs, overviews=levels, products=tuple(products))


def canonical(cfg: Any, *more: str) -> Any:
    """``cfg`` with ``source`` (and the other SourceSpec fields named in ``more``) and the
    model as canonical absolute locations, so Ray workers in another directory open the same
    files."""
    changes: dict[str, Any] = {}
    for name in ("source", *more):
        spec = getattr(cfg, name)
        changes[name] = replace(spec, uri=spec.location.url)
    loc = model_location(cfg.model)
    if loc is not None:
        changes["model"] = loc.path
    return replace(cfg, **changes)


class LiifFamily:
    """The LIIF model family for :func:`pipeline.run.engine.run_job`."""

    worker_cls = TileWorker

    def reads(self, cfg: UpscaleConfig) -> list[Role]:
        return [("--input", cfg.source.location), ("--model", model_location(cfg.model))]

    def prepare(self, cfg: UpscaleConfig) -> JobPlan:
        return prepare(cfg)

    def make_job(self, cfg: UpscaleConfig, plan: JobPlan, output: ZarrOutput) -> LiifTileJob:
        return LiifTileJob(source=cfg.source, output_uri=output.uri,
                           output_storage_options=cfg.output.storage_options, model=cfg.model,
                           in_shape=plan.in_shape, out_shape=plan.out_shape,
                           value_range=plan.value_range, out_dtype=str(plan.dtype),
                           nodata=plan.nodata, precision=cfg.precision,
                           threads=cfg.threads_per_worker, **cfg.test_hooks)

    def describe(self, cfg: UpscaleConfig, plan: JobPlan) -> dict[str, Any]:
        return {"scale": plan.attrs["scale"]}


LIIF_FAMILY = LiifFamily()


def run_upscale(cfg: UpscaleConfig, *,
                executor_factory: ExecutorFactory | None = None) -> dict[str, Any]:
    """Run the job; returns the JSON-ready summary (see :func:`pipeline.run.engine.run_job`)."""
    return run_job(canonical(cfg), LIIF_FAMILY, executor_factory=executor_factory)
