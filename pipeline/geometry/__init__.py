"""Pure geometry (math and numpy only; no torch, Ray or I/O): tile plans and their input windows
(:mod:`pipeline.geometry.tiling`) and affine transforms (:mod:`pipeline.geometry.affine`)."""

from pipeline.geometry.affine import (
    Transform,
    as_transform,
    compose,
    invert,
    scaled_transform,
    window_transform,
)
from pipeline.geometry.tiling import (
    Tile,
    TilePlan,
    TilingError,
    Window,
    default_tile_for,
    out_size_for_scale,
    output_positions,
    plan_tiles,
)

__all__ = ["Tile", "TilePlan", "TilingError", "Transform", "Window", "as_transform", "compose",
           "default_tile_for", "invert", "out_size_for_scale", "output_positions", "plan_tiles",
           "scaled_transform", "window_transform"]
