"""The grid behind the verdicts (``configs/grid/``), computed chain by chain and published as it goes.

Each chapter's grid file sets its tasks, sources or sequences; everything else is the notebook's
default. A sweep of a whole chapter computes in waves (every fine-tune, then every graft, then
every prediction), so a machine that stops mid-way leaves fine-tunes whose predictions were never
made; and a published fine-tune carries its history, not its δ, so what is made from it later
means fine-tuning again. :func:`units` therefore cuts the grid into units that each finish what
they start: chapter 04 whole (its single-task fine-tunes, the multi-task model, the regions), then
per task everything that starts from its fine-tunes (chapters 01 and 02 on that task, 03 from it
as a source, 05's sequences that begin with it). :func:`run` sweeps one unit at a time and
publishes the local store after each (:func:`skillgraft.publishing.snapshot`), so a run stopped at
any point loses at most the unit it was in, and a rerun skips what is published. Between the two,
the unit's chapters run once through the real lab: a sweep computes the fine-tunes, grafts and
predictions, and leaves to the chapters the cheap steps nothing else is made from (the similarity
of two deltas, a location, a baseline mask); they are computed then, while the deltas they read are
in the local store, so that the published unit holds everything its chapters resolve.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .parameters import check_parameters, notebook_parameters, repo_root

__all__ = ["Unit", "load", "units", "run"]

FOLDER = Path("configs") / "grid"


@dataclass
class Unit:
    """A part of the grid that finishes what it starts: (chapter, parameters it sets) pairs."""

    label: str
    chapters: list[tuple[str, dict]] = field(default_factory=list)


def load(root: Path | None = None) -> dict[str, dict]:
    """Each chapter's grid file, by the chapter's notebook name: the parameters it sets."""
    root = root or repo_root()
    files = sorted((root / FOLDER).glob("[0-9][0-9]_*.yaml"))
    if not files:
        raise FileNotFoundError(f"no grid files in {root / FOLDER}")
    return {f.stem: yaml.safe_load(f.read_text()) or {} for f in files}


def units(grid: dict[str, dict]) -> list[Unit]:
    """Chapter 04 whole, then one unit per task, in the order the grid names them (04's tasks
    first, so that their fine-tunes are still in the local store when their unit runs)."""
    by = {name[:2]: (name, params) for name, params in grid.items()}
    out = []
    if "04" in by:
        out.append(Unit("04: the multi-task model and its regions", [by["04"]]))
    order = list(dict.fromkeys([*by.get("04", ("", {}))[1].get("tasks", []),
                                *by.get("01", ("", {}))[1].get("tasks", []),
                                *by.get("02", ("", {}))[1].get("tasks", []),
                                *by.get("03", ("", {}))[1].get("sources", []),
                                *(s[0] for s in by.get("05", ("", {}))[1].get("sequences", []))]))
    for task in order:
        unit = Unit(task)
        for chapter, key in (("01", "tasks"), ("02", "tasks"), ("03", "sources")):
            if chapter in by and task in by[chapter][1].get(key, []):
                name, params = by[chapter]
                unit.chapters.append((name, {**params, key: [task]}))
        if "05" in by:
            name, params = by["05"]
            mine = [s for s in params.get("sequences", []) if s[0] == task]
            if mine:
                unit.chapters.append((name, {**params, "sequences": mine}))
        if unit.chapters:
            out.append(unit)
    return out


def _checked(root: Path, name: str, given: dict) -> dict:
    """The chapter's full parameters for a unit; a unit of chapter 03 scores only the targets that
    share its source's classes (the others are another source's)."""
    path = root / "notebooks" / f"{name}.ipynb"
    defaults = notebook_parameters(path)
    if "sources" in given:
        from .chapters.ood import same_labels

        targets = {**defaults, **given}["targets"]
        given = {**given, "targets": [t for t in targets if any(same_labels(s, t) for s in given["sources"])]}
    return {**defaults, **check_parameters(path, given)}


def run(root: Path | None = None, only: list[str] | None = None, dry_run: bool = False, results: Path | None = None,
        stream=None) -> list[Unit]:
    """Sweep the grid unit by unit, publishing the local store into ``results`` after each."""
    from . import publishing, sweep

    root = root or repo_root()
    stream = stream or sys.stderr
    todo = units(load(root))
    if only:
        unknown = sorted(set(only) - {u.label.split(":")[0] for u in todo})
        if unknown:
            raise ValueError(f"no grid unit {', '.join(map(repr, unknown))}; accepted: "
                             + ", ".join(u.label.split(":")[0] for u in todo))
        todo = [u for u in todo if u.label.split(":")[0] in only]
    checked = [(u, [(name, _checked(root, name, params)) for name, params in u.chapters]) for u in todo]
    for unit, chapters in checked:
        stream.write(f"grid: {unit.label}: " + "; ".join(f"{n[:2]} {({k: v for k, v in p.items() if k in ('tasks', 'sources', 'sequences')})}"
                                                      for n, p in chapters) + "\n")
    if dry_run:
        return todo
    for unit, chapters in checked:
        report = sweep.sweep(chapters, stream=stream)
        if report.failed:
            raise RuntimeError(f"grid: {unit.label}: {len(report.failed)} step(s) failed; a rerun computes only "
                               "what is missing")
        publishing.resolve_pages({name: (root / "notebooks" / f"{name}.ipynb", params) for name, params in chapters},
                                 stream)  # the cheap leaves the sweep left to the chapters, into the store
        publishing.snapshot(results or root / "results", stream)
        stream.write(f"grid: {unit.label}: done, published ({report.summary()})\n")
    return todo
