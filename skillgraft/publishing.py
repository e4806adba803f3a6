"""Publishing the book's evidence, guarding it, and proving it comes from this code.

- :func:`publish` runs every book page's experiment (``run(params, setting)`` with the page's
  default parameters, as its notebook calls it) with a lab that notes each stored recipe it
  resolves, computing what is missing, then writes those entries into the published layer
  (:mod:`skillgraft.published`). Idempotent: unchanged entries keep their files.
- :func:`guard` is the staleness guard, in seconds and without a model: :func:`check` (every
  page's parameters are the ones published, every entry's file passes its checksum, and every
  entry was made by this code) and the answers page's freshness. It names what is missing and
  the command that computes it.
- :func:`spot_check` recomputes one chain of chapter 01's grid (a fine-tune, its graft, their
  test predictions) from nothing — an empty store, the published layer off — and compares it
  with the published entries: bit for bit on the machine and thread count they were published
  with; elsewhere within :data:`TOLERANCE`. The chain rotates with the date through the shortest ones (:func:`daily`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import tempfile
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from . import published as pub
from .published import Published

__all__ = ["PAGES", "TOLERANCE", "accuracy_tolerance", "exactness", "pages", "resolve_pages", "publish", "snapshot", "guard", "check", "spot_check", "gaps", "plan_report"]

# A recomputation on another CPU or thread count differs in the last bits of every matrix product, which 80
# SGD steps amplify; it checks that this code computes the same thing, not the same bits: each prediction's
# class probabilities within 0.05 on average, accuracy within 2 points or one example of that split, whichever
# is larger (:func:`accuracy_tolerance`: 2 points are finer than one example of a 48-example dev set), the
# graft's size within 10%. Fixed before the parts left of the reproduction are run again.
TOLERANCE = {"mean_abs_prob": 0.05, "accuracy": 0.02, "mask_size": 0.10}


def accuracy_tolerance(examples: int) -> float:
    """How far a recomputed accuracy may be from the published one on a split of ``examples``: 2 points, or one
    example where that is more."""
    return max(TOLERANCE["accuracy"], 1.0 / max(int(examples), 1))


def exactness(made: dict, here: dict, threads: int) -> tuple[bool, str]:
    """Whether a recomputation here must equal an entry ``made`` (its provenance) bit for bit, and why: where both
    record a numerics fingerprint, exactly when they match at the same thread count; for an entry published before
    fingerprints were recorded, when the CPU model, torch and thread count match."""
    if made.get("fingerprint") and here.get("fingerprint"):
        same = made["fingerprint"] == here["fingerprint"] and made.get("threads") == threads
        why = (f"numerics fingerprints match ({here['fingerprint']})" if same else
               f"numerics fingerprint {here['fingerprint']} here, {made['fingerprint']} where published"
               if made["fingerprint"] != here["fingerprint"] else f"{threads} threads here, {made.get('threads')} there")
        return same, why
    same = (made.get("cpu"), made.get("torch"), made.get("threads")) == (here.get("cpu"), here.get("torch"), threads)
    return same, ("the entry records no numerics fingerprint: " + ("same CPU model, torch and threads" if same else
                                                                   "another CPU model, torch or thread count"))


def _page_runs() -> dict[str, Callable]:
    from .chapters import CHAPTERS, survey, variance
    return {**{name: module.run for name, module in CHAPTERS.items()}, "survey": survey.run, "variance": variance.run}


PAGES = ("01_single_task_grafting", "02_calibration", "03_ood", "04_multitask", "05_continual_learning", "survey",
         "variance")
BOOK_PAGES = ("survey", "variance")  # pages with an experiment that live in book/, not notebooks/


def pages(root: Path | None = None) -> dict[str, tuple[Path, dict]]:
    """Each book page with an experiment: its notebook and default parameters."""
    from .parameters import notebook_parameters, repo_root

    root = root or repo_root()
    paths = {name: root / ("book" if name in BOOK_PAGES else "notebooks") / f"{name}.ipynb" for name in PAGES}
    return {name: (path, notebook_parameters(path)) for name, path in paths.items()}


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=str))


def resolve_pages(which: dict[str, tuple[Path, dict]], stream: TextIO | None = None) -> tuple[dict, dict, int]:
    """Run each page's experiment; returns (``kind/key`` -> recipe of every stored recipe resolved,
    page -> the names its experiment resolved, the labs' torch thread count)."""
    from .chapters.common import Setting

    runs, ledger, by_page, threads = _page_runs(), {}, {}, None
    for name, (_, params) in which.items():
        setting = Setting.from_params(**params)
        lab = setting.lab()
        if threads is not None and lab.threads != threads:
            raise RuntimeError(f"{name} resolves with {lab.threads} torch threads, the others with {threads}")
        threads, lab.ledger = lab.threads, {}
        try:
            runs[name](params, setting)
        finally:
            mine, lab.ledger = _with_inputs(lab.ledger), None
        ledger.update(mine)
        by_page[name] = sorted(mine)
        if stream is not None:
            stream.write(f"publish: {name}: {len(mine)} entries\n")
    return ledger, by_page, threads or 0


def _with_inputs(ledger: dict) -> dict:
    """``ledger`` and every stored recipe its entries were computed from (a prediction's mask, …):
    the provenance of each published entry is published too, however it was resolved this time."""
    from .recipes import stored_inputs

    out, todo = dict(ledger), list(ledger.values())
    while todo:
        for r in stored_inputs(todo.pop()):
            if f"{r.kind}/{r.key}" not in out:
                out[f"{r.kind}/{r.key}"] = r
                todo.append(r)
    return out


def publish(root: Path, which: dict[str, tuple[Path, dict]] | None = None, stream: TextIO | None = None):
    """Resolve every page (computing what is missing) and write the published layer at ``root``.
    What a page used before and no longer uses is dropped, and so is what this code no longer
    reaches; entries no page has used (``publish --stored``) are kept while this code reaches them."""
    import sys

    from .store import default_store

    stream = stream or sys.stderr
    which = which or pages()
    previous = Published(root) if (root / pub.MANIFEST).is_file() else None
    ledger, by_page, threads = resolve_pages(which, stream)
    chapters = {name: {"parameters": _jsonable(params), "entries": by_page[name]} for name, (_, params) in which.items()}
    if previous is not None:  # pages not republished now keep their published entries
        if previous.threads not in (None, threads):
            raise RuntimeError(f"the published layer was computed with {previous.threads} torch threads, this run "
                               f"with {threads}: publish every page again with one count")
        for name, page in previous.manifest.get("chapters", {}).items():
            if name not in chapters:
                chapters[name] = page
                ledger.update({e: _Kept(e) for e in page.get("entries", []) if e not in ledger})
        ledger.update({e: _Kept(e) for e in _unclaimed(previous) if e not in ledger})
    report = pub.write(root, ledger, default_store(), previous, threads, chapters)
    for what, names in (("added", report.added), ("replaced", report.replaced), ("dropped", report.dropped)):
        for name in names:
            stream.write(f"publish: {what} {name}\n")
    stream.write(f"publish: {report.summary()} in {root}\n")
    return report


def snapshot(root: Path, stream: TextIO | None = None):
    """Publish every entry of the local store that this code can reach (none stale), computing
    nothing and keeping what ``root`` already holds, so that the finished steps of a long
    computation (a sweep of the grid) outlive the machine: complete chains are then read from the
    published layer, and only what was unfinished is computed again. The pages' published
    parameters stay as they were; ``make publish`` later writes the layer the book needs: it drops
    what a page used before and no longer uses, and keeps these entries while this code reaches them."""
    import sys

    from .store import default_store

    stream = stream or sys.stderr
    store = default_store()
    previous = Published(root) if (root / pub.MANIFEST).is_file() else None
    ledger: dict = {}
    for e in store.entries():
        if e["stale"]:
            continue
        name = f"{e['kind']}/{e['key']}"
        record = json.loads((store.root / name / "meta.json").read_text())
        ledger[name] = _Stored(record, e["kind"], e["key"])
    threads = {int(r.record["spec"].get("env", {}).get("threads") or 0) for r in ledger.values()} - {0}
    threads |= {previous.threads} if previous is not None and previous.threads else set()
    if len(threads) > 1:
        raise RuntimeError(f"the local store and the published layer hold entries made with {sorted(threads)} torch "
                           "threads; a published layer holds one count")
    if previous is not None:
        ledger.update({name: _Kept(name) for name in previous.entries if name not in ledger})
    chapters = previous.manifest.get("chapters", {}) if previous is not None else {}
    report = pub.write(root, ledger, store, previous, threads.pop() if threads else 0, chapters)
    stream.write(f"publish --stored: {report.summary()} in {root}\n")
    return report


def _unclaimed(layer: Published) -> list[str]:
    """The entries of ``layer`` that no page used when it was published (those of ``publish --stored``:
    a grid being computed, a benchmark's steps) and that this code still reaches: a page's publish
    keeps them, so that a sweep's published units are never dropped before a page uses them."""
    refused, stale = layer.check()
    left_out = layer.claimed() | set(refused) | set(stale)
    return [e for e in layer.entries if e not in left_out]


class _Kept:
    """A published entry kept as it is (its page was not republished): read from the previous layer."""

    def __init__(self, name: str):
        self.kind, self.key = name.split("/", 1)

    def label(self) -> str:
        return f"{self.kind} {self.key[:12]}"


def guard(root: Path | None, which: dict[str, tuple[Path, dict]] | None = None,
          answers: tuple[Path, Path] | None = None) -> list[str]:
    """The staleness guard (``skillgraft publish --check``): what :func:`check` finds wrong with the
    published layer at ``root``, and what is stale on the answers page, whose measured sentences the
    teaching and results pages glue (:func:`exercises.stale`). ``answers`` is (teaching page, answers
    notebook), by default the book's own. No model is loaded and nothing is computed."""
    from .chapters import exercises

    return exercises.stale(*(answers or exercises.book_pages())) + check(root, which)


def check(root: Path | None, which: dict[str, tuple[Path, dict]] | None = None) -> list[str]:
    """What is wrong with the published layer at ``root`` for the pages ``which`` (by default the
    book's, as they are now): an empty list, nothing. No model is loaded and nothing is computed."""
    if root is None or not (root / pub.MANIFEST).is_file():
        return [f"no published results at {root} (SKILLGRAFT_RESULTS); `make publish` computes and publishes them"]
    problems = []
    layer = Published(root)
    which = which or pages()
    published_pages = layer.manifest.get("chapters", {})
    for name, (path, params) in which.items():
        had = published_pages.get(name, {}).get("parameters")
        if had is None:
            problems.append(f"{name}: not published")
        elif had != _jsonable(params):
            changed = sorted(k for k in set(had) | set(params) if had.get(k) != _jsonable(params).get(k))
            problems.append(f"{name}: its parameters changed since publishing ({', '.join(changed)})")
    refused, stale = layer.check()
    problems += [f"{name}: its file {root / layer.entries[name]['file']} is missing or fails its sha256" for name in refused]
    problems += [f"{name} ({layer.entries[name]['label']}): made by other code than this; its key is no longer reached"
                 for name in stale]
    return problems


# ---------------------------------------------------------------------------- the spot check
@dataclasses.dataclass
class Difference:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def chains(params: dict) -> list[tuple[str, int]]:
    """Chapter 01's grid: (task, seed) pairs, in order."""
    return [(task, seed) for task in params["tasks"] for seed in params["seeds"]]


def daily(params: dict) -> list[tuple[str, int]]:
    """The chains the day's spot check rotates through: those of the tasks with the fewest classes
    in chapter 01's grid, whose fine-tunes take the fewest steps (steps scale with the classes,
    :meth:`FinetuneConfig.for_classes`), so that ``make test`` costs one short chain whatever the
    date; ``skillgraft spotcheck --chain N`` checks any chain of :func:`chains`."""
    from . import tasks

    classes = {task: len(tasks.get_task(task).class_names) for task in params["tasks"]}
    fewest = min(classes.values())
    return [(task, seed) for task, seed in chains(params) if classes[task] == fewest]


def _compare_arrays(what: str, got: np.ndarray, want: np.ndarray) -> list[Difference]:
    """Bit for bit: the shape, then where the values differ (within the tolerance, :func:`gaps`)."""
    if got.shape != want.shape:
        return [Difference(what, f"shape {got.shape} recomputed, {want.shape} published")]
    if np.array_equal(got, want):
        return []
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    i = np.unravel_index(int(diff.argmax()), diff.shape)
    return [Difference(what, f"{int((diff > 0).sum())} of {diff.size} values differ; largest |Δ| {diff.max():.3g} "
                             f"at {tuple(int(x) for x in i)}: published {want[i]!r}, recomputed {got[i]!r}")]


def _compare(recipe, entry, body: dict, exact: bool) -> list[Difference]:
    """Differences between a recomputed store entry and its published body."""
    from .published import _decode

    label, out = recipe.label(), []
    meta_want, meta_got = body["record"]["data"], json.loads(json.dumps(entry.meta))
    if recipe.kind == "delta":
        for k in ("best_step", "passes", "train_loss", "train_acc", "best_dev_acc", "fit"):
            a, b = meta_got.get(k), meta_want.get(k)
            same = a == b if exact else (a == b or (isinstance(a, float) and isinstance(b, float)
                                                    and math.isclose(a, b, rel_tol=0.05, abs_tol=0.01)))
            if not same:
                out.append(Difference(f"{label}: {k}", f"published {b!r}, recomputed {a!r}"))
        want = [r.get("train_loss") for r in meta_want.get("history", [])]
        got = [r.get("train_loss") for r in meta_got.get("history", [])]
        if exact:
            out += _compare_arrays(f"{label}: train loss per step", np.array(got, float), np.array(want, float))
        return out
    tensors = _decode(body["tensors"])
    if recipe.kind == "mask":
        if exact:
            for name in sorted(set(tensors) | set(entry.tensors)):
                if name not in tensors or name not in entry.tensors or not np.array_equal(
                        entry.tensors[name].numpy(), tensors[name].numpy()):
                    out.append(Difference(f"{label}: positions of {name}", "differ"))
                    break
        elif gaps(recipe, entry, body, tensors)["mask_size"] > TOLERANCE["mask_size"]:
            out.append(Difference(f"{label}: size", f"published {meta_want.get('count', 0)}, "
                                                    f"recomputed {meta_got.get('count', 0)}"))
        return out
    if recipe.kind == "probs":
        got, want = entry.tensors["probs"].numpy(), tensors["probs"].numpy()
        if exact or got.shape != want.shape:
            return out + _compare_arrays(f"{label}: probabilities", got, want)
        gap = gaps(recipe, entry, body, tensors)
        if gap["mean_abs_prob"] > TOLERANCE["mean_abs_prob"]:
            out.append(Difference(f"{label}: probabilities",
                                  f"mean |Δ| {gap['mean_abs_prob']:.3g} > {TOLERANCE['mean_abs_prob']}"))
        allowed = accuracy_tolerance(len(tensors["labels"]))
        if gap["accuracy"] > allowed + 1e-12:
            out.append(Difference(f"{label}: accuracy", f"differs by {gap['accuracy']:.3f} > {allowed:.3f}"))
        return out
    return out


def gaps(recipe, entry, body: dict, tensors: dict | None = None) -> dict[str, float]:
    """How far a recomputed entry is from its published body, in :data:`TOLERANCE`'s terms: a
    prediction's mean |Δp| and accuracy change, a graft's relative size change (``tensors``: the
    body's, decoded)."""
    from .published import _decode

    if recipe.kind == "probs":
        tensors = tensors if tensors is not None else _decode(body["tensors"])
        got, want, labels = entry.tensors["probs"].numpy(), tensors["probs"].numpy(), tensors["labels"].numpy()
        if got.shape != want.shape:
            return {}
        return {"mean_abs_prob": float(np.abs(got.astype(np.float64) - want.astype(np.float64)).mean()),
                "accuracy": abs(float((got.argmax(1) == labels).mean()) - float((want.argmax(1) == labels).mean()))}
    if recipe.kind == "mask":
        a, b = entry.meta.get("count", 0), body["record"]["data"].get("count", 0)
        return {"mask_size": abs(a - b) / max(b, 1)}
    return {}


def spot_check(root: Path, chain: int | None = None, params: dict | None = None,
               stream: TextIO | None = None) -> list[Difference]:
    """Recompute one chain of chapter 01's grid from nothing and compare it with the published
    entries; returns the differences (empty: the check passed). ``chain`` indexes
    :func:`chains` (default: the day's, rotating through :func:`daily`)."""
    import sys

    import torch

    from .chapters.common import Setting
    from .lab import Lab, Variant
    from .store import Store
    from .sweep import torch_threads

    stream = stream or sys.stderr
    layer = Published(root)
    if params is None:
        params = pages()["01_single_task_grafting"][1]
    grid = chains(params)
    if chain is None:  # the day's: rotating through the short chains
        task, seed = (rota := daily(params))[datetime.date.today().toordinal() % len(rota)]
        index = grid.index((task, seed))
    else:
        index = chain % len(grid)
        task, seed = grid[index]
    setting = Setting.from_params(**params)
    threads = layer.threads or torch.get_num_threads()
    here = pub.machine()
    with tempfile.TemporaryDirectory(prefix="skillgraft-spot-") as tmp, torch_threads(threads):
        lab = Lab(setting.model, setting.device, setting.max_length, setting.test_size, store=Store(tmp),
                  precision=setting.precision, published=None)
        stream.write(f"spot check: chain {index + 1} of {len(grid)} ({task}, seed {seed}) recomputed from nothing "
                     f"with {lab.threads} threads on {here['cpu'] or here['arch']}\n")
        dspec = lab.fine_tune(task, setting.k, seed, setting.finetune)
        target = float("nan") if setting.graft.start == "grow" else params["claim_sparsity"]  # as chapter 01's graft
        gspec = lab.graft(dspec, task, target, setting.graft)
        lab.predict(task, Variant("fine-tuned", delta=dspec))
        lab.predict(task, Variant("graft", dspec, gspec))
        differences, compared = [], 0
        for stored in lab.store.entries():  # every entry the chain computed, as the store lists them
            kind, key = stored["kind"], stored["key"]
            name = f"{kind}/{key}"
            record = json.loads((Path(tmp) / name / "meta.json").read_text())
            body = layer.body(name)
            recipe = _Named(record, kind, key)
            if body is None:
                differences.append(Difference(f"{record['recipe']} {name[:20]}", "is not published"))
                continue
            entry = lab.store.load(recipe)
            made = body.get("provenance", {})
            exact, why = exactness(made, here, lab.threads)
            stream.write(f"spot check: {recipe.label()}: compared {'bit for bit' if exact else 'within the tolerance'} "
                         f"({why}; published from {made.get('cpu') or '?'}, {made.get('threads')} threads)\n")
            differences += _compare(recipe, entry, body, exact)
            compared += 1
        stream.write(f"spot check: {compared} entries compared, {len(differences)} difference(s)\n")
    return differences


class _Named:
    """A stored record seen as a recipe: what :meth:`Store.load` and :func:`_compare` read of it."""

    def __init__(self, record: dict, kind: str, key: str):
        self.record, self.kind, self.key = record, kind, key
        spec = record["spec"]
        if kind == "probs":
            model = "graft" if spec.get("mask") else "fine-tuned model" if spec.get("delta") else "zero-shot model"
            self._label = f"{spec['task']} {spec['split']} predictions of the {model}"
        else:
            what = {"delta": "fine-tune", "mask": "graft"}.get(kind, record["recipe"])
            self._label = f"{what} of {spec.get('task') or ', '.join(spec.get('tasks', []))}, seed {spec.get('seed')}"

    def label(self) -> str:
        return self._label


class _Stored(_Named):
    """A current entry of the local store, published as it is (its recipe object is not rebuilt)."""

    def __init__(self, record: dict, kind: str, key: str):
        super().__init__(record, kind, key)
        self.spec, self.recipe_name = record["spec"], record["recipe"]


# ---------------------------------------------------------------------------- the dry run's plan
def plan_report(path: Path, params: dict) -> str:
    """Per stored step a chapter resolves with ``params``: where it comes from (the local store,
    the published results, or computed), and an estimate of the compute from measured step costs."""
    from . import sweep
    from .chapters.common import Setting
    from .parameters import notebook_parameters
    from .recipes import FineTune

    full = {**notebook_parameters(path), **params}
    ledger: dict = {}
    sweep.plan([(path.stem, full)], ledger)  # a first wave: steps after a computed one are planned when it exists
    lab = Setting.from_params(**full).lab()
    costs = _measured_costs(lab, ledger)
    lines, counts, seconds = [], {}, 0.0
    for name, recipe in ledger.items():
        origin = lab.origin(recipe)
        counts[origin] = counts.get(origin, 0) + 1
        estimate = ""
        if origin == "compute":
            cost = costs.get(type(recipe).__name__)
            if isinstance(recipe, FineTune) and cost is not None:
                cost = cost * recipe.finetune.steps
            if cost is not None:
                seconds += cost
                estimate = f"  ~{cost / 60:.1f} min"
        lines.append(f"  {origin:22s} {recipe.label()}{estimate}")
    summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
    est = f"; about {seconds / 60:.0f} min of fine-tuning steps and localizations to compute, at the measured costs" \
        if seconds else ""
    return "\n".join([f"{path.stem}: {len(ledger)} stored steps ({summary}){est}:", *lines,
                      "  (steps that depend on a step still to compute are found once it exists)"])


def _measured_costs(lab, ledger: dict) -> dict[str, float]:
    """Median seconds of a fine-tuning step, a localization and a prediction, from the histories
    of the steps already stored or published."""
    from .recipes import FineTune, Localized

    per_step, grafts = [], []
    for recipe in ledger.values():
        if lab.origin(recipe) == "compute" or not isinstance(recipe, (FineTune, Localized)):
            continue
        history = lab.meta(recipe).get("history", [])
        if isinstance(recipe, FineTune):
            per_step += [r["seconds"] for r in history if isinstance(r.get("seconds"), (int, float))]
        else:
            grafts.append(sum(r.get("seconds_step", 0) or 0 for r in history if isinstance(r.get("seconds_step"), float)))
    out = {}
    if per_step:
        out["FineTune"] = float(np.median(per_step))  # per optimizer step; dev and fit checks come on top
    if grafts:
        out["Localized"] = float(np.median(grafts))
    return out
