"""The pipeline: LIIF and TTSR upscaling of huge images tile by tile (:mod:`pipeline.upscale`,
:mod:`pipeline.refsr`), ground truth (:mod:`pipeline.gt`) and training (:mod:`pipeline.training`)
on the layers :mod:`pipeline.geometry` (pure), :mod:`pipeline.io` and :mod:`pipeline.run`.

The names below load on first use (:mod:`pipeline._lazy`), so importing a submodule stays cheap.
"""

from __future__ import annotations

from pipeline._lazy import lazy_exports

_EXPORTS = {
    "PipelineError": "pipeline.errors",
    "UpscaleConfig": "pipeline.upscale", "run_upscale": "pipeline.upscale",
    "RefSRConfig": "pipeline.refsr", "run_refsr": "pipeline.refsr",
    "GTConfig": "pipeline.gt", "make_gt": "pipeline.gt",
}

__all__ = ["GTConfig", "PipelineError", "RefSRConfig", "UpscaleConfig", "make_gt", "run_refsr",
           "run_upscale"]

# No TYPE_CHECKING imports here: every pipeline module has this package as its ancestor, so
# mypy would follow them from pipeline/geometry (type-checked alone) into the whole pipeline.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
