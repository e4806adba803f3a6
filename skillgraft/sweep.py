"""Sweeps that outgrow one machine: the chapters' cached steps computed on a Dask cluster.

The unit of work is the compendium's own: a stored step (a fine-tune, a localized graft,
a prediction). A sweep expands chapters and their parameters into the distinct steps they
need, computes them on Dask workers into the store every worker sees, and leaves the
chapters themselves to read them in seconds (``skillgraft run`` then says "nothing
computed").

How the steps are found: each chapter's experiment function runs in *planning* mode
(:func:`plan`), against a copy of the lab whose store never writes and whose computing
steps record what they would compute and hand back stand-ins (a zero delta, a one-entry
mask, uniform probabilities). Steps that depend on computed values (a baseline mask of a
graft's final size, the predictions of it) are only recorded once those values are real,
so a sweep runs in waves: plan, compute in parallel, plan again, until nothing is missing.
A shared step (chapters 01 and 02 share their fine-tunes) is computed once.

Each Dask task computes one step into the store under a file lock (concurrent workers on
one key: one computes, the others read), and returns the step's key, never a tensor.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .lab import Lab
from .published import COSTS, cost_lines  # beside the store's entries: one line per computed step, with its wall time

__all__ = ["Step", "CHAPTERS", "plan", "sweep", "compute_step", "torch_threads"]

log = logging.getLogger(__name__)


def _chapters() -> dict[str, Callable]:
    """Each chapter's ``run(params, setting)``, as its notebook calls it (a unit test checks the notebooks' calls)."""
    from .chapters import CHAPTERS as modules
    return {name: module.run for name, module in modules.items()}


CHAPTERS = _chapters()


@dataclass(frozen=True)
class Step:
    """One stored step: its recipe, the lab it runs in, and the keys of the planned steps it needs first."""

    recipe: object         # a stored recipe (skillgraft.recipes): FineTune, Localized or Prediction
    label: str
    needs: tuple[str, ...] = ()
    lab: tuple = ()        # (name, value) pairs of the lab it runs in: model, device, max_length, ...
    threads: int = 0       # torch threads it is computed with (its key says so: recipes.Env); 0 on a GPU

    @property
    def kind(self) -> str:
        return self.recipe.kind

    @property
    def key(self) -> str:
        return self.recipe.key


# ----------------------------------------------------------------------------- planning
class _Missing(Exception):
    """A prediction that is not stored, asked for while planning."""


class _PlanningStore:
    """The real store, read-only: writes go to memory, a missing prediction raises :class:`_Missing`."""

    def __init__(self, store, published=None):
        self.real, self.root, self.memory, self.published = store, store.root, {}, published

    def load(self, recipe):
        entry = self.memory.get(recipe.key) or self.real.load(recipe)
        if entry is None and recipe.kind == "probs" and self.published is not None:
            entry = self.published(recipe)  # published predictions are read, not computed
        if entry is None and recipe.kind == "probs":
            raise _Missing(recipe)
        return entry

    def load_meta(self, recipe):
        entry = self.memory.get(recipe.key)
        return entry.meta if entry is not None else self.real.load_meta(recipe)

    def save(self, recipe, tensors=None, meta=None):
        from .recipes import jsonable
        from .store import Entry
        entry = Entry(tensors=dict(tensors or {}), meta=jsonable(meta or {}))
        self.memory[recipe.key] = entry
        return entry


class _Planner:
    """Records the steps a chapter would compute, in the order it needs them."""

    def __init__(self, lab):
        self.lab = lab
        self.steps: dict[str, Step] = {}
        self.stand_in = False  # a stand-in was handed out in this pass: later predictions are not real yet
        self.lab_params: tuple = ()

    def add(self, recipe) -> None:
        from .recipes import stored_inputs
        if recipe.key not in self.steps:
            needs = [r.key for r in stored_inputs(recipe) if self.lab.store.load_meta(r) is None]
            self.steps[recipe.key] = Step(recipe, recipe.label(), tuple(dict.fromkeys(needs)), self.lab_params,
                                          self.lab.threads)

    def recording_lab(self):
        return PlanningLab(self.lab, self)


class PlanningLab(Lab):
    """A view of a real lab (its model shared, its memory pools empty) whose store never writes and
    whose expensive steps are recorded with the planner and answered with stand-ins (a zero delta,
    a one-entry mask, uniform probabilities): the chapters plan through it as they run."""

    def __init__(self, real: Lab, planner: "_Planner"):  # no model is loaded: the real lab's is shared
        import torch

        self.__dict__.update(real.__dict__)
        self.memory = {pool: {} for pool in real.memory}
        self.store = _PlanningStore(real.store, real._from_published)
        self.planner = planner
        self._zeros = {n: torch.zeros_like(p, requires_grad=False) for n, p in self.graftable.items()}

    def _compute(self, recipe):
        import torch

        from .recipes import FineTune, Localized

        planner = self.planner
        if isinstance(recipe, FineTune):
            planner.add(recipe)
            planner.stand_in = True
            return self.store.save(recipe, self._zeros, {"history": [], "stand_in": True, "fit": True})
        if isinstance(recipe, Localized):
            planner.add(recipe)
            planner.stand_in = True
            first = next(iter(self.graftable))
            positions = {n: torch.zeros(1 if n == first else 0, dtype=torch.long) for n in self.graftable}
            row = {"epoch": 0, "count": 1, "sparsity": 0.0, "added": 0, "removed": 0, "train_acc": np.nan,
                   "dev_acc": np.nan}
            return self.store.save(recipe, positions, {"history": [row], "count": 1, "best_epoch": 0,
                                                       "sparsity": 0.0, "base_count": 1, "stand_in": True})
        tensors, meta = recipe.compute(self)  # cheap ones (a location, a baseline mask) into memory
        return self.store.save(recipe, tensors, meta)

    def resolve(self, recipe):
        try:
            return super().resolve(recipe)
        except _Missing:
            if not self.planner.stand_in:  # every input is real: this is the prediction the chapter will need
                self.planner.add(recipe)
            n = len(self.splits(recipe.task, recipe.k or 16, recipe.seed or 0)[recipe.split])
            c = len(recipe.prompt[1])
            return np.full((n, c), 1.0 / c), np.zeros(n, dtype=int)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Warnings about stand-in values (e.g. a temperature fitted to uniform probabilities) are not news."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _setting(params: dict):
    from .chapters import Setting
    return Setting.from_params(**params)


def plan(chapters: list[tuple[str, dict]], ledger: dict | None = None) -> tuple[list[Step], bool]:
    """The steps that ``chapters`` ([(chapter name, full parameters)]) still need, in order,
    and whether the planning pass ran through (False: it stopped on a stand-in; plan again
    after computing these). ``ledger``, if given, receives every stored recipe the chapters resolve."""
    planner, complete = None, True
    for name, params in chapters:
        setting = _setting(params)
        real = setting.lab()
        planner = planner or _Planner(real)
        planner.lab, planner.stand_in, planner.lab_params = real, False, tuple(sorted(_lab_params(params).items()))
        lab = planner.recording_lab()
        lab.ledger = ledger
        with np.errstate(all="ignore"), _quiet("skillgraft"):
            try:
                CHAPTERS[name](params, setting.using(lab))
            except Exception as err:  # a stand-in went where a real value was needed: the next wave has it
                if not planner.stand_in:
                    raise
                log.info("planning %s stopped on a stand-in (%s: %s)", name, type(err).__name__, err)
                complete = False
    return (list(planner.steps.values()) if planner else []), complete


# ----------------------------------------------------------------------------- computing
@contextlib.contextmanager
def _locked(store_root: Path, key: str) -> Iterator[None]:
    """One process at a time computes ``key``: an exclusive lock file beside the store's entries."""
    folder = Path(store_root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count set to ``threads`` (None or 0: left as it is), restored after."""
    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compute_step(step: Step, home: str | None = None, *needed) -> str:
    """Compute ``step`` into the store (a Dask task; also usable serially) with the torch
    thread count its key was planned for; returns its key. ``needed`` are the results of the
    steps it depends on (Dask waits for them)."""
    if home:
        os.environ["SKILLGRAFT_HOME"] = home
    with torch_threads(step.threads):
        _compute_step(step)
    return step.key




def _compute_step(step: Step) -> None:
    lab = _setting(dict(step.lab)).lab()
    with _locked(lab.store.root, step.key):  # a concurrent worker on the same key: wait, then read its entry
        lab.resolve(step.recipe)  # a computed step leaves its wall time beside the store (Lab._compute)


def costs(store_root: Path):
    """The wall time of every step sweeps computed into the store at ``store_root`` (latest per key), as
    a frame: kind, key, label, threads, seconds, finished."""
    import pandas as pd

    frame = pd.DataFrame(cost_lines(store_root), columns=["kind", "key", "label", "threads", "seconds", "finished"])
    return frame.drop_duplicates("key", keep="last").reset_index(drop=True)


@dataclass
class SweepReport:
    steps: list[Step] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)     # kind -> steps computed
    failed: dict[str, str] = field(default_factory=dict)   # key -> traceback
    waves: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        kinds = sorted({s.kind for s in self.steps})
        parts = [f"{k}: {self.done.get(k, 0)}/{sum(s.kind == k for s in self.steps)} done" for k in kinds]
        return (f"{len(self.steps)} steps in {self.waves} wave(s), {self.seconds:.0f} s; " + ", ".join(parts)
                + (f"; {len(self.failed)} failed" if self.failed else ""))


def _dependencies_first(steps: list[Step]) -> list[Step]:
    """``steps`` in an order where every step comes after the planned steps it needs."""
    by_key, done, out = {s.key: s for s in steps}, set(), []

    def visit(s: Step) -> None:
        if s.key in done:
            return
        done.add(s.key)
        for k in s.needs:
            if k in by_key:
                visit(by_key[k])
        out.append(s)
    for s in steps:
        visit(s)
    return out


def _lab_params(params: dict) -> dict:
    """The parameters that decide which lab (model, device, lengths, precision) a step runs in."""
    keep = ("model", "device", "max_length", "test_size", "precision")
    return {k: v for k, v in params.items() if k in keep}


def sweep(chapters: list[tuple[str, dict]], client=None, workers: int | None = None, threads: int | None = None,
          home: str | None = None, stream=None, max_waves: int = 8, task: Callable = None) -> SweepReport:
    """Compute every step ``chapters`` need on Dask: ``client`` (a ``distributed.Client``), or a
    ``LocalCluster`` of ``workers`` processes (default: the cores here ÷ ``threads``). Each step
    is computed with ``threads`` torch threads on the CPU (default: torch's count here, the
    one ``skillgraft run`` computes with, so the chapters then read every step); the count is
    in each step's key. A failed step is reported with its key and traceback and the rest goes
    on; a rerun computes only what is missing. ``task`` replaces :func:`compute_step` as the
    function each Dask task runs."""
    import torch
    from dask.distributed import Client, LocalCluster, as_completed

    task = task or compute_step
    threads = threads or torch.get_num_threads()
    workers = workers or max(1, (os.cpu_count() or 1) // threads)
    stream = stream or sys.stderr
    report, start = SweepReport(), time.time()
    own = None
    if client is None:
        gpu = any(str(p.get("device", "cpu")).startswith("cuda") for _, p in chapters)
        own = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           resources={"GPU": 1} if gpu else None)
        client = Client(own)
    try:
        stream.write(f"sweep: Dask dashboard at {client.dashboard_link}\n")
        home = home or os.environ.get("SKILLGRAFT_HOME")
        seen: set[str] = set()
        for wave in range(1, max_waves + 1):
            with torch_threads(threads):  # the steps are planned, so keyed, for the threads they run with
                steps, complete = plan(chapters)
            steps = [s for s in steps if s.key not in seen]
            if not steps:
                if not complete:
                    raise RuntimeError("planning stopped on a stand-in but found nothing to compute")
                break
            report.waves, report.steps = wave, report.steps + steps
            seen |= {s.key for s in steps}
            counts = ", ".join(f"{sum(s.kind == k for s in steps)} {k}" for k in ("delta", "mask", "probs"))
            stream.write(f"sweep: wave {wave}: {len(steps)} steps to compute ({counts})\n")
            futures, by_future = {}, {}
            for s in _dependencies_first(steps):
                deps = [futures[k] for k in s.needs if k in futures]
                gpu_step = str(dict(s.lab).get("device", "cpu")).startswith("cuda")
                fut = client.submit(task, s, home, *deps, key=f"{s.kind}-{s.key[:16]}-{wave}",
                                    retries=2, pure=False, resources={"GPU": 1} if gpu_step else None)
                futures[s.key], by_future[fut.key] = fut, s
            finished = 0
            for fut in as_completed(list(futures.values())):
                s = by_future[fut.key]
                finished += 1
                running = len(steps) - finished
                if fut.status == "finished":
                    report.done[s.kind] = report.done.get(s.kind, 0) + 1
                    stream.write(f"sweep: [{finished}/{len(steps)}, {running} to go] done {s.kind} {s.key[:12]}: "
                                 f"{s.label}\n")
                else:
                    err = fut.exception()
                    tb = "".join(traceback.format_tb(fut.traceback())) if fut.traceback() is not None else ""
                    report.failed[s.key] = f"{err!r}\n{tb}"
                    stream.write(f"sweep: [{finished}/{len(steps)}, {running} to go] FAILED {s.kind} {s.key[:12]}: {s.label}: "
                                 f"{err!r}\n{tb}")
                stream.flush()
            if report.failed:  # what depends on a failed step cannot be planned; a rerun computes what is missing
                break
        report.seconds = time.time() - start
        stream.write(f"sweep: {report.summary()}\n")
        return report
    finally:
        if own is not None:
            client.close()
            own.close()
