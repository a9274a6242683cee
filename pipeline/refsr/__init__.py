"""Reference-based x4 super-resolution (TTSR) of huge images, tile by tile: the TTSR family.

:mod:`pipeline.refsr.alignment` maps the reference grid onto the input grid;
:mod:`pipeline.refsr.job` holds the config, plan, worker and driver. The receptive radius that
sizes the halo is the model's own (``TTSR.halo``, :mod:`liif.ttsr.receptive`).
"""

from pipeline.refsr.alignment import (
    ALIGNMENTS,
    SCALE,
    CrsMismatchError,
    RefAlignment,
    ReferenceAlignmentError,
    ReferenceCoverageError,
    ResolutionRatioError,
    align_reference,
)
from pipeline.refsr.job import (
    DEFAULT_REF_MARGIN,
    TTSR_FAMILY,
    RefJobPlan,
    RefSRConfig,
    RefTileJob,
    RefTileWorker,
    default_ref_tile,
    prepare_refsr,
    run_refsr,
    tile_footprint,
)

__all__ = [
    "ALIGNMENTS", "DEFAULT_REF_MARGIN", "SCALE", "TTSR_FAMILY", "CrsMismatchError",
    "RefAlignment", "RefJobPlan", "RefSRConfig", "RefTileJob", "RefTileWorker",
    "ReferenceAlignmentError", "ReferenceCoverageError", "ResolutionRatioError",
    "align_reference", "default_ref_tile", "prepare_refsr", "run_refsr", "tile_footprint",
]
