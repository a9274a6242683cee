"""The ground-truth driver: check paths, take the lease, plan, fan the shard tasks out, keep the
manifest."""


from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.errors import ConfigError, OutputExistsError
from pipeline.gt.config import FORMAT, LEGACY_MANIFEST, MANIFEST, SHARD_DIR, GTConfig
from pipeline.gt.refpairs import check_reference_input
from pipeline.gt.sampling import expand_inputs, plan_shards, probe
from pipeline.gt.shards import read_manifest, run_shard, totals
from pipeline.io.atomic import write_bytes
from pipeline.io.lease import OutputLease
from pipeline.io.locations import check_paths, resolve
from pipeline.io.sources import SourceSpec


def check_gt_paths(cfg: GTConfig) -> None:
    """Refuse an output that is, contains or lies inside an input (or the reference input)."""
    check_paths({"--output": cfg.output},
                {"--input": list(cfg.inputs), "--reference-input": cfg.reference_input},
                cfg.storage_options)


def _prepare_output(cfg: GTConfig, overwrite: bool, resume: bool
                    ) -> tuple[Any, str, dict[str, Any] | None]:
    if overwrite and resume:
        raise ConfigError("give at most one of overwrite and resume")
    loc = resolve(cfg.output, cfg.storage_options)
    fs, root = loc.fs()
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    existing = fs.exists(root)
    if existing and not fs.isdir(root):
        raise OutputExistsError(f"output {cfg.output!r} exists and is a file, not a directory")
    entries = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)] \
        if existing else []
    previous = None
    if entries:
        if overwrite:
            # only ever delete what this module writes: never a folder of someone else's files,
            # nor a file (dot files and symlinks included) that the user put into our folder
            from pipeline.io.ownership import gt_foreign, gt_manifests, list_tree, remove_listed

            tree = list_tree(loc)
            ours = (MANIFEST, LEGACY_MANIFEST)
            # the shards are ours only if the manifests list (or plan) them; a manifest that
            # cannot be parsed is refused (OutputCorruptError)
            marked, shards = gt_manifests(loc, tree, ours, SHARD_DIR)
            foreign = gt_foreign(tree, ours, SHARD_DIR, shards)
            top = gt_foreign([e for e in tree if "/" not in e[0]], ours, SHARD_DIR, shards)
            if not top and (marked is None or marked.get("format") != FORMAT):
                raise OutputExistsError(
                    f"refusing to overwrite {cfg.output!r}: it holds no {FORMAT} {MANIFEST} "
                    f"(or {LEGACY_MANIFEST}, the marker of a ground-truth output of this project); "
                    "remove it yourself or choose another output")
            if foreign:
                more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
                raise OutputExistsError(
                    f"output {cfg.output!r} holds files that are not ground truth "
                    f"({', '.join(foreign[:5])}{more}); overwrite only replaces a previous GT "
                    "output and would delete them: move them out of it, or delete the output "
                    "yourself, or choose another output")
            remove_listed(loc, tree)
            fs.invalidate_cache(root)
            if loc.is_local:
                os.makedirs(root, exist_ok=True)
        elif resume:
            previous = read_manifest(cfg.output, cfg.storage_options)
            if previous is None or previous.get("format") != FORMAT:
                raise OutputExistsError(
                    f"output {cfg.output!r} is not empty and holds no {FORMAT} {MANIFEST} (or "
                    f"{LEGACY_MANIFEST}); it is not a ground-truth output to resume")
        else:
            raise OutputExistsError(
                f"output {cfg.output!r} exists and is not empty; pass overwrite (--overwrite) "
                "or resume (--resume)")
    if loc.is_local:
        os.makedirs(root, exist_ok=True)
    return fs, root, previous


def _check_resumable(previous: dict[str, Any], cfg: GTConfig, sources: list[str]) -> None:
    old, new = previous.get("config", {}), cfg.content_dict()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"cannot resume {cfg.output!r} with a different config ({detail}); "
                          "use overwrite instead")
    old_sources = [s["uri"] for s in previous.get("sources", [])]
    if old_sources != sources:
        raise ConfigError(f"cannot resume {cfg.output!r}: the inputs now expand to "
                          f"{len(sources)} sources, the manifest lists {len(old_sources)} "
                          "different ones; use overwrite instead")


def _drop_legacy_manifest(fs: Any, root: str) -> None:
    """Once ``_manifest.json`` is written, delete the ``manifest.json`` an output written before
    the rename still holds (a resumed one): it would stop Parquet readers from reading the folder,
    and would go stale. ``read_manifest`` prefers ``_manifest.json`` if a crash leaves both."""
    try:
        fs.rm_file(f"{root}/{LEGACY_MANIFEST}")
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------- driver


def _executor(workers: int, cpus_per_task: float) -> Callable[[Callable, list], Iterable]:
    """``run(fn, items)`` yielding ``(item_index, result)`` as they finish (at most ``workers``
    Ray tasks in flight; in-process and in order when ``workers == 0``)."""
    from pipeline.run.ray_executor import ray_map

    return lambda fn, items: ray_map(fn, items, max_in_flight=workers,
                                     cpus_per_task=cpus_per_task)


def make_gt(cfg: GTConfig, *, workers: int = 2, overwrite: bool = False, resume: bool = False,
            cpus_per_task: float = 1.0, log: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """Generate (or resume) the ground truth described by ``cfg``; returns a JSON-ready summary.

    ``workers`` Ray tasks run at once (``0``: in-process, no Ray). The summary holds the dataset
    totals (``patches``, ``samples``, ``shards``, skip counts) and this run's ``seconds``,
    ``patches_this_run`` and ``patches_per_s``.

    Raises:
        OutputExistsError: a non-empty output without ``overwrite``/``resume``.
        ConfigError: an invalid option, or resuming with a different config or inputs.
        InputNotFoundError: an input that does not exist or matches nothing.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    check_gt_paths(cfg)
    sources = expand_inputs(cfg.inputs, cfg.storage_options)
    check_paths({"--output": cfg.output}, {"--input": sources}, cfg.storage_options)
    with OutputLease(resolve(cfg.output, cfg.storage_options)):
        fresh = not _output_exists(cfg)
        try:
            return _make_gt(cfg, sources, workers, overwrite, resume, cpus_per_task, say, t0)
        except BaseException:
            if fresh:  # only what this run created, and only if it holds nothing of value
                _remove_unused_output(cfg)
            raise


def _output_exists(cfg: GTConfig) -> bool:
    loc = resolve(cfg.output, cfg.storage_options)
    if loc.is_local:
        return os.path.lexists(loc.path)
    fs, root = loc.fs()
    fs.invalidate_cache(root.rstrip("/"))
    return bool(fs.exists(root.rstrip("/")))


def _remove_unused_output(cfg: GTConfig) -> None:
    """After a failed run that created the output: remove it if it holds nothing but what this
    run wrote and no finished shard (empty, or only a manifest listing no shard). Anything else
    (a finished shard, a file that is not ours) stays."""
    loc = resolve(cfg.output, cfg.storage_options)
    fs, root = loc.fs()
    root = root.rstrip("/")
    try:
        fs.invalidate_cache(root)
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)]
        if set(names) - {MANIFEST}:
            return
        if names:
            path = f"{root}/{MANIFEST}"
            if loc.is_local and (os.path.islink(path) or not os.path.isfile(path)):
                return
            if json.loads(fs.cat_file(path)).get("shards"):
                return
            fs.rm_file(path)
        if loc.is_local:
            os.rmdir(root)
    except Exception:  # gone, not a folder, unreadable: leave it (never mask the failure)
        return


def _make_gt(cfg: GTConfig, sources: list[str], workers: int, overwrite: bool, resume: bool,
             cpus_per_task: float, say: Callable[[str], None], t0: float) -> dict[str, Any]:
    # every input is probed (and refused) before the output is touched: created, or deleted
    # under overwrite
    specs = [SourceSpec(u, storage_options=cfg.storage_options, bands=cfg.bands) for u in sources]
    run = _executor(workers, cpus_per_task)
    probes: list[dict[str, Any]] = [{}] * len(specs)
    for i, p in run(probe, specs):
        probes[i] = p
    if cfg.reference_input:
        check_reference_input(cfg, specs)
    tasks = plan_shards(cfg, probes, specs)
    fs, root, previous = _prepare_output(cfg, overwrite, resume)
    if previous is not None:
        _check_resumable(previous, cfg, sources)
    too_small = [p["uri"] for p in probes if min(p["shape"][1:]) < cfg.patch]
    if too_small:
        say(f"{len(too_small)} source(s) smaller than the {cfg.patch} px patch give no patches, "
            f"e.g. {too_small[0]!r}")
    done: dict[str, dict[str, Any]] = dict(previous["shards"]) if previous else {}
    done = {k: v for k, v in done.items()
            if v["file"] is None or fs.exists(f"{root}/{v['file']}")}
    todo = [t for t in tasks if t.name not in done]
    say(f"{len(sources)} sources, {len(tasks)} shards planned, {len(tasks) - len(todo)} done")

    manifest: dict[str, Any] = {
        "format": FORMAT, "config": cfg.content_dict(), "seed": cfg.seed,
        "sources": [{"index": i, **p} for i, p in enumerate(probes)],
        "planned_shards": len(tasks), "shards": done, "complete": False,
    }

    def save_manifest() -> None:
        manifest["shards"] = dict(sorted(done.items()))
        manifest["counts"] = totals(done)
        manifest["complete"] = len(done) == len(tasks)
        payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
        write_bytes(resolve(cfg.output, cfg.storage_options).child(MANIFEST), payload,
                    make_parents=True)

    save_manifest()
    _drop_legacy_manifest(fs, root)
    this_run = 0
    for i, rec in run(run_shard, todo):
        done[todo[i].name] = rec
        this_run += rec["patches"]
        save_manifest()
        say(f"shard {todo[i].name}: {rec['patches']} patches, {rec['samples']} samples")
    seconds = time.perf_counter() - t0
    return {"output": cfg.output, **totals(done), "sources": len(sources),
            "sources_too_small": len(too_small),
            "planned_shards": len(tasks), "shards_resumed": len(tasks) - len(todo),
            "patches_this_run": this_run, "seconds": round(seconds, 3),
            "patches_per_s": round(this_run / seconds, 2) if seconds > 0 else None}


