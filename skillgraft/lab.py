"""The cached steps every experiment is made of.

A :class:`Lab` holds one pre-trained model (loaded once) and the artifact store. Its
steps — split, fine-tune, localize, predict — each return what a notebook needs and
store it under a key that hashes everything that produced it, so notebooks that share
settings share work: notebook 02 on notebook 01's parameters costs only cache reads.
Grafts are applied to the one model in place and reverted exactly.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from . import finetune as ft
from . import progress
from . import graft as gr
from . import tasks as tk
from .cache import Store, default_store
from .localization import GROW_SPARSITY, GraftConfig, localize
from .models import load_lm
from .prompt import PRECISIONS

__all__ = ["Lab", "Variant", "get_lab"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One model to evaluate: θ_pre + γ ⊙ δ, described by the specs that produced δ and γ."""

    name: str                  # "zero-shot", "fine-tuned", "graft", "top-movement", "random", "stitched", ...
    delta: dict | None = None  # spec of δ (None: the pre-trained model)
    mask: dict | None = None   # spec of γ (None with a delta: the whole delta)
    sparsity: float = float("nan")


class Lab:
    """One model, one store; cached experiment steps."""

    def __init__(self, model: str = "smollm2-135m", device: str = "cpu", max_length: int = 64,
                 test_size: int = 200, store: Store | None = None, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
        self.model_name, self.max_length, self.test_size, self.precision = model, max_length, test_size, precision
        self.lm = load_lm(model, device=device)
        self.store = store or default_store()
        self._deltas: dict[str, dict] = {}   # spec key -> delta, the last few in memory
        self._masks: dict[str, gr.Mask] = {}

    # ---------------------------------------------------------------- data
    def classifier(self, task: str) -> "tk.PromptClassifier":
        return _classifier(self, task)

    def splits(self, task: str, k: int, seed: int) -> tk.Splits:
        """Seeded k-shot train/dev and the fixed test split (of ``self.test_size``)."""
        return _splits(task, k, seed, self.test_size)

    def _base(self, **spec) -> dict:
        return {"model": self.model_name, "max_length": self.max_length, "test_size": self.test_size,
                "precision": self.precision, **spec}

    # ---------------------------------------------------------------- fine-tuning
    def delta_spec(self, tasks: list[str] | str, k: int, seed: int, cfg: ft.FinetuneConfig,
                   mode: str = "single", stage: int | None = None) -> dict:
        """What identifies a fine-tuned delta: tasks, k, data seed, config, and mode
        ("single", "multitask", or "sequential" with the stage index).

        Stage 0 of a sequence *is* the single-task fine-tune of its first task (the same
        steps on the same batches), so it gets that spec and shares its cache entry."""
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if mode == "sequential" and stage == 0:
            mode, stage, tasks = "single", None, tasks[:1]
        return self._base(tasks=tasks, k=k, seed=seed, finetune=asdict(cfg), mode=mode, stage=stage)

    def delta(self, spec: dict) -> dict[str, torch.Tensor]:
        """The delta for ``spec``: from memory, the store, or by fine-tuning.

        Two derived kinds are computed from others and kept in memory only:
        ``{"of": a, "minus": b}`` is δ_a − δ_b (a stage's own update in continual
        learning), and ``{"stitch": [mask specs]}`` merges those grafts (:func:`graft.stitch`).
        """
        key = repr(sorted((k, repr(v)) for k, v in spec.items()))
        if key in self._deltas:
            return self._deltas[key]
        if "of" in spec or "stitch" in spec:
            if "of" in spec:
                value = self.delta(spec["of"])
                if spec["minus"] is not None:
                    minus = self.delta(spec["minus"])
                    value = {n: v - minus[n] for n, v in value.items()}
            else:
                parts = dict(enumerate(spec["stitch"]))
                value = gr.stitch({i: self.mask(m) for i, m in parts.items()},
                                  {i: self.delta(m["delta"]) for i, m in parts.items()}).delta
            self._remember(self._deltas, key, value)
            return value
        entry = self.store.load("delta", spec) or self._finetune(spec)
        self._remember(self._deltas, key, entry.tensors)
        return entry.tensors

    def delta_meta(self, spec: dict) -> dict:
        """Fine-tuning history and best dev accuracy of the delta for ``spec``."""
        return self._meta("delta", spec)

    def _meta(self, kind: str, spec: dict) -> dict:
        """The stored metadata of a delta or graft mask, computing the artifact first if it is not stored."""
        meta = self.store.load_meta(kind, spec)
        if meta is None:
            (self.delta if kind == "delta" else self.mask)(spec)
            meta = self.store.load_meta(kind, spec)
        return meta

    def _finetune(self, spec: dict):
        """Fine-tune for ``spec``, store the delta(s) and return the entry of ``spec``."""
        what = {"single": "fine-tuning", "multitask": "multi-task fine-tuning", "sequential": "sequential fine-tuning"}
        with progress.stage(f"{what[spec['mode']]} {' → '.join(spec['tasks'])}, seed {spec['seed']}"):
            return self._finetune_now(spec)

    def _finetune_now(self, spec: dict):
        cfg = ft.FinetuneConfig(**spec["finetune"])
        items = []
        for task in spec["tasks"]:
            s = self.splits(task, spec["k"], spec["seed"])
            items.append((self.classifier(task), s.train, s.dev))
        if spec["mode"] == "single":
            results = [ft.finetune(*items[0], cfg, progress=False)]
        elif spec["mode"] == "multitask":  # the step budget is per task: each step trains one task
            n = len(items)
            results = [ft.finetune_multitask(items, replace(cfg, steps=cfg.steps * n, eval_every=cfg.eval_every * n),
                                             progress=False)]
        else:  # sequential: stage 0 is the single-task delta; every later stage is stored under its own spec
            first = self.delta(self.delta_spec(spec["tasks"], spec["k"], spec["seed"], cfg, "sequential", 0))
            results = ft.finetune_sequential(items, cfg, progress=False, done=[first])
        wanted = None
        for i, res in enumerate(results):
            stage_spec = spec if spec["mode"] != "sequential" else {**spec, "stage": i + 1}
            meta = {"history": res.history.to_dict("records"), **res.regime()}
            entry = self.store.save("delta", stage_spec, res.delta, meta)
            if stage_spec == spec:
                wanted = entry
        return wanted

    # ---------------------------------------------------------------- masks
    def mask_spec(self, delta_spec: dict, how: str, sparsity: float, task: str | None = None,
                  cfg: GraftConfig | None = None, base: dict | None = None, seed: int = 0) -> dict:
        """``how`` is "graft" (localized on ``task``'s data, on top of the delta ``base``
        if given), "top-movement" or "random"."""
        if how not in ("graft", "top-movement", "random"):
            raise ValueError(f"unknown mask kind {how!r}; accepted: graft, top-movement, random")
        if how == "graft" and cfg.start == "grow":  # a grown graft starts from the same tiny patch at any target
            sparsity = GROW_SPARSITY
        spec = {"delta": delta_spec, "how": how, "sparsity": sparsity}
        if how == "graft":
            spec.update(task=task, graft=asdict(replace(cfg, sparsity=sparsity)), base=base)
        if how == "random":
            spec.update(seed=seed)
        return spec

    def mask(self, spec: dict) -> gr.Mask:
        key = repr(sorted((k, repr(v)) for k, v in spec.items()))
        if key in self._masks:
            return self._masks[key]
        if spec["how"] == "top-movement":
            mask = gr.top_movement(self.delta(spec["delta"]), spec["sparsity"])
        elif spec["how"] == "random":
            mask = gr.random_mask(self.delta(spec["delta"]), spec["sparsity"], seed=spec["seed"])
        else:
            entry = self.store.load("mask", spec) or self._localize(spec, self.delta(spec["delta"]))
            mask = gr.Mask.from_positions(entry.tensors, gr.graftable_parameters(self.lm.model), meta=entry.meta)
        self._remember(self._masks, key, mask, keep=6)
        return mask

    def sized_like(self, graft_spec: dict, how: str, seed: int = 0) -> dict:
        """The spec of a ``how`` mask ("top-movement" or "random") of the graft's *final* size,
        so that no method wins by being bigger (a graft can grow past its base patch)."""
        count, total = self.mask_count(graft_spec), gr.num_graftable(self.lm.model)
        same = gr._count_for(graft_spec["sparsity"], total) == count
        return self.mask_spec(graft_spec["delta"], how, graft_spec["sparsity"] if same else count / total, seed=seed)

    def mask_count(self, spec: dict) -> int:
        """|γ| without building the mask where it is known: baselines have the exact target count."""
        if spec["how"] != "graft":
            return gr._count_for(spec["sparsity"], gr.num_graftable(self.lm.model))
        return self._meta("mask", spec)["count"]

    def mask_history(self, spec: dict) -> list[dict]:
        """Per-epoch localization history of a graft mask (from its metadata), with ``kept``:
        whether that epoch's mask is the one localization kept."""
        meta = self._meta("mask", spec)
        return [{**row, "kept": row["epoch"] == meta["best_epoch"]} for row in meta["history"]]

    def mask_location(self, spec: dict) -> list[dict]:
        """Share of the mask per layer and module kind, cached as JSON beside the mask."""
        return self.store.get_or_compute(
            "location", spec, lambda: ({}, {"rows": self.mask(spec).by_layer_module().to_dict("records")})).meta["rows"]

    def _localize(self, spec: dict, delta: dict):
        cfg = GraftConfig(**spec["graft"])  # the data seed and k are those of the delta
        s = self.splits(spec["task"], spec["delta"]["k"], spec["delta"]["seed"])
        base = self.delta(spec["base"]) if spec.get("base") else None
        with (gr.apply_delta(self.lm.model, base) if base is not None else contextlib.nullcontext()), \
                progress.stage(f"localizing {spec['task']} ({cfg.start}), seed {spec['delta']['seed']}"):
            res = localize(self.classifier(spec["task"]), delta, s.train, s.dev, cfg, progress=False)
        meta = {"history": res.history.to_dict("records"), "count": res.mask.count, "best_epoch": res.best_epoch,
                "sparsity": res.mask.sparsity, "base_count": res.base.count}
        return self.store.save("mask", spec, res.mask.positions(), meta)  # positions: ~8 bytes per grafted entry

    # ---------------------------------------------------------------- evaluation
    def predict(self, task: str, variant: Variant, split: str = "test", k: int = 16, seed: int = 0,
                prompt_task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, C) and labels of ``variant`` on ``task``'s split.

        ``prompt_task`` scores ``task``'s texts with another task's prompt (OOD transfer).
        Dev splits depend on (k, seed); the test split does not. Predictions are made in fp32
        whatever the lab's precision (bf16 speeds up training; measured, it moved a zero-shot
        model's test accuracy by 2 points: ``benchmarks/precision_fidelity.py``). Predictions are stored under
        the prompt itself (tasks with one template share them) and the mask's content where
        two specs name the same mask (:meth:`_same_mask`).
        """
        clf = self.classifier(prompt_task or task)
        spec = self._base(task=task, prompt=[clf.prompt.template, list(clf.prompt.label_words)], split=split,
                          k=k if split != "test" else None, seed=seed if split != "test" else None,
                          delta=variant.delta, mask=self._same_mask(variant.mask))
        entry = self.store.load("probs", spec)
        if entry is None:
            data = self.splits(task, k, seed)[split]
            with self.apply(variant), progress.stage(f"predicting {task} {split}, {len(data)} examples"):
                probs = clf.predict_proba(data, batch_size=16, precision="fp32", report=True)  # fp32 always
            entry = self.store.save("probs", spec, {"probs": torch.from_numpy(probs),
                                                    "labels": torch.tensor(data["label"])}, {})
        return entry.tensors["probs"].numpy(), entry.tensors["labels"].numpy()

    def _same_mask(self, spec: dict | None) -> dict | None:
        """A graft that kept its top-movement base patch (epoch 0) *is* the top-movement mask of
        its delta and sparsity: name it so, and the two variants share their predictions."""
        if spec is None or spec["how"] != "graft":
            return spec
        cfg = spec["graft"]
        if cfg["base"] != "movement" or not cfg["include_base"] or self._meta("mask", spec)["best_epoch"] != 0:
            return spec
        return self.mask_spec(spec["delta"], "top-movement", spec["sparsity"])

    @contextlib.contextmanager
    def apply(self, variant: Variant):
        """The model of ``variant``, in place, reverted exactly on exit."""
        if variant.delta is None:
            yield self.lm.model
            return
        delta = self.delta(variant.delta)
        if variant.mask is None:
            with gr.apply_delta(self.lm.model, delta):
                yield self.lm.model
        else:
            with gr.grafted(self.lm.model, delta, self.mask(variant.mask)):
                yield self.lm.model

    @staticmethod
    def _remember(memo: dict, key, value, keep: int = 3) -> None:
        memo[key] = value
        while len(memo) > keep:
            memo.pop(next(iter(memo)))


@lru_cache(maxsize=64)
def _splits(task: str, k: int, seed: int, test_size: int) -> tk.Splits:
    return tk.load_splits(task, k=k, seed=seed, test_size=test_size)


def _classifier(lab: Lab, task: str):
    cache = lab.__dict__.setdefault("_classifiers", {})
    if task not in cache:
        cache[task] = tk.get_task(task).classifier(lab.lm, max_length=lab.max_length, precision=lab.precision)
    return cache[task]


_LABS: dict[tuple, Lab] = {}


def get_lab(model: str = "smollm2-135m", device: str = "cpu", max_length: int = 64, test_size: int = 200,
            precision: str = "fp32") -> Lab:
    """A shared :class:`Lab` per setting: the model loads once per process."""
    key = (model, device, max_length, test_size, precision)
    if key not in _LABS:
        _LABS.clear()  # one model in memory at a time
        _LABS[key] = Lab(model, device, max_length, test_size, precision=precision)
    return _LABS[key]
