"""Recipes: typed, frozen descriptions of every artifact the chapters are made of.

A recipe says what an artifact *is* — a fine-tune, a difference of two deltas, a stitch, a
localized graft, a top-movement or random mask, a prediction, the location of a graft —
and knows how to compute it from a :class:`~skillgraft.lab.Lab` (which resolves the
recipes it is made of). δ arithmetic is done with values: ``Difference(stage_2, stage_1)``
is a delta like any fine-tune.

Its :attr:`Recipe.key` hashes the recipe's fields (nested recipes by their keys), the package
version and the source of the modules its compute runs (:attr:`Recipe.code`, derived from the
source by :mod:`skillgraft.codekeys`, never listed): a change to
the localization code misses every stored graft and every prediction made with one, while a
change to plots, metrics or prose misses nothing. Recipes with a ``kind`` are stored under
``store/kind/key``; the others are cheap and computed in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from . import __version__, codekeys, progress
from . import grafting as gf
from .finetune import FinetuneConfig, finetune, finetune_multitask, finetune_sequential
from .localization import GROW_SPARSITY, GraftConfig, localize
from .masks import Mask, random_mask, top_movement

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["Env", "Recipe", "FineTune", "Difference", "Stitch", "Localized", "TopMovement", "RandomMask",
           "Similarity", "Prediction", "Location", "code_hash", "jsonable", "stored_inputs"]

MODES = ("single", "multitask", "sequential")


@lru_cache(maxsize=None)
def code_hash(modules: tuple[str, ...], package_dir: str | None = None) -> str:
    """sha256 of the source of ``modules`` (and of this module, which holds every compute) in
    ``package_dir`` (default: this package)."""
    root = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in sorted(set(modules) | {"recipes"}):
        digest.update(name.encode() + b"\0" + (root / f"{name}.py").read_bytes() + b"\0")
    return digest.hexdigest()


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON values: dataclasses as dicts, tuples as lists, NaN as "nan"."""
    if isinstance(obj, Recipe):
        return {"recipe": type(obj).__name__, "key": obj.key}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return "nan"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


@dataclass(frozen=True)
class Env:
    """What of the lab changes a result: the model, prompt length, test-set size, precision,
    and, on the CPU, torch's thread count: matrix products split their sums by thread, so
    another count gives other last bits (eight bf16 fine-tuning steps on one thread and on
    two differ). ``threads`` is 0 on a GPU."""

    model: str
    max_length: int
    test_size: int
    precision: str
    threads: int = 0


class _Covered:
    """``Recipe.code``: the package modules a recipe's compute runs, derived from its source
    (:func:`skillgraft.codekeys.covered`)."""

    def __get__(self, obj, cls) -> tuple[str, ...]:
        return codekeys.covered(cls)


class Recipe:
    """Base of all recipes (frozen dataclasses)."""

    kind: ClassVar[str | None] = None     # folder in the store; None: computed in memory, never stored
    code = _Covered()                     # modules whose source the compute runs (derived; this one among them)
    pool: ClassVar[str] = ""              # which memory of the lab keeps resolved values ("delta", "mask")

    def spec(self) -> dict:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @cached_property
    def key(self) -> str:
        canon = json.dumps({"recipe": type(self).__name__, "spec": self.spec(), "skillgraft": __version__,
                            "code": code_hash(self.code)}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def inputs(self) -> list["Recipe"]:
        """The recipes this one is computed from."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, Recipe)]
        return out

    def label(self) -> str:
        return type(self).__name__

    def compute(self, lab: "Lab"):
        """Stored recipes: ``(tensors, meta)`` to store; the others: the value itself."""
        raise NotImplementedError

    def value(self, entry, lab: "Lab"):
        """The value of a stored entry (stored recipes only)."""
        return entry.tensors


def stored_inputs(recipe: Recipe) -> list[Recipe]:
    """The stored recipes ``recipe`` is computed from directly (looking through in-memory ones)."""
    out = []
    for r in recipe.inputs():
        out += [r] if r.kind else stored_inputs(r)
    return out


# ---------------------------------------------------------------------------- deltas
@dataclass(frozen=True)
class FineTune(Recipe):
    """δ = θ_ft − θ_pre of fine-tuning on ``tasks`` from the data seed ``seed``: one task
    ("single"), all at once ("multitask"), or one after another ("sequential", cumulative δ
    after stage ``stage``). Stage 0 of a sequence *is* the single-task fine-tune of its first
    task (the same steps on the same batches), so it is that recipe."""

    kind: ClassVar[str] = "delta"
    pool: ClassVar[str] = "delta"

    env: Env
    tasks: tuple[str, ...]
    k: int
    seed: int
    finetune: FinetuneConfig
    mode: str = "single"
    stage: int | None = None

    def __post_init__(self):
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if self.mode not in MODES:
            raise ValueError(f"unknown fine-tuning mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.mode == "sequential" and not self.stage:
            object.__setattr__(self, "mode", "single")
            object.__setattr__(self, "stage", None)
            tasks = tasks[:1]
        object.__setattr__(self, "tasks", tasks)

    def previous(self) -> "FineTune | None":
        """The stage before this one of a sequence (None otherwise)."""
        return replace(self, stage=self.stage - 1) if self.mode == "sequential" else None

    def inputs(self) -> list[Recipe]:
        prev = self.previous()
        return [prev] if prev is not None else []

    def label(self) -> str:
        join = {"single": "", "multitask": " + ", "sequential": " → "}[self.mode]
        what = {"single": "fine-tuning", "multitask": "multi-task fine-tuning", "sequential": "sequential fine-tuning"}
        return f"{what[self.mode]} {join.join(self.tasks)}, seed {self.seed}"

    def compute(self, lab: "Lab"):
        with progress.stage(self.label()):
            cfg = self.finetune
            items = []
            for task in self.tasks:
                s = lab.splits(task, self.k, self.seed)
                items.append((lab.classifier(task), s.train, s.dev))
            if self.mode == "single":
                return _stored(finetune(*items[0], cfg, progress=False))
            if self.mode == "multitask":  # each task takes the steps it would take alone, interleaved
                return _stored(finetune_multitask(items, cfg, progress=False))
            # every stage after the first is trained here, from the stored first one; the others are stored too
            first = lab.delta(replace(self, stage=0))
            wanted = None
            for i, res in enumerate(finetune_sequential(items, cfg, progress=False, done=[first])):
                if i + 1 == self.stage:
                    wanted = _stored(res)
                else:
                    lab.store.save(replace(self, stage=i + 1), *_stored(res))
            return wanted


def _stored(res) -> tuple:
    """What the store keeps of a fine-tune: δ, and its history and regime as metadata."""
    return res.delta, {"history": res.history.to_dict("records"), **res.regime()}


@dataclass(frozen=True)
class Difference(Recipe):
    """δ_of − δ_minus, e.g. one stage's own update in continual learning."""

    pool: ClassVar[str] = "delta"
    of: Recipe
    minus: Recipe

    def compute(self, lab: "Lab"):
        return gf.difference(lab.delta(self.of), lab.delta(self.minus))


@dataclass(frozen=True)
class Stitch(Recipe):
    """The stitched delta of several grafts (:func:`grafting.stitch`): overlaps averaged, zero off their union."""

    pool: ClassVar[str] = "delta"
    parts: tuple  # of mask recipes, each grafting its own delta

    def compute(self, lab: "Lab"):
        parts = dict(enumerate(self.parts))
        return gf.stitch({i: lab.mask(m) for i, m in parts.items()}, {i: lab.delta(m.delta) for i, m in parts.items()}).delta


# ---------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class Localized(Recipe):
    """The graft γ localized on ``task``'s k-shot data (seed ``seed``) for ``delta``, with the
    model at θ_pre + ``base`` (the previous stage in continual learning) if given. A grown
    graft starts from the same tiny patch at any target, so its sparsity is GROW_SPARSITY."""

    kind: ClassVar[str] = "mask"
    pool: ClassVar[str] = "mask"

    delta: Recipe
    task: str
    k: int
    seed: int
    graft: GraftConfig
    base: Recipe | None = None

    def __post_init__(self):
        if self.graft.start == "grow" and self.graft.sparsity != GROW_SPARSITY:
            raise ValueError(f"a grown graft starts from a patch of sparsity {GROW_SPARSITY} "
                             f"(GROW_SPARSITY), not {self.graft.sparsity}")

    @property
    def sparsity(self) -> float:
        return self.graft.sparsity

    def label(self) -> str:
        return f"localizing {self.task} ({self.graft.start}), seed {self.seed}"

    def compute(self, lab: "Lab"):
        delta = lab.delta(self.delta)
        s = lab.splits(self.task, self.k, self.seed)
        base = lab.delta(self.base) if self.base is not None else None
        with lab.applied(base), progress.stage(self.label()):
            res = localize(lab.classifier(self.task), delta, s.train, s.dev, self.graft, progress=False)
        meta = {"history": res.history.to_dict("records"), "count": res.mask.count, "best_epoch": res.best_epoch,
                "sparsity": res.mask.sparsity, "base_count": res.base.count}
        return res.mask.positions(), meta  # positions: ~8 bytes per grafted entry

    def value(self, entry, lab: "Lab") -> Mask:
        return Mask.from_positions(entry.tensors, lab.graftable, meta=entry.meta)


class _StoredMask(Recipe):
    """A mask stored as its positions (a few bytes per entry), so that what is made of it can be
    read without the model-sized δ it was computed from."""

    kind: ClassVar[str] = "mask"
    pool: ClassVar[str] = "mask"

    def mask(self, lab: "Lab") -> Mask:
        raise NotImplementedError

    def compute(self, lab: "Lab"):
        mask = self.mask(lab)
        return mask.positions(), dict(mask.meta)

    def value(self, entry, lab: "Lab") -> Mask:
        return Mask.from_positions(entry.tensors, lab.graftable, meta=entry.meta)


@dataclass(frozen=True)
class TopMovement(_StoredMask):
    """The round(sparsity·N) entries of largest |δ| (the base patch, and a baseline)."""

    delta: Recipe
    sparsity: float

    def mask(self, lab: "Lab") -> Mask:
        return top_movement(lab.delta(self.delta), self.sparsity)


@dataclass(frozen=True)
class RandomMask(_StoredMask):
    """round(sparsity·N) entries drawn uniformly at random with ``seed`` (a baseline)."""

    delta: Recipe
    sparsity: float
    seed: int = 0

    def mask(self, lab: "Lab") -> Mask:
        return random_mask(lab.delta(self.delta), self.sparsity, seed=self.seed)


@dataclass(frozen=True)
class Similarity(Recipe):
    """Cosine similarity of two deltas (chapter 04's task similarity): one number, stored as JSON."""

    kind: ClassVar[str] = "similarity"
    a: Recipe
    b: Recipe

    def compute(self, lab: "Lab"):
        return {}, {"cosine": gf.cosine(lab.delta(self.a), lab.delta(self.b))}

    def value(self, entry, lab: "Lab") -> float:
        return float(entry.meta["cosine"])


@dataclass(frozen=True)
class Location(Recipe):
    """Share of a mask per layer and module kind (JSON only, beside the mask)."""

    kind: ClassVar[str] = "location"
    mask: Recipe

    def compute(self, lab: "Lab"):
        return {}, {"rows": lab.mask(self.mask).by_layer_module().to_dict("records")}

    def value(self, entry, lab: "Lab") -> list[dict]:
        return entry.meta["rows"]


# ---------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class Prediction(Recipe):
    """Class probabilities and labels of θ_pre (+ ``delta``, masked by ``mask`` if given) on
    ``task``'s ``split`` with a prompt (template, label words): tasks that share a template
    share predictions. Dev splits depend on (k, seed); the test split does not (both None).
    ``precision`` is that of the evaluation, fp32 by default whatever the precision of
    training (bf16 moved a zero-shot model's test accuracy by 2 points:
    ``benchmarks/precision_fidelity.py``)."""

    kind: ClassVar[str] = "probs"

    env: Env
    task: str
    prompt: tuple  # (template, label words)
    split: str = "test"
    k: int | None = None
    seed: int | None = None
    delta: Recipe | None = None
    mask: Recipe | None = None
    precision: str = "fp32"

    def label(self) -> str:
        names = {"FineTune": "fine-tuned", "Difference": "difference", "Stitch": "stitched", "Localized": "graft",
                 "TopMovement": "top-movement", "RandomMask": "random"}
        model = type(self.mask or self.delta).__name__ if self.delta is not None else "zero-shot"
        return f"predicting {self.task} {self.split} ({names.get(model, model)})"

    def compute(self, lab: "Lab"):
        clf = lab.prompt_classifier(*self.prompt, lab.length(self.task))
        data = lab.splits(self.task, self.k or 16, self.seed or 0)[self.split]
        with lab.applied(self.delta, self.mask), progress.stage(f"predicting {self.task} {self.split}, "
                                                                 f"{len(data)} examples"):
            probs = clf.predict_proba(data, batch_size=32, precision=self.precision, report=True)
        return {"probs": torch.from_numpy(probs), "labels": torch.tensor(data["label"])}, {}

    def value(self, entry, lab: "Lab"):
        return entry.tensors["probs"].numpy(), entry.tensors["labels"].numpy()
