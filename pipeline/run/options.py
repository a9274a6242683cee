"""Option groups shared by every tile job (LIIF upscale, TTSR reference SR, any later family).

Each group is a frozen, keyword-only dataclass validated on construction; a job's config
inherits the groups it takes, so ``UpscaleConfig(source=..., output=..., scale=2, tile=512,
executor="in-process")`` stays flat while the checks and defaults exist once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.io.zarr_output import OutputSpec

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "EXECUTORS", "ExecutionOptions", "JobOptions",
           "OutputOptions"]

#: 4 Gpx (a 63k x 63k output, some 12 GB of RGB uint8): larger outputs are refused unless
#: --max-output-pixels says so (a mistyped scale or size would otherwise run for hours)
DEFAULT_MAX_OUTPUT_PIXELS = 4_000_000_000
EXECUTORS = ("ray", "in-process")


@dataclass(frozen=True, kw_only=True)
class ExecutionOptions:
    """Where the tiles run: a Ray actor pool (``workers`` actors, ``gpus_per_worker`` GPU share
    each, else ``threads_per_worker`` CPU threads) or ``"in-process"``."""

    executor: str = "ray"
    workers: int = 1
    gpus_per_worker: float = 0.0
    threads_per_worker: int | None = None
    ray_address: str | None = None
    progress: bool = True
    depth: int = 3  # tiles a worker holds at once (1 computing, the rest reading/writing)

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ConfigError(f"tiles in flight per worker {self.depth!r} must be an integer >= 1")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor {self.executor!r} is not one of 'ray', 'in-process'")
        if self.workers < 1:
            raise ConfigError(f"workers {self.workers!r} must be >= 1")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker {self.threads_per_worker!r} must be >= 1")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"gpus per worker {self.gpus_per_worker!r} must be >= 0")


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """The output and its layout: a Zarr group at ``output`` with ``chunk`` (and ``shard``)
    sides, tiles of ``tile`` pixels, optional exports and summary, and what to do with an
    existing output (``overwrite`` or ``resume``)."""

    output: OutputSpec
    tile: int | None = None  # output tile side; a multiple of `chunk` (or of `shard`)
    chunk: int = 256
    shard: int | None = None
    overwrite: bool = False
    resume: bool = False
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    cog: str | None = None  # also export a Cloud-Optimised GeoTIFF here
    preview: str | None = None  # also write a downsampled PNG preview here
    summary: str | None = None  # also write the JSON summary here
    working_output: bool = False  # the Zarr only feeds --cog: removed once the COG is complete
    overviews: int | None = None  # overview levels in the Zarr (None: as many as fit, <= 512 px)
    codec: str = "auto"  # Zarr compressor (pipeline.io.codecs.compressors), + CRC32C
    cog_compress: str = "deflate"  # --cog codec: deflate, zstd, lzw, lerc, lerc_deflate, ...
    cog_level: int | None = None
    cog_max_z_error: float = 0.0
    cog_threads: int | None = None
    preview_size: int = 1024  # longer side of the downsampled --preview
    compare: str | None = None  # also write a 1:1 crop beside the bicubic upscale here
    compare_crop: int = 512
    zarr_format: int = 3  # 2: the layout GDAL 3.10 opens georeferenced (no shards, zstd only)

    def __post_init__(self) -> None:
        if self.working_output and not self.cog:
            raise ConfigError("a working output (removed after export) needs a --cog target")
        if self.chunk < 16:
            raise ConfigError(f"chunk {self.chunk!r} must be >= 16 pixels")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume exclude each other")
        if self.overviews is not None and (isinstance(self.overviews, bool) or not isinstance(
                self.overviews, int) or not 0 <= self.overviews <= 12):
            raise ConfigError(f"overviews {self.overviews!r} must be an integer in 0..12")
        import numpy as np

        from pipeline.io.codecs import compressors
        from pipeline.io.exports import codec_options

        if self.zarr_format not in (2, 3) or isinstance(self.zarr_format, bool):
            raise ConfigError(f"--zarr-format {self.zarr_format!r} must be 2 or 3")
        if self.zarr_format == 2 and self.shard is not None:
            raise ConfigError(f"--shard {self.shard} cannot be used with --zarr-format 2 (Zarr "
                              "v2 has no sharding): drop --shard or write Zarr v3")
        if self.zarr_format == 2 and self.working_output:
            raise ConfigError("--zarr-format 2 applies to a Zarr --output; a .tif --output is a "
                              "COG written through a working Zarr")
        # names and levels, before any work
        compressors(self.codec, np.dtype("uint8"), self.zarr_format)
        if self.cog:
            codec_options(self.cog_compress, np.dtype("uint8"), level=self.cog_level,
                          max_z_error=self.cog_max_z_error)
        if self.cog_threads is not None and self.cog_threads < 1:
            raise ConfigError(f"--cog-threads {self.cog_threads!r} must be >= 1")
        for name, value, low in (("--preview-size", self.preview_size, 16),
                                 ("--compare-crop", self.compare_crop, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} {value!r} must be an integer >= {low}")

    def levels_and_grid(self, out_shape: tuple[int, int], max_tile: int) -> tuple[int, int]:
        """``(overview levels, tile grid)``: the levels asked for (default: halvings until the
        smaller level fits 512 px, as far as tiles of ``max_tile`` allow) and the side every tile
        is a multiple of (shard or chunk, and whole chunks at every level)."""
        import math

        from pipeline.io.pyramid import default_levels, pyramid_grid

        base = self.grid
        levels = (default_levels(out_shape, self.chunk, max(max_tile, base))
                  if self.overviews is None else self.overviews)
        if self.overviews is None and self.tile is not None:  # an explicit tile wins
            while levels and self.tile % math.lcm(base, pyramid_grid(self.chunk, levels)):
                levels -= 1
        grid = math.lcm(base, pyramid_grid(self.chunk, levels))
        if self.tile is not None and self.tile % grid:
            raise ConfigError(f"tile {self.tile} must be a multiple of {grid} for {levels} "
                              f"overview level(s) of chunk {self.chunk} (each tile must own whole "
                              "chunks at every level): change --tile or --overviews")
        return levels, grid

    @property
    def grid(self) -> int:
        """The side every write aligns to (the shard, else the chunk); checks ``shard`` and an
        explicit ``tile`` against it."""
        grid = self.shard or self.chunk
        if self.shard is not None and self.shard % self.chunk:
            raise ConfigError(f"shard {self.shard} must be a multiple of chunk {self.chunk}")
        if self.tile is not None and (self.tile <= 0 or self.tile % grid):
            raise ConfigError(f"tile {self.tile} must be a positive multiple of "
                              f"{'shard' if self.shard else 'chunk'} {grid}")
        return grid


@dataclass(frozen=True, kw_only=True)
class JobOptions(ExecutionOptions, OutputOptions):
    """Both groups, plus test hooks passed to the workers (``fail_after``, ``tile_delay``)."""

    test_hooks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ExecutionOptions.__post_init__(self)
        OutputOptions.__post_init__(self)
