"""One training loop for every model family, with one run-folder layout (no Ray in here).

A family supplies a *step* (``step_fn(model, batch) -> loss``: forward, loss, backward,
optimiser update) and a stream of batches; :func:`run_loop` does the rest: learning-rate
schedules, log intervals (mean loss, learning rate, samples/s, seconds), validation and saves at
``save_every`` steps. The local backend (:func:`liif.train.train`, the TTSR job) and the Ray Train
backend (:mod:`pipeline.ray_train`) both call it; they differ only in what ``on_log`` and
``on_save`` do (append to ``metrics.csv`` and save the run folder, or ``ray.train.report``).

Run folder (local ``--out``, or each Ray Train checkpoint directory)::

    model.safetensors   the latest weights, our checkpoint format; ``training`` metadata holds
                        the step, the config and the last metrics
    trainer.pt          step, seconds, every optimiser, scheduler and grad scaler, RNG states
    metrics.csv         one row per log interval: step, loss, lr, samples_per_s, seconds, and
                        the validation columns at save steps
    final.safetensors   the weights at the end of the run (written by the backend)

Runs written by earlier versions (``last.safetensors`` + ``last-trainer.pt`` from ``liif train``,
``last.safetensors`` + ``state.pt`` from ``liif train-ttsr``, the Ray layout's single-optimiser
``trainer.pt``) still resume: :func:`load_run` reads them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liif.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from liif.errors import LiifError

__all__ = ["FINAL_FILE", "METRICS_FILE", "MODEL_FILE", "STATE_FILE", "FolderPathError", "ResumeError",
           "Training", "check_folder_path", "load_run", "make_run_folder", "read_metrics",
           "run_loop", "save_run", "write_metrics"]

MODEL_FILE, STATE_FILE, METRICS_FILE, FINAL_FILE = (
    "model.safetensors", "trainer.pt", "metrics.csv", "final.safetensors")
_LEGACY = (("last.safetensors", "last-trainer.pt"), ("last.safetensors", "state.pt"))


class ResumeError(CheckpointError):
    """A run folder that cannot be resumed (other architecture, torn save, unknown layout)."""


class FolderPathError(LiifError, OSError):
    """A folder a job must create or write into cannot be one: a file, or a symbolic link to
    nothing, is in the way (or the OS refused to create it). Names the path."""


def check_folder_path(path: str | os.PathLike[str], *, role: str = "run folder",
                      file: bool = False) -> None:
    """Refuse the local folder ``path`` now if it cannot be used or created as one: it, or one
    of its ancestors, is a file or a dangling symbolic link (creating it would fail, or, through
    the link, put it somewhere else). Missing folders are fine; existing ones (also through links
    that resolve to a folder) too. With ``file``, ``path`` is a file to be written: its folders
    are checked, and it must not be a dangling link (writing would create the link's target).
    ``role`` names it in the message (a flag, e.g. ``--out``).

    Raises:
        FolderPathError: naming the offending path, what is wrong and what to do.
    """
    given = os.fspath(path)
    full = os.path.abspath(os.path.expanduser(given))
    if file and os.path.islink(full) and not os.path.exists(full):
        raise FolderPathError(
            f"{role} {given!r} is a symbolic link to {os.readlink(full)!r}, which does not "
            f"exist (writing it would create that file); remove the link or choose another {role}")
    chain = [os.path.dirname(full) if file else full]
    while os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
    for p in reversed(chain):  # from the root down to the folder itself
        if os.path.isdir(p):
            continue
        where = f"{role} {given!r} " if p == full else f"{role} {given!r}: {p!r} "
        if os.path.islink(p):
            target = os.readlink(p)
            if not os.path.exists(p):
                raise FolderPathError(
                    f"{where}is a symbolic link to {target!r}, which does not exist; create "
                    f"that folder, remove the link, or choose another {role}")
            raise FolderPathError(f"{where}is a symbolic link to {target!r}, which is not a "
                                  f"folder; remove the link or choose another {role}")
        if os.path.lexists(p):
            raise FolderPathError(f"{where}is a file, not a folder; move it away or choose "
                                  f"another {role}")
        return  # missing: this folder and the ones below it are created


def make_run_folder(folder: str | os.PathLike[str], *, role: str = "run folder") -> None:
    """Create the local folder ``folder`` (and its parents) unless it exists, after
    :func:`check_folder_path`.

    Raises:
        FolderPathError: a file or a dangling symbolic link is in the way, or the OS refused.
    """
    check_folder_path(folder, role=role)
    try:
        os.makedirs(os.path.expanduser(os.fspath(folder)), exist_ok=True)
    except OSError as e:
        raise FolderPathError(f"cannot create {role} {os.fspath(folder)!r}: "
                              f"{e.strerror or e}") from e


StepFn = Callable[[nn.Module, Any], float]


@dataclass
class Training:
    """What changes while a model trains. ``model`` is what steps (DDP-wrapped on Ray),
    ``module`` what is saved; ``optimizers`` / ``schedulers`` by name; ``history`` the metrics
    rows so far; ``seconds`` of training before this process started (resumed runs)."""

    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    scaler: Any = None
    step: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = self.model

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group of the first optimiser."""
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])


def run_loop(t: Training, step_fn: StepFn, batches: Iterator[Any], *, steps: int,
             log_every: int, save_every: int, samples_per_step: int,
             on_log: Callable[[dict[str, Any]], None],
             on_save: Callable[[dict[str, Any]], None],
             validate: Callable[[nn.Module], dict[str, float]] | None = None,
             reduce: Callable[[float], float] = lambda v: v) -> dict[str, Any]:
    """Train ``t`` from ``t.step`` to ``steps``.

    Every ``log_every`` steps (and at saves) a metrics row ``{step, loss, lr, samples_per_s,
    seconds}`` (``loss``: the interval's mean, passed through ``reduce``, e.g. an all-reduce
    mean over ranks) is appended to ``t.history`` and given to ``on_log``; every ``save_every``
    steps and at the end ``validate(module)`` adds its columns first and ``on_save(row)`` follows.
    Returns ``{start_step, step, losses, seconds, samples_per_s, step_time_s}`` of this run.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    start = t.step
    t0 = t_window = time.perf_counter()
    t_steady: float | None = None
    losses: list[float] = []
    window: list[float] = []
    compute: list[float] = []
    while t.step < steps:
        batch = next(batches)
        t_step = time.perf_counter()
        loss = float(step_fn(t.model, batch))
        for sched in t.schedulers.values():
            sched.step()
        compute.append(time.perf_counter() - t_step)
        t.step += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {t.step}")
        losses.append(loss)
        window.append(loss)
        save = t.step % save_every == 0 or t.step == steps
        if save or t.step % log_every == 0:
            now = time.perf_counter()
            row: dict[str, Any] = {
                "step": t.step, "loss": round(reduce(sum(window) / len(window)), 6),
                "lr": t.lr,
                "samples_per_s": round(len(window) * samples_per_step / max(now - t_window, 1e-9),
                                       3),
                "seconds": round(t.seconds + now - t0, 3)}
            window = []
            if save and validate is not None:
                assert t.module is not None  # Training.__post_init__ sets it
                row.update(validate(t.module))
            t.history.append(row)
            on_log(row)
            if save:
                on_save(row)
            t_window = time.perf_counter()
        if t_steady is None:
            t_steady = time.perf_counter()
    t_end = time.perf_counter()
    t.seconds += t_end - t0
    steady = max(0, len(losses) - 1)
    return {"start_step": start, "step": t.step, "losses": losses,
            "seconds": round(t_end - t0, 3),
            "samples_per_s": round(steady * samples_per_step / (t_end - t_steady), 3)
            if steady and t_steady is not None and t_end > t_steady else None,
            "step_time_s": round(float(np.mean(compute[1:])), 5) if len(compute) > 1 else None}


# ----------------------------------------------------------------------------- run folders


def write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    """All ``rows`` as a CSV (columns: the union of the rows' keys, in first-seen order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys or ["step"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` (numbers parsed), or [] when there is none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _number(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def save_run(folder: Path, t: Training, *, training: dict[str, Any],
             rng: np.random.Generator | None = None) -> Path:
    """Write ``t`` into ``folder`` (the layout above; each file atomically); returns the weights.
    ``training`` goes into the weights' metadata, with ``step`` added.

    Raises:
        FolderPathError: ``folder`` cannot be created (a file or a dangling link in the way).
    """
    make_run_folder(folder)
    assert t.module is not None
    wpath = save_checkpoint(t.module, folder / MODEL_FILE, training={**training, "step": t.step})
    state = {"format": 2, "step": t.step, "seconds": t.seconds,
             "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
             "schedulers": {k: s.state_dict() for k, s in t.schedulers.items()},
             "scaler": t.scaler.state_dict() if t.scaler is not None else None,
             "rng": json.dumps(rng.bit_generator.state) if rng is not None else None,
             "torch_rng": torch.get_rng_state()}
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)
    write_metrics(t.history, folder / METRICS_FILE)
    return wpath


def _arch(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def load_run(folder: Path, t: Training, *, rng: np.random.Generator | None = None,
             keep_milestones: bool = True) -> bool:
    """Restore ``t`` (weights, optimisers, schedulers, scaler, step, seconds, history) and
    ``rng`` from ``folder``; False when it holds no run yet.

    ``keep_milestones``: keep the schedulers' milestones of this run (``--steps`` may have
    changed) instead of the saved ones.

    Raises:
        ResumeError: a run of another architecture, a torn save (weights and state at different
            steps), or an unreadable state file.
    """
    wpath, spath = folder / MODEL_FILE, folder / STATE_FILE
    if not wpath.exists():
        for w, s in _LEGACY:
            if (folder / w).exists() and (folder / s).exists():
                wpath, spath = folder / w, folder / s
                break
        else:
            if spath.exists():
                raise ResumeError(f"{spath} exists but {wpath} does not; cannot resume")
            return False
    if not spath.exists():
        raise ResumeError(f"{wpath} exists but {spath} does not; cannot resume")
    assert t.module is not None
    try:
        meta = read_metadata(wpath)
    except CheckpointError as e:
        raise ResumeError(f"cannot resume from {wpath}: {e}") from e
    spec = getattr(t.module, "spec", None)
    if spec is not None and meta.get("spec") is not None and _arch(meta["spec"]) != _arch(spec):
        raise ResumeError(
            f"{folder} holds a run of a different architecture ({meta['spec']}); this run builds "
            f"{spec}: use another run folder or the same architecture")
    try:
        state = torch.load(spath, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means an unreadable file
        raise ResumeError(f"cannot read {spath}: {type(e).__name__}: {e}") from e
    step = int(state["step"])
    saved = int((meta.get("training") or {}).get("step", step))
    if saved != step:
        raise ResumeError(f"{wpath} is at step {saved} but {spath} at step {step} (interrupted "
                          "while saving?); remove the newer file to resume from the older one")
    t.module.load_state_dict(load_checkpoint(wpath).state_dict(), strict=True)
    optimizers = state.get("optimizers") or {}
    if not optimizers and "optimizer" in state:  # the single-optimiser layouts
        optimizers = {next(iter(t.optimizers)): state["optimizer"]}
    for name, opt in t.optimizers.items():
        if name in optimizers:
            opt.load_state_dict(optimizers[name])
    schedulers = state.get("schedulers") or {}
    if not schedulers and state.get("scheduler") is not None and t.schedulers:
        schedulers = {next(iter(t.schedulers)): state["scheduler"]}
    for name, sched in t.schedulers.items():
        if name in schedulers:
            milestones = getattr(sched, "milestones", None)
            sched.load_state_dict(schedulers[name])
            if keep_milestones and milestones is not None:
                sched.milestones = milestones
        else:  # a layout without scheduler state: the optimiser's lr already holds the decay
            sched.last_epoch = step
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    if rng is not None and state.get("rng"):
        rng.bit_generator.state = json.loads(state["rng"])
    if state.get("torch_rng") is not None:
        torch.set_rng_state(state["torch_rng"])
    t.step, t.seconds = step, float(state.get("seconds", 0.0))
    t.history = [r for r in read_metrics(folder / METRICS_FILE) if int(r.get("step", 0)) <= step]
    return True
