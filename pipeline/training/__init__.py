"""Training jobs on the one loop of :mod:`liif.loop`: the Ray Train backend for LIIF
(:mod:`pipeline.training.ray_train`), TTSR-rec training (:mod:`pipeline.training.ttsr`) and the
local backend's data (:mod:`pipeline.training.data`)."""
