"""The lab: one pre-trained model and the store; it resolves recipes.

A :class:`Lab` holds one pre-trained model (loaded once) and the store, and turns a
:mod:`recipe <skillgraft.recipes>` into its value: from memory (the last few deltas and
masks), else from the store, else by computing it (and storing it, for recipes with a
kind). Chapters that share settings share work: chapter 02 on chapter 01's parameters
costs only store reads. Grafts are applied to the one model in place and reverted exactly.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import tasks as tk
from . import workbench
from .finetune import FinetuneConfig
from .localization import GROW_SPARSITY, GraftConfig
from .masks import Mask, count_for
from .models import graftable_parameters, load_lm, num_graftable, resolve_device
from .prompt import PRECISIONS, PromptClassifier
from .published import COSTS, MANIFEST, Published, default_root
from .recipes import Env, FineTune, Localized, Location, Prediction, RandomMask, Recipe, TopMovement
from .store import Entry, Store, default_store

__all__ = ["Lab", "Variant", "get_lab", "cpu_threads"]

log = logging.getLogger(__name__)

MEMORY = {"delta": 3, "mask": 6}  # values kept in memory per pool (deltas are model-sized)
COMPUTED = [0]  # stored artifacts computed in this process (not read): a run that adds none read everything


@dataclass(frozen=True)
class Variant:
    """One model to evaluate: θ_pre + γ ⊙ δ, described by the recipes of δ and γ."""

    name: str                    # "zero-shot", "fine-tuned", "graft", "top-movement", "random", "stitched", ...
    delta: Recipe | None = None  # recipe of δ (None: the pre-trained model)
    mask: Recipe | None = None   # recipe of γ (None with a delta: the whole delta)
    sparsity: float = float("nan")


class Lab:
    """One model, one store; resolves recipes."""

    def __init__(self, model: str = "smollm2-135m", device: str = "cpu", max_length: int = 64,
                 test_size: int = 200, store: Store | None = None, precision: str = "fp32",
                 eval_precision: str = "fp32", published: Published | str | Path | None = "default"):
        for name, value in (("precision", precision), ("eval_precision", eval_precision)):
            if value not in PRECISIONS:
                raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(PRECISIONS)}")
        self.model_name, self.max_length, self.test_size, self.precision = model, max_length, test_size, precision
        self.eval_precision = eval_precision  # of predictions: fp32 by default, whatever the precision of training
        self.lm = load_lm(model, device=device)
        self.threads = cpu_threads(self.lm.device)  # results are keyed by it: see :class:`Env`
        self.env = Env(model, max_length, test_size, precision, self.threads)
        self.graftable = graftable_parameters(self.lm.model)
        self.store = store or default_store()
        if published == "default":
            root = default_root()
            published = Published(root) if root is not None and (root / MANIFEST).is_file() else None
        self.published = Published(published) if isinstance(published, (str, Path)) else published
        self.ledger: dict[str, Recipe] | None = None  # when a dict: every stored recipe resolved, by kind/key
        self.memory: dict[str, dict] = {pool: {} for pool in MEMORY}
        self._classifiers: dict[tuple, PromptClassifier] = {}
        self._inner = 0.0  # seconds of the steps computed inside the one computing now (their own lines)

    def forget(self) -> None:
        """Drop the values kept in memory: what is resolved next is read from the store (or the
        published layer), as a new process would read it."""
        for pool in self.memory.values():
            pool.clear()

    # ---------------------------------------------------------------- data
    def classifier(self, task: str) -> PromptClassifier:
        """``task``'s prompt classifier over this lab's model."""
        prompt = workbench.task_prompt(task, self.lm.kind)
        return self.prompt_classifier(prompt.template, prompt.label_words, self.length(task))

    def length(self, task: str) -> int:
        """Tokens per prompt of ``task``'s examples: the lab's, or the task's own where it needs more."""
        return workbench.length(task, self.max_length)

    def prompt_classifier(self, template: str, label_words, max_length: int | None = None) -> PromptClassifier:
        """A classifier over this lab's model; ``max_length`` defaults to the lab's (a task may need more)."""
        key = (template, tuple(label_words), max_length or self.max_length)
        if key not in self._classifiers:
            self._classifiers[key] = workbench.prompt_classifier(self.lm, template, label_words, key[2], self.precision)
        return self._classifiers[key]

    def splits(self, task: str, k: int, seed: int) -> tk.Splits:
        """Seeded k-shot train/dev and the fixed test split (of ``self.test_size``), from the corpora
        under the current cache root."""
        return workbench.splits(task, k, seed, self.test_size)

    # ---------------------------------------------------------------- recipes of this lab
    def fine_tune(self, tasks: list[str] | str, k: int, seed: int, cfg: FinetuneConfig, mode: str = "single",
                  stage: int | None = None) -> FineTune:
        return FineTune(self.env, tasks, k, seed, cfg, mode, stage)

    def graft(self, delta: Recipe, task: str, sparsity: float, cfg: GraftConfig, base: Recipe | None = None,
              k: int | None = None, seed: int | None = None) -> Localized:
        """The graft of ``delta`` localized on ``task`` at ``sparsity`` (the data seed and k are
        the delta's unless given, as for a difference of deltas). A grown graft starts from the
        same tiny patch at any target (``sparsity`` is then not used)."""
        if cfg.start == "grow":
            sparsity = GROW_SPARSITY
        k = k if k is not None else delta.k
        seed = seed if seed is not None else delta.seed
        return Localized(delta, task, k, seed, replace(cfg, sparsity=sparsity), base)

    # ---------------------------------------------------------------- resolving
    def resolve(self, recipe: Recipe):
        """The value of ``recipe``: from memory, the store, or computed (and stored)."""
        if recipe.kind is not None:
            self._note(recipe)
        memo = self.memory.get(recipe.pool)
        if memo is not None and recipe.key in memo:
            return memo[recipe.key]
        if recipe.kind is None:
            value = recipe.compute(self)
        else:
            value = recipe.value(self.store.load(recipe) or self._from_published(recipe) or self._compute(recipe),
                                 self)
        if memo is not None:
            memo[recipe.key] = value
            while len(memo) > MEMORY[recipe.pool]:
                memo.pop(next(iter(memo)))
        return value

    def _note(self, recipe: Recipe) -> None:
        if self.ledger is not None:
            self.ledger[f"{recipe.kind}/{recipe.key}"] = recipe

    def _from_published(self, recipe: Recipe) -> Entry | None:
        return self.published.load(recipe, self.threads) if self.published is not None else None

    def origin(self, recipe: Recipe) -> str:
        """Where ``recipe`` would be read from now: "store", "published" or "compute"."""
        if self.store.load_meta(recipe) is not None:
            return "store"
        body = self.published.body(self.published.name(recipe, self.threads)) if self.published is not None else None
        if body is None:
            return "compute"
        return "published" if body["record"].get("complete", True) else "published (metadata)"

    def _compute(self, recipe: Recipe) -> Entry:
        if os.environ.get("SKILLGRAFT_COMPUTE", "").lower() == "never":
            raise RuntimeError(f"{recipe.label()} ({recipe.kind}/{recipe.key[:12]}) is neither in the local store nor "
                               "published, and computing is off (SKILLGRAFT_COMPUTE=never): `make publish` computes "
                               "what the chapters need and publishes it")
        now = cpu_threads(self.lm.device)
        if now != self.threads:  # the entry would be stored under a thread count it was not computed with
            raise RuntimeError(f"torch has {now} threads now, this lab was made with {self.threads} and keys its "
                               "results by them; after torch.set_num_threads, take a new lab (get_lab)")
        COMPUTED[0] += 1
        start, outer, self._inner = time.perf_counter(), self._inner, 0.0
        try:
            tensors, meta = recipe.compute(self)
            entry = self.store.save(recipe, tensors, meta)
        finally:
            took, inner = time.perf_counter() - start, self._inner
            self._inner = outer + took
        self._record_cost(recipe, took - inner)  # its own time: the inputs it computed first are recorded apart
        return entry

    def _record_cost(self, recipe: Recipe, seconds: float) -> None:
        """One line beside the store per computed step, with its wall time (``skillgraft cache --costs``;
        published with the entry): what the book's grid costs, step by step."""
        line = {"kind": recipe.kind, "key": recipe.key, "label": recipe.label(), "threads": self.threads,
                "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with contextlib.suppress(OSError):  # a cost not written loses a report line, never a result
            with open(Path(self.store.root) / COSTS, "a") as handle:
                handle.write(json.dumps(line) + "\n")

    def delta(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        return self.resolve(recipe)

    def mask(self, recipe: Recipe) -> Mask:
        return self.resolve(recipe)

    def meta(self, recipe: Recipe) -> dict:
        """The stored metadata of ``recipe`` (a fine-tune's history, a graft's), computing it if needed."""
        self._note(recipe)
        meta = self.store.load_meta(recipe)
        if meta is None and self.published is not None:
            meta = self.published.load_meta(recipe, self.threads)
        if meta is None:
            self.resolve(recipe)
            meta = self.store.load_meta(recipe)
        return meta

    # ---------------------------------------------------------------- masks
    def sized_like(self, graft: Localized, how: str, seed: int = 0) -> Recipe:
        """The ``how`` mask ("top-movement" or "random") of the graft's *final* size, so that no
        method wins by being bigger (a graft can grow past its base patch)."""
        if how not in ("top-movement", "random"):
            raise ValueError(f"unknown baseline {how!r}; accepted: top-movement, random")
        count, total = self.mask_count(graft), num_graftable(self.lm.model)
        sparsity = graft.sparsity if count_for(graft.sparsity, total) == count else count / total
        return TopMovement(graft.delta, sparsity) if how == "top-movement" else RandomMask(graft.delta, sparsity, seed)

    def mask_count(self, recipe: Recipe) -> int:
        """|γ| without building the mask where it is known: baselines have the exact target count."""
        if isinstance(recipe, (TopMovement, RandomMask)):
            return count_for(recipe.sparsity, num_graftable(self.lm.model))
        return self.meta(recipe)["count"]

    def mask_history(self, recipe: Localized) -> list[dict]:
        """Per-epoch localization history of a graft (from its metadata), with ``kept``:
        whether that epoch's mask is the one localization kept."""
        meta = self.meta(recipe)
        return [{**row, "kept": row["epoch"] == meta["best_epoch"]} for row in meta["history"]]

    def mask_location(self, recipe: Localized) -> list[dict]:
        """Share of the mask per layer and module kind."""
        return self.resolve(Location(recipe))

    # ---------------------------------------------------------------- evaluation
    def predict(self, task: str, variant: Variant, split: str = "test", k: int = 16, seed: int = 0,
                prompt_task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, C) and labels of ``variant`` on ``task``'s split;
        ``prompt_task`` scores ``task``'s texts with another task's prompt (OOD transfer)."""
        clf = self.classifier(prompt_task or task)
        test = split == "test"
        recipe = Prediction(self.env, task, (clf.prompt.template, tuple(clf.prompt.label_words)), split,
                            None if test else k, None if test else seed, variant.delta, self._same_mask(variant.mask),
                            self.eval_precision)
        return self.resolve(recipe)

    def _same_mask(self, recipe: Recipe | None) -> Recipe | None:
        """A graft that kept its top-movement base patch (epoch 0) *is* the top-movement mask of
        its delta and sparsity: name it so, and the two variants share their predictions."""
        if not isinstance(recipe, Localized):
            return recipe
        cfg = recipe.graft
        if cfg.base != "movement" or not cfg.include_base or self.meta(recipe)["best_epoch"] != 0:
            return recipe
        return TopMovement(recipe.delta, recipe.sparsity)

    @contextlib.contextmanager
    def applied(self, delta: Recipe | None, mask: Recipe | None = None):
        """The model θ_pre + δ (masked by γ if given), in place, reverted exactly on exit."""
        if delta is None:
            yield self.lm.model
            return
        value = delta if isinstance(delta, dict) else self.delta(delta)
        with workbench.applied(self.lm.model, value, None if mask is None else self.mask(mask)) as model:
            yield model


_LABS: dict[tuple, Lab] = {}


def cpu_threads(device: str | torch.device) -> int:
    """torch's thread count where it decides the bits of a result (on the CPU), else 0."""
    return torch.get_num_threads() if resolve_device(device).type == "cpu" else 0


def get_lab(model: str = "smollm2-135m", device: str = "cpu", max_length: int = 64, test_size: int = 200,
            precision: str = "fp32") -> Lab:
    """A shared :class:`Lab` per setting, torch thread count, store and published layer (as the
    environment names them now): the model loads once per process, and a lab never serves a store
    or a published layer other than the ones the environment names."""
    key = (model, device, max_length, test_size, precision, cpu_threads(device), str(default_store().root),
           str(default_root()))
    if key not in _LABS:
        _LABS.clear()  # one model in memory at a time
        _LABS[key] = Lab(model, device, max_length, test_size, precision=precision)
    return _LABS[key]
