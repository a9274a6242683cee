"""How a reference raster's pixel grid sits on the LR grid: 4x finer, aligned, covering.

LR pixel ``(r, c)`` corresponds to the 4x4 reference block whose top-left pixel is
``(row_off + 4 r, col_off + 4 c)``; see :func:`align_reference` for the georeferenced and
pixel-grid rules.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.geometry.affine import compose, invert
from pipeline.geometry.tiling import Window

__all__ = ["ALIGNMENTS", "SCALE", "CrsMismatchError", "RefAlignment", "ReferenceAlignmentError",
           "ReferenceCoverageError", "ResolutionRatioError", "align_reference"]

SCALE = 4  # TTSR is a fixed x4 model
ALIGNMENTS = ("auto", "georef", "pixel")


class ReferenceAlignmentError(ConfigError):
    """The reference grid is not a 4x finer grid aligned with the input grid."""


class CrsMismatchError(ReferenceAlignmentError):
    """The input and the reference are in different coordinate reference systems."""


class ResolutionRatioError(ReferenceAlignmentError):
    """The reference pixel size is not a quarter of the input pixel size."""


class ReferenceCoverageError(ConfigError):
    """The reference does not cover the input's footprint."""


def _same_crs(a: str, b: str) -> bool:
    if a == b:
        return True
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(wkt).to_string()
    except Exception:
        return wkt[:60]


@dataclass(frozen=True)
class RefAlignment:
    """How the reference pixel grid sits on the LR grid (picklable, pure).

    LR pixel ``(r, c)`` <-> reference pixels ``[row_off + 4r, row_off + 4r + 4) x
    [col_off + 4c, col_off + 4c + 4)``. ``lr_shape`` ``(h, w)``, ``ref_shape`` ``(Hr, Wr)``.
    """

    method: str  # "georef" | "pixel"
    row_off: int
    col_off: int
    lr_shape: tuple[int, int]
    ref_shape: tuple[int, int]

    def blocks(self) -> tuple[int, int, int, int]:
        """LR-grid range ``(k_row0, k_row1, k_col0, k_col1)`` (half-open, may extend past the
        LR image) of the 4x4 reference blocks that lie wholly inside the reference."""
        hr, wr = self.ref_shape
        return (-(self.row_off // SCALE), (hr - self.row_off) // SCALE,
                -(self.col_off // SCALE), (wr - self.col_off) // SCALE)

    def covers_input(self) -> bool:
        """Whether every LR pixel has its whole 4x4 block inside the reference."""
        k0, k1, j0, j1 = self.blocks()
        h, w = self.lr_shape
        return k0 <= 0 and j0 <= 0 and k1 >= h and j1 >= w

    def ref_window(self, lr_rows: tuple[int, int], lr_cols: tuple[int, int],
                   margin: int | None) -> Window:
        """Reference pixels under LR rows/cols ``[r0, r1) x [c0, c1)`` widened by ``margin`` LR
        pixels on every side (``None``: unlimited), clamped to whole blocks of the reference.
        Its sides are multiples of 4, so TTSR's crop to multiples of 4 keeps all of it."""
        k0, k1, j0, j1 = self.blocks()
        m = 1 << 62 if margin is None else int(margin)
        r0, r1 = max(k0, lr_rows[0] - m), min(k1, lr_rows[1] + m)
        c0, c1 = max(j0, lr_cols[0] - m), min(j1, lr_cols[1] + m)
        if r0 >= r1 or c0 >= c1:
            raise ReferenceCoverageError(
                f"no reference block under LR rows {lr_rows} cols {lr_cols} with margin {margin} "
                f"(reference blocks cover LR rows [{k0}, {k1}) cols [{j0}, {j1}))")
        return Window(self.row_off + SCALE * r0, self.row_off + SCALE * r1,
                      self.col_off + SCALE * c0, self.col_off + SCALE * c1)

    def full_window(self) -> Window:
        """The whole aligned reference: what every tile searches with an unlimited margin."""
        h, w = self.lr_shape
        return self.ref_window((0, h), (0, w), None)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "row_off": self.row_off, "col_off": self.col_off,
                "lr_shape": list(self.lr_shape), "ref_shape": list(self.ref_shape)}


def align_reference(
    lr_shape: tuple[int, int],
    lr_crs: str | None,
    lr_transform: tuple[float, ...] | None,
    ref_shape: tuple[int, int],
    ref_crs: str | None,
    ref_transform: tuple[float, ...] | None,
    *,
    mode: str = "auto",
    ratio_tol: float = 1e-3,
    align_tol: float = 0.05,
) -> RefAlignment:
    """Map the reference grid onto the LR grid and check it is 4x finer, aligned, covering.

    ``lr_shape`` ``(h, w)`` and ``ref_shape`` ``(Hr, Wr)``; CRSs as WKT (or None), transforms as
    6 affine coefficients ``(a, b, c, d, e, f)`` (or None). ``mode``: ``"auto"`` (georeferenced
    when both transforms exist, else pixel grid with a warning if only one has one),
    ``"georef"`` (both required) or ``"pixel"``. ``ratio_tol``: relative tolerance on the
    resolution ratio 4; ``align_tol``: largest distance, in reference pixels, of any LR corner
    from its 4x-aligned reference position.

    Raises:
        CrsMismatchError, ResolutionRatioError, ReferenceAlignmentError, ReferenceCoverageError
        (all ``ConfigError``), ConfigError for a bad ``mode``.
    """
    if mode not in ALIGNMENTS:
        raise ConfigError(f"reference alignment {mode!r} is not one of {', '.join(ALIGNMENTS)}")
    h, w = (int(v) for v in lr_shape)
    hr, wr = (int(v) for v in ref_shape)
    georef = lr_transform is not None and ref_transform is not None
    if mode == "georef" and not georef:
        missing = "input" if lr_transform is None else "reference"
        raise ReferenceAlignmentError(
            f"alignment 'georef' needs both rasters georeferenced, but the {missing} has no "
            "transform; use alignment 'pixel' for a pixel-grid reference")
    if mode == "auto" and not georef and (lr_transform is not None or ref_transform is not None):
        which = "input" if lr_transform is not None else "reference"
        warnings.warn(f"only the {which} is georeferenced: aligning the reference by pixel grid "
                      "(reference pixel (4r, 4c) = input pixel (r, c))", UserWarning, stacklevel=2)
    if mode == "pixel" or not georef:
        al = RefAlignment("pixel", 0, 0, (h, w), (hr, wr))
    else:
        if (lr_crs is None) != (ref_crs is None):
            have = "input" if lr_crs is not None else "reference"
            raise CrsMismatchError(
                f"the {have} has a CRS ({_crs_name(lr_crs or ref_crs or '')}) but the other "
                "raster has none: cannot check that they are co-registered")
        if lr_crs is not None and ref_crs is not None and not _same_crs(lr_crs, ref_crs):
            raise CrsMismatchError(
                f"input CRS {_crs_name(lr_crs)} differs from reference CRS {_crs_name(ref_crs)}; "
                "reproject the reference onto a 4x finer grid of the input first")
        t_lr = tuple(float(v) for v in lr_transform)  # type: ignore[union-attr]
        t_ref = tuple(float(v) for v in ref_transform)  # type: ignore[union-attr]
        try:
            m = compose(invert(t_ref, "the reference"), t_lr)
        except ValueError as exc:
            raise ReferenceAlignmentError(str(exc)) from exc
        sx, sy = m[0], m[4]
        if abs(sx / SCALE - 1) > ratio_tol or abs(sy / SCALE - 1) > ratio_tol:
            lr_px = (math.hypot(t_lr[0], t_lr[3]), math.hypot(t_lr[1], t_lr[4]))
            ref_px = (math.hypot(t_ref[0], t_ref[3]), math.hypot(t_ref[1], t_ref[4]))
            raise ResolutionRatioError(
                f"resolution ratio input/reference is {sx:.6g} (x) by {sy:.6g} (y), not 4 within "
                f"a relative tolerance of {ratio_tol:g}: input pixels {lr_px[0]:g} x {lr_px[1]:g},"
                f" reference pixels {ref_px[0]:g} x {ref_px[1]:g} map units")
        col_off, row_off = round(m[2]), round(m[5])
        for row, col in ((0, 0), (0, w), (h, 0), (h, w)):
            x = m[0] * col + m[1] * row + m[2]
            y = m[3] * col + m[4] * row + m[5]
            err = max(abs(x - (SCALE * col + col_off)), abs(y - (SCALE * row + row_off)))
            if not err <= align_tol:
                raise ReferenceAlignmentError(
                    f"the reference grid is not aligned with the input grid: input pixel corner "
                    f"(row {row}, col {col}) falls on reference pixel corner (row {y:.4f}, col "
                    f"{x:.4f}), {err:.4g} px from the 4x-aligned position (row "
                    f"{SCALE * row + row_off}, col {SCALE * col + col_off}); tolerance "
                    f"{align_tol:g} px")
        al = RefAlignment("georef", int(row_off), int(col_off), (h, w), (hr, wr))
    if not al.covers_input():
        r0, c0 = al.row_off, al.col_off
        raise ReferenceCoverageError(
            f"the reference ({hr} x {wr} px) does not cover the input footprint: the {h} x {w} "
            f"input needs reference rows [{r0}, {r0 + SCALE * h}) and cols [{c0}, "
            f"{c0 + SCALE * w}) ({al.method} alignment); the reference is too small or offset")
    return al
