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
import math
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
    """The grid's units (each with every parameter its notebooks default to), the localization-variance
    study, then the task survey."""
    from . import grid
    from .parameters import repo_root
    from .publishing import pages

    root = root or repo_root()
    out = []
    for unit in grid.units(grid.load(root)):
        out.append(Part(unit.label.split(":")[0], {name: (root / "notebooks" / f"{name}.ipynb",
                                                          grid._checked(root, name, params))
                                                   for name, params in unit.chapters}))
    out.append(Part("variance", {"variance": pages(root)["variance"]}))
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


def compute_seconds(book: dict) -> float:
    """What the recorded parts' computed steps cost, each step once: parts share steps (part 04's
    single-task fine-tunes are the ones part cr grafts), so the sum of their ``compute_seconds``
    counts a shared step in each part that resolves it. A record without its steps' seconds counts
    its ``compute_seconds`` whole."""
    steps: dict[str, float] = {}
    whole = 0.0
    for record in book.values():
        if "step_seconds" in record:
            steps.update(record["step_seconds"])
        else:
            whole += record["compute_seconds"]
    return whole + sum(steps.values())


def summary(results: Path) -> str:
    """The ledger in one paragraph: parts, entries, how they compared, what their steps cost, on
    which days and CPUs."""
    book = ledger(results)["parts"]
    if not book:
        return "nothing reproduced yet"
    entries = sum(len(r["entries"]) for r in book.values())
    exact = sum(r["bit_for_bit"] for r in book.values())
    hours = compute_seconds(book) / 3600
    days = sorted({r["date"][:10] for r in book.values()})
    cpus = sorted({r["machine"].get("cpu") or r["machine"].get("arch", "?") for r in book.values()})
    largest = {}
    for r in book.values():
        for k, v in r.get("largest", {}).items():
            largest[k] = max(largest.get(k, 0.0), v)
    gaps = ""
    if exact < entries and largest:
        gaps = (" The others within the tolerance, at most: " + ", ".join(
            f"{_GAPS[k]} {v:.3g}" for k, v in sorted(largest.items()) if k in _GAPS) + ".")
    return (f"{len(book)} part(s) reproduced from nothing ({', '.join(sorted(book))}): {entries} entries equal to the "
            f"published ones, {exact} of them bit for bit; {hours:.2f} h of computed steps, on {', '.join(days)}, "
            f"on {'; '.join(cpus)}.{gaps}")


def table(results: Path, todo: list[Part] | None = None) -> str:
    """The ledger as a Markdown table for the book's Reproductions page: one row per part (in
    :func:`parts`' order), whether its record is current, where and when it was reproduced (the CPU, and the
    numerics fingerprint where the record has one), its entries (bit for bit / within the tolerance), the
    largest gaps, what its steps cost, and whether its claims were compared."""
    layer = pub.Published(results)
    book = ledger(results)["parts"]
    rows = ["| part | status | machine | date | entries: exact / within | largest gaps | computed | claims |",
            "|---|---|---|---|---|---|---|---|"]
    short = {"mean_abs_prob": "Δp", "accuracy": "acc.", "mask_size": "size"}
    for part in parts() if todo is None else todo:
        record = book.get(part.label)
        why = current(record, part, layer)
        if record is None:
            rows.append(f"| {part.label} | {why} | — | — | — | — | — | — |")
            continue
        m = record.get("machine", {})
        where = (m.get("cpu") or m.get("arch", "?")).replace("(R)", "")
        where += f", `{m['fingerprint']}`" if m.get("fingerprint") else ", no fingerprint"
        gaps = ", ".join(f"{short[k]} {v:.2g}" for k, v in sorted(record.get("largest", {}).items()) if k in short)
        rows.append(f"| {part.label} | {'current' if why is None else why} | {where}, {record.get('threads')} threads | "
                    f"{record['date'][:10]} | {len(record['entries'])}: {record['bit_for_bit']} / "
                    f"{record.get('within_tolerance', 0)} | {gaps or '—'} | {record['compute_seconds'] / 3600:.2f} h | "
                    f"{record.get('claims', 'not yet')} |")
    return "\n".join(rows) + "\n"


_GAPS = {"mean_abs_prob": "mean |Δp| of a prediction", "accuracy": "accuracy change",
         "mask_size": "relative change of a graft's size"}


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


def _like(a, b, keys: dict[str, str], field: str = "") -> bool:
    """Whether spec ``a`` (recomputed) asks for what spec ``b`` (published) does: its inputs are
    ``b``'s (through ``keys``, recomputed key -> published key), its sparsity equal within the
    graft-size tolerance (a baseline sized like a graft whose size moved by an entry or two), and every
    other value (a learning rate, a seed) exactly equal."""
    from .publishing import TOLERANCE

    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return False
        if "key" in a and "recipe" in a and keys.get(a["key"], a["key"]) != b["key"]:
            return False
        return all(k == "key" or _like(a[k], b[k], keys, k) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_like(x, y, keys, field) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and field == "sparsity":
        return math.isclose(a, b, rel_tol=TOLERANCE["mask_size"])
    return a == b


def _twins(missing: dict[str, tuple], layer: pub.Published, keys: dict[str, str]) -> None:
    """Find, for each recomputed entry that is not published under its own key (``missing``: name ->
    (recipe, record)), the published entry of the same recipe made from the same inputs with the
    same numbers within the tolerance: on another CPU a step sized from a computed count (a
    baseline the size of a graft) has another key. Inputs first: ``keys`` grows as twins are found."""
    by_recipe: dict[tuple[str, str], list[str]] = {}
    for name, info in layer.entries.items():
        by_recipe.setdefault((name.split("/", 1)[0], info.get("recipe")), []).append(name)
    found = True
    while found:
        found = False
        for name, (recipe, record) in list(missing.items()):
            for other in by_recipe.get((recipe.kind, record["recipe"]), []):
                body = layer.body(other)
                if body is not None and _like(record["spec"], body["record"]["spec"], keys):
                    keys[recipe.key] = other.split("/", 1)[1]
                    del missing[name]
                    found = True
                    break


def _compare(resolved: dict, layer: pub.Published, store, threads: int) -> tuple[dict, list, int, dict]:
    """(published name -> sha256, differences, entries compared bit for bit, the largest gaps of
    :func:`skillgraft.publishing.gaps`) of a part's entries.
    An entry is compared with the published one of its key: bit for bit where that was published
    with this machine's numerics fingerprint and thread count (:func:`skillgraft.publishing.exactness`; for an
    entry without one, from this CPU model, torch and thread count); elsewhere within the tolerance, and an entry whose
    key another CPU's numbers moved is compared with its twin (:func:`_twins`)."""
    from .publishing import Difference, _compare as compare, exactness, gaps

    here = pub.machine()
    shas, differences, exact_count, largest = {}, [], 0, {}
    keys: dict[str, str] = {}
    missing = {}
    for key in sorted(resolved):
        recipe = resolved[key]
        name = layer.name(recipe, threads)
        if name not in layer.entries:
            path = store.path(recipe) / "meta.json"
            if path.is_file():
                missing[key] = (recipe, json.loads(path.read_text()))
        else:
            keys[recipe.key] = name.split("/", 1)[1]
    _twins(missing, layer, keys)
    for key in sorted(resolved):
        recipe = resolved[key]
        name = f"{recipe.kind}/{keys[recipe.key]}" if recipe.key in keys else layer.name(recipe, threads)
        body = layer.body(name)
        if body is None:
            differences.append(Difference(f"{recipe.label()} ({name})", "is not published, or its file is refused"))
            continue
        entry = store.load(recipe)
        if entry is None:
            differences.append(Difference(f"{recipe.label()} ({name})", "is not in the reproduction's store"))
            continue
        made = body.get("provenance", {})
        exact, _ = exactness(made, here, threads)
        if exact and name != layer.name(recipe, threads):
            differences.append(Difference(f"{recipe.label()} ({layer.name(recipe, threads)})",
                                          "is not published under its key on the machine kind it was published from"))
            continue
        differences += compare(recipe, entry, body, exact)
        shas[name] = layer.entries[name]["sha256"]
        exact_count += exact
        for what, value in gaps(recipe, entry, body).items():
            largest[what] = max(largest.get(what, 0.0), value)
    return shas, differences, exact_count, largest


def reproduce(results: Path, store_root: Path, todo: list[Part] | None = None, stream: TextIO | None = None) -> list:
    """Reproduce each part of ``todo`` (default: :func:`parts`) whose record is not current:
    computed from nothing into ``store_root`` and compared with ``results``; a part that matches
    is recorded in the ledger at once (atomically). Returns the differences of the first part that
    does not match (none recorded then), or an empty list."""
    from . import publishing
    from .files import atomic
    from .progress import Watcher
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
        left = [p.label for p in todo[todo.index(part) + 1:]]
        stream.write(f"reproduce: {part.label}: then {', '.join(left) if left else 'nothing'} left\n")
        # which fine-tune, graft or prediction runs and how far along, as `skillgraft run` shows it
        with _environment(SKILLGRAFT_RESULTS="off", SKILLGRAFT_STORE=str(store_root)), \
                Watcher(f"reproduce {part.label}", stream):
            resolved, _, threads = publishing.resolve_pages(part.pages, stream)
        wall = time.perf_counter() - start
        store = Store(store_root)
        shas, differences, exact, largest = _compare(resolved, layer, store, threads)
        if differences:
            stream.write(f"reproduce: {part.label}: {len(differences)} difference(s) from the published results\n")
            return differences
        costs = pub._step_seconds(store)
        steps = {name: costs[key] for name in sorted(resolved) if (key := name.split("/", 1)[1]) in costs}
        book = ledger(results)  # as it is now: another run may have recorded a part meanwhile
        book["parts"][part.label] = {
            "parameters": part.parameters(), "entries": shas, "bit_for_bit": exact,
            "within_tolerance": len(shas) - exact, "largest": {k: round(v, 6) for k, v in sorted(largest.items())},
            "compute_seconds": round(sum(steps.values()), 1), "step_seconds": steps,
            "wall_seconds": round(wall, 1), "threads": threads, "machine": pub.machine(), "skillgraft": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}
        with atomic(results / LEDGER) as tmp:
            tmp.write_text(json.dumps(book, sort_keys=True, indent=1) + "\n")
        stream.write(f"reproduce: {part.label}: {len(shas)} entries equal to the published ones "
                     f"({exact} bit for bit) in {wall:.0f} s; recorded in {results / LEDGER}\n")
    return []
