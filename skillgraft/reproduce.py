"""Everything from nothing, in parts whose proof outlives the machine (``make reproduce``).

Recomputing what the book's pages resolve takes hours on two cores, longer than one machine may be
kept, and a store of fine-tuned deltas (425 MB each) cannot travel. So the reproduction goes part
by part (:func:`parts`: the grid's units, :func:`skillgraft.grid.units`, then the task survey):
each part's pages are run with the published layer off, into a store of their own (which keeps
every finished step on this machine, so a stopped part resumes where it stopped), and every entry
they resolve is compared with the published one, bit for bit where it was published on this
machine kind and thread count, elsewhere within :data:`skillgraft.publishing.TOLERANCE`. A part
whose every entry matches is recorded in the ledger (``results/REPRODUCED.json``, committed): its
pages' parameters, each entry's name and published sha256, how it was compared, what its steps
cost, the machine, the date. A later run, here or on another machine, skips a part whose record
is current (the same parameters, every entry still published with the same sha256); a republished
entry or changed code makes its part stale, and it is reproduced again.

When every part is recorded and the records cover every entry the book's pages use
(:func:`check`), nbval re-executes the committed notebooks on entries each of which was recomputed
from nothing and found equal: the reproduction's own store where this machine still holds it,
the published layer elsewhere.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from . import __version__
from . import published as pub

__all__ = ["LEDGER", "FORMAT", "Part", "parts", "ledger", "current", "check", "reproduce"]

LEDGER = "REPRODUCED.json"
FORMAT = "skillgraft.reproduced/1"


@dataclass
class Part:
    """A part of the reproduction: its label and the pages it runs, page name -> (notebook, parameters)."""

    label: str
    pages: dict[str, tuple[Path | None, dict]]

    def parameters(self) -> dict:
        from .publishing import _jsonable

        return {name: _jsonable(params) for name, (_, params) in self.pages.items()}


def parts(root: Path | None = None) -> list[Part]:
    """The grid's units (each with every parameter its notebooks default to), then the task survey."""
    from . import grid
    from .parameters import repo_root
    from .publishing import pages

    root = root or repo_root()
    out = []
    for unit in grid.units(grid.load(root)):
        out.append(Part(unit.label.split(":")[0], {name: (root / "notebooks" / f"{name}.ipynb",
                                                          grid._checked(root, name, params))
                                                   for name, params in unit.chapters}))
    out.append(Part("survey", {"survey": pages(root)["survey"]}))
    return out


def ledger(results: Path) -> dict:
    """The ledger at ``results`` (an empty one where there is none)."""
    path = Path(results) / LEDGER
    data = json.loads(path.read_text()) if path.is_file() else {"format": FORMAT, "parts": {}}
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is of format {data.get('format')!r}; this code reads {FORMAT!r}")
    return data


def current(record: dict | None, part: Part, layer: pub.Published) -> str | None:
    """Why ``record`` does not prove ``part`` reproduced against ``layer`` now; None where it does."""
    if record is None:
        return "not reproduced"
    if record.get("parameters") != part.parameters():
        return "its pages' parameters changed since it was reproduced"
    moved = [name for name, sha in record.get("entries", {}).items()
             if layer.entries.get(name, {}).get("sha256") != sha]
    if moved:
        return f"{len(moved)} of its entries were republished or dropped since it was reproduced (e.g. {moved[0]})"
    return None


def check(results: Path, todo: list[Part] | None = None) -> list[str]:
    """What keeps the ledger at ``results`` from proving the book's published entries reproduced
    from nothing: parts not (or no longer) reproduced, and entries the pages use that no part
    covers. An empty list: each was recomputed and found equal."""
    layer = pub.Published(results)
    book = ledger(results)["parts"]
    todo = parts() if todo is None else todo
    problems = [f"{p.label}: {why}" for p in todo if (why := current(book.get(p.label), p, layer))]
    covered = {name for p in todo for name in book.get(p.label, {}).get("entries", {})}
    missing = sorted(layer.claimed() - covered)
    if missing and not problems:
        problems.append(f"{len(missing)} entries the pages use are in no reproduced part (e.g. {missing[0]})")
    return problems


def summary(results: Path) -> str:
    """The ledger in one paragraph: parts, entries, what their steps cost, on how many days and machines."""
    book = ledger(results)["parts"]
    if not book:
        return "nothing reproduced yet"
    entries = sum(len(r["entries"]) for r in book.values())
    exact = sum(r["bit_for_bit"] for r in book.values())
    hours = sum(r["compute_seconds"] for r in book.values()) / 3600
    wall = sum(r["wall_seconds"] for r in book.values()) / 3600
    days = sorted({r["date"][:10] for r in book.values()})
    machines = {json.dumps(r["machine"], sort_keys=True) for r in book.values()}
    return (f"{len(book)} parts reproduced from nothing, {entries} entries ({exact} bit for bit): "
            f"{hours:.2f} h of computed steps, {wall:.2f} h of wall time, on {len(days)} day(s) "
            f"({days[0]} to {days[-1]}) and {len(machines)} machine kind(s)")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _compare(resolved: dict, layer: pub.Published, store, threads: int) -> tuple[dict, list, int]:
    """(name -> published sha256, differences, entries compared bit for bit) of a part's entries."""
    from .publishing import Difference, _compare as compare

    here = pub.machine()
    shas, differences, exact_count = {}, [], 0
    for key in sorted(resolved):
        recipe = resolved[key]
        name = layer.name(recipe, threads)
        body = layer.body(name)
        if body is None:
            differences.append(Difference(f"{recipe.label()} ({name})", "is not published, or its file is refused"))
            continue
        entry = store.load(recipe)
        if entry is None:
            differences.append(Difference(f"{recipe.label()} ({name})", "is not in the reproduction's store"))
            continue
        made = body.get("provenance", {})
        exact = (made.get("cpu"), made.get("torch"), made.get("threads")) == (here["cpu"], here["torch"], threads)
        differences += compare(recipe, entry, body, exact)
        shas[name] = layer.entries[name]["sha256"]
        exact_count += exact
    return shas, differences, exact_count


def reproduce(results: Path, store_root: Path, todo: list[Part] | None = None, stream: TextIO | None = None) -> list:
    """Reproduce each part of ``todo`` (default: :func:`parts`) whose record is not current:
    computed from nothing into ``store_root`` and compared with ``results``; a part that matches
    is recorded in the ledger at once (atomically). Returns the differences of the first part that
    does not match (none recorded then), or an empty list."""
    from . import publishing
    from .files import atomic
    from .store import Store

    stream = stream or sys.stderr
    results, store_root = Path(results), Path(store_root)
    layer = pub.Published(results)
    todo = parts() if todo is None else todo
    for part in todo:
        book = ledger(results)
        why = current(book["parts"].get(part.label), part, layer)
        if why is None:
            r = book["parts"][part.label]
            stream.write(f"reproduce: {part.label}: reproduced on {r['date'][:10]} ({len(r['entries'])} entries), "
                         "current\n")
            continue
        stream.write(f"reproduce: {part.label}: {why}; computing {', '.join(part.pages)} from nothing in {store_root}\n")
        start = time.perf_counter()
        with _environment(SKILLGRAFT_RESULTS="off", SKILLGRAFT_STORE=str(store_root)):
            resolved, _, threads = publishing.resolve_pages(part.pages, stream)
        wall = time.perf_counter() - start
        store = Store(store_root)
        shas, differences, exact = _compare(resolved, layer, store, threads)
        if differences:
            stream.write(f"reproduce: {part.label}: {len(differences)} difference(s) from the published results\n")
            return differences
        costs = pub._step_seconds(store)
        book["parts"][part.label] = {
            "parameters": part.parameters(), "entries": shas, "bit_for_bit": exact,
            "within_tolerance": len(shas) - exact,
            "compute_seconds": round(sum(costs.get(name.split("/", 1)[1], 0.0) for name in resolved), 1),
            "wall_seconds": round(wall, 1), "threads": threads, "machine": pub.machine(), "skillgraft": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}
        with atomic(results / LEDGER) as tmp:
            tmp.write_text(json.dumps(book, sort_keys=True, indent=1) + "\n")
        stream.write(f"reproduce: {part.label}: {len(shas)} entries equal to the published ones "
                     f"({exact} bit for bit) in {wall:.0f} s; recorded in {results / LEDGER}\n")
    return []
