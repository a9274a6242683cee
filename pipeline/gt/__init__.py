"""Resolution-varied ground truth: (LR, HR) training pairs cut from rasters, as Parquet shards.

Plan (driver)
    Inputs (image folders, GeoTIFF/COG, Zarr arrays; local paths or fsspec URLs; lists and
    globs) expand to a sorted list of sources. Each source is probed for its shape, then gives
    candidate HR patch windows: a grid (``patch`` x ``patch`` with ``stride``, the last row and
    column shifted inside the image) or ``random`` seeded positions. The candidates of all sources,
    in order, are cut into groups of ``patches_per_shard``; one group is one task and one shard
    (a big raster gives several window groups, small images share one).

Shard task (a Ray task, or in-process with ``workers=0``)
    Reads each candidate window in the native dtype and band order, skips patches holding nodata
    or non-finite values and near-flat patches (std of the unit-scaled patch below
    ``flat_threshold``), then makes one sample per scale: ``range_samples`` scales drawn from
    ``U(scale_range)`` and each of ``scales``. A sample's HR is a random ``round(lr_size * s)``
    square crop of the patch, kept in the native dtype (no resizing to a common size: the
    paper's size-varied ground truth); its LR is ``lr_size`` square, made by antialiased bicubic
    on floats (:func:`liif.resize.resize_bicubic`) after an optional Gaussian blur, followed by
    optional Gaussian noise and JPEG compression. Degradation parameters may be ranges, drawn
    per sample and recorded per sample.

Determinism
    Every random draw comes from ``numpy.random.default_rng([seed, stream, source, patch])``, so
    the shard bytes depend on the configuration and seed only, not on scheduling or worker count.

Output (local directory or fsspec URL)::

    <output>/_manifest.json          config, sources, finished shards, counts
    <output>/shards/part-00000.parquet

The folder is a plain Parquet dataset: ``pyarrow.dataset.dataset(output)`` and
``pandas.read_parquet(output)`` skip names starting with ``_`` or ``.`` (the manifest, like Spark's
``_SUCCESS``, and the writers' hidden ``.<name>.<hex>.tmp`` files), ``ray.data.read_parquet(output)``
reads only ``*.parquet`` files; all three read the folder as it is (a run still in progress gives
the shards finished so far; :func:`shard_paths` lists only those the manifest marks done).

A shard is written under a temporary name and renamed (one PUT on object stores), then the
driver, the only writer of ``_manifest.json``, marks it done; a rerun with ``resume=True`` skips
marked shards (and refuses a changed config or input list). A non-empty output is refused unless
``resume`` or ``overwrite``; ``overwrite`` only replaces a previous GT output (``_manifest.json``
and ``shards/``), never a folder holding other files. Outputs written before the rename carry
``manifest.json``: it is read when ``_manifest.json`` is absent (reading, resume, the overwrite
marker), and a resumed output gets ``_manifest.json`` in its place.

Columns: see :data:`SCHEMA`; arrays are raw C-order bytes plus shape and dtype
(:func:`decode_array`). ``ray.data.read_parquet(shard_paths(output))`` reads the finished shards.
"""

from pipeline.gt.config import FORMAT, LEGACY_MANIFEST, MANIFEST, SCHEMA, SHARD_DIR, GTConfig
from pipeline.gt.job import check_gt_paths, make_gt
from pipeline.gt.sampling import expand_inputs, grid_windows
from pipeline.gt.shards import decode_array, pairs_from_batch, read_manifest, shard_paths

__all__ = ["FORMAT", "LEGACY_MANIFEST", "MANIFEST", "SCHEMA", "SHARD_DIR", "GTConfig",
           "check_gt_paths", "decode_array", "expand_inputs", "grid_windows", "make_gt",
           "pairs_from_batch", "read_manifest", "shard_paths"]
