"""Prompt-based fine-tuning (LM-BFF) of the graftable parameters: single-task, multi-task, sequential.

Only the transformer blocks train; the embeddings and the LM head stay frozen (the official
``fix_embeddings``/``fix_head``; with tied embeddings they are one tensor). The result is
δ = θ_ft − θ_pre over the graftable parameters, and the model is put back to θ_pre
bit-exactly, so one pre-trained model serves every graft in place. Batches come from
seeded generators, so a CPU rerun gives identical numbers.

Memory: besides the model, one copy of the graftable parameters (θ_pre, to form δ and to
restore), the gradients, the best checkpoint when ``keep_best``, and AdamW's two moments.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import progress as _progress
from .grafting import Delta, only_graftable_trainable, snapshot

__all__ = ["OPTIMIZERS", "TIES", "FinetuneConfig", "interleave", "FinetuneResult", "optimizer_groups", "finetune",
           "finetune_multitask", "finetune_sequential"]

log = logging.getLogger(__name__)
OPTIMIZERS = ("sgd", "adamw")
TIES = ("later", "first")  # which of two checks with the same dev accuracy is kept


@dataclass
class FinetuneConfig:
    """Prompt-based fine-tuning (official ``run_task.sh``: SGD, lr 1e-3, batch 2, 1000 steps).

    The defaults put the model in the paper's regime on a 32-example train set: 80 steps of
    8 examples are 20 passes (official: about 62), dev checks come every 24 steps (6 passes,
    as the official first check after 100 steps of 2), and a checkpoint is kept only once it
    fits the whole train set (``fit_loss``)."""

    optimizer: str = "sgd"              # "sgd" (official) | "adamw"; Adam's per-entry steps make |δ| uninformative
    lr: float = 3e-3                    # constant learning rate; 3e-3 suits SGD on the embedded 135M model
    steps: int = 80                     # optimizer steps, one batch each (80 × 8 = 20 passes over 32 examples)
    batch_size: int = 8                 # training examples per step
    weight_decay: float = 1e-4          # on weight matrices only, not on biases and norm weights (official)
    eval_every: int = 24                # steps between dev evaluations; the last step is always evaluated
    keep_best: bool = True              # return the best-dev checkpoint (official), else the last
    fit_loss: float | None = 0.01       # a checkpoint competes only when it fits the train set: loss ≤ this, accuracy 1
                                        # (None: every check competes, as the official selection by dev alone)
    ties: str = "later"                 # of checks with equal dev accuracy keep the later (official: `objective >= best`,
                                        # "later checkpoints rule!") or the "first"
    seed: int = 0                       # batch order (and dropout when train_mode)
    max_grad_norm: float | None = None  # clip the global gradient norm; None: no clipping (HF Trainer's default: 1.0)
    train_mode: bool = False            # dropout during steps (HF Trainer does); off: deterministic, Llama has none
    eval_batch_size: int = 16           # examples per forward in dev evaluation

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {self.ties!r}")
        optional = tuple(n for n in ("max_grad_norm", "fit_loss") if getattr(self, n) is not None)
        for name in ("lr", "weight_decay") + optional:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name not in ("weight_decay", "fit_loss") and value == 0):
                raise ValueError(f"{name} must be a finite number {'≥' if name in ('weight_decay', 'fit_loss') else '>'} 0, "
                                 f"got {value!r}" + (" (or None)" if name in ("max_grad_norm", "fit_loss") else ""))
        for name, low in (("steps", 1), ("batch_size", 1), ("eval_every", 1), ("seed", 0), ("eval_batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        for name in ("keep_best", "train_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


    def for_classes(self, classes: int) -> "FinetuneConfig":
        """This config for a ``classes``-class train set. Steps and checks are given for two classes
        (2k examples); C classes (C·k examples) take C/2 times as many, so passes over the train set
        and checks per pass stay the same (trec, 6 classes: 240 steps of 8 for 20 passes over 96)."""
        if classes <= 2:
            return self
        return replace(self, steps=math.ceil(self.steps * classes / 2),
                       eval_every=math.ceil(self.eval_every * classes / 2))


@dataclass
class FinetuneResult:
    delta: Delta            # θ_kept − θ_pre over the graftable parameters (sequential: cumulative from θ_pre)
    history: pd.DataFrame   # per step: step, task, train_loss, seconds, dev_acc, fit_loss, fit_acc (NaN between checks)
    best_step: int          # best (mean) dev accuracy among checks that fit the train set, the later (or first,
                            # ``config.ties``) on ties (else the last step); kept if keep_best
    best_dev_acc: float
    config: FinetuneConfig
    train_loss: float = math.nan  # whole-train-set loss of the returned checkpoint (mean over tasks)
    train_acc: float = math.nan   # whole-train-set accuracy of the returned checkpoint
    passes: float = math.nan      # passes over the train set(s) up to the returned checkpoint
    fit: bool = False             # the returned checkpoint fits the train set (accuracy 1, loss ≤ fit_loss)

    def regime(self) -> dict:
        """What the kept checkpoint is: its step, passes, train loss and accuracy, and whether it fits."""
        kept = self.best_step if self.config.keep_best else self.config.steps
        total = self.passes * self.config.steps / kept
        return {"best_step": self.best_step, "best_dev_acc": self.best_dev_acc, "train_loss": self.train_loss,
                "train_acc": self.train_acc, "passes": self.passes, "total_passes": total, "fit": self.fit}


def optimizer_groups(params: Mapping[str, nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: weight matrices with ``weight_decay``; biases and norm weights (1-D) without (LM-BFF)."""
    def no_decay(n: str, p: Tensor) -> bool:
        return p.ndim < 2 or n.endswith("bias") or "norm" in n.lower()
    decay = [n for n, p in params.items() if not no_decay(n, p)]
    rest = [n for n, p in params.items() if no_decay(n, p)]
    return [{"params": [params[n] for n in decay], "param_names": decay, "weight_decay": weight_decay},
            {"params": [params[n] for n in rest], "param_names": rest, "weight_decay": 0.0}]


def _make_optimizer(params: Mapping[str, nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups = [g for g in optimizer_groups(params, cfg.weight_decay) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _stream_seed(seed: int, index: int) -> int:
    """An independent seed per task stream, from (config seed, task index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _batches(dataset, batch_size: int, seed: int) -> Iterator[dict[str, list]]:
    """Endless seeded batches: a fresh permutation each pass, the last batch of a pass may be short."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            yield dataset[order[i:i + batch_size]]


def interleave(steps: Sequence[int]) -> list[int]:
    """The order in which tasks with ``steps[t]`` steps each take their steps, spread evenly (smooth
    weighted round-robin, as nginx balances weighted servers): at each step every task gains its
    share, the one furthest ahead of its due takes the step and is set back by the total. Equal
    counts alternate 0, 1, …, T−1, 0, 1, …; a task with three times the steps of another takes three
    steps for each of the other's."""
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"steps must be a non-empty list of integers ≥ 1, got {list(steps)!r}")
    total, current, order = sum(steps), [0] * len(steps), []
    for _ in range(total):
        current = [c + n for c, n in zip(current, steps)]
        t = max(range(len(steps)), key=lambda i: (current[i], -i))
        current[t] -= total
        order.append(t)
    return order


def _shared_model(items: Sequence[tuple]) -> nn.Module:
    if not items:
        raise ValueError("need at least one (classifier, train, dev) item")
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"item {i} must be a (PromptClassifier, train Dataset, dev Dataset) tuple")
        if len(item[1]) == 0 or len(item[2]) == 0:
            raise ValueError(f"item {i}: train and dev must be non-empty, got {len(item[1])} and {len(item[2])}")
    model = items[0][0].lm.model
    if any(item[0].lm.model is not model for item in items):
        raise ValueError("all classifiers must wrap the same model object (one model, several prompts)")
    return model


@torch.no_grad()
def _load(params: Mapping[str, nn.Parameter], values: Mapping[str, Tensor]) -> None:
    for n, p in params.items():
        p.copy_(values[n])


def _train(params: Mapping[str, nn.Parameter], items: Sequence[tuple], cfg: FinetuneConfig,
           origin: Mapping[str, Tensor], first_index: int, progress: bool, desc: str,
           order: Sequence[int] | None = None) -> FinetuneResult:
    """Steps from the current weights, one task per step (``order``, default round-robin); leaves the
    kept weights in the model."""
    model = items[0][0].lm.model
    opt = _make_optimizer(params, cfg)
    streams = [_batches(train, cfg.batch_size, _stream_seed(cfg.seed, first_index + i))
               for i, (_, train, _) in enumerate(items)]
    rows, best_step, best_acc, best_theta = [], 0, -math.inf, None
    train_size = sum(len(train) for _, train, _ in items)
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress):
        task = order[step - 1] if order is not None else (step - 1) % len(items)
        start = time.perf_counter()
        clf = items[task][0]
        model.train(cfg.train_mode)
        loss = clf.loss(clf.encode(next(streams[task])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        opt.step()
        row = {"step": step, "task": first_index + task, "train_loss": float(loss.detach()),
               "seconds": time.perf_counter() - start, "dev_acc": math.nan}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            accs = [c.accuracy(dev, batch_size=cfg.eval_batch_size) for c, _, dev in items]
            row["dev_acc"] = float(np.mean(accs))
            if len(items) > 1:
                row.update({f"dev_acc_{first_index + i}": a for i, a in enumerate(accs)})
            fits = [_fit(c, train, cfg.eval_batch_size) for c, train, _ in items]
            row["fit_loss"], row["fit_acc"] = float(np.mean([f[0] for f in fits])), float(np.mean([f[1] for f in fits]))
            log.info("%s step %d: train loss %.4f (whole set %.4f, accuracy %.3f), dev acc %.4f", desc, step,
                     row["train_loss"], row["fit_loss"], row["fit_acc"], row["dev_acc"])
            fit = cfg.fit_loss is None or (row["fit_acc"] == 1.0 and row["fit_loss"] <= cfg.fit_loss)
            if fit and (row["dev_acc"] > best_acc or (cfg.ties == "later" and row["dev_acc"] == best_acc)):
                best_step, best_acc = step, row["dev_acc"]
                if cfg.keep_best and step != cfg.steps:
                    best_theta = best_theta or {n: torch.empty_like(p) for n, p in params.items()}
                    _load(best_theta, {n: p.detach() for n, p in params.items()})
        rows.append(row)
        _progress.step(step, cfg.steps)
    model.eval()
    fitted = best_step > 0
    if not fitted:  # no check fit the train set: keep the last, most trained weights, and say so
        best_step, best_acc = cfg.steps, next(r["dev_acc"] for r in reversed(rows) if not math.isnan(r["dev_acc"]))
        log.warning("%s: no checkpoint fit the train set (loss <= %g, accuracy 1); keeping the last step",
                    desc, cfg.fit_loss)
    if cfg.keep_best and best_step != cfg.steps:
        _load(params, best_theta)
    kept = rows[(best_step if cfg.keep_best else cfg.steps) - 1]
    with torch.no_grad():  # θ_pre + δ is "the fine-tuned model" from here on; it can differ from θ by an ulp
        delta = {n: p.detach() - origin[n] for n, p in params.items()}  # where |θ| is small next to |δ|
    return FinetuneResult(delta=delta, history=pd.DataFrame(rows), best_step=best_step, best_dev_acc=best_acc,
                          config=cfg, train_loss=kept["fit_loss"], train_acc=kept["fit_acc"],
                          passes=kept["step"] * cfg.batch_size / train_size,
                          fit=fitted and kept["fit_acc"] == 1.0 and (cfg.fit_loss is None or kept["fit_loss"] <= cfg.fit_loss))


def _fit(clf, train, batch_size: int) -> tuple[float, float]:
    """Loss (mean cross-entropy) and accuracy of the current model over the whole train set."""
    probs = clf.predict_proba(train, batch_size=batch_size)
    labels = np.asarray(train["label"])
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean()), float((probs.argmax(1) == labels).mean())


@contextlib.contextmanager
def _session(model: nn.Module, cfg: FinetuneConfig) -> Iterator[tuple[dict[str, nn.Parameter], Delta]]:
    """Graftable parameters trainable, θ_pre held once and restored bit-exactly on exit (also on error)."""
    origin = snapshot(model)
    rng = torch.random.fork_rng(devices=[]) if cfg.train_mode else contextlib.nullcontext()
    with only_graftable_trainable(model, cfg.train_mode) as params, rng:
        if cfg.train_mode:
            torch.manual_seed(cfg.seed)  # dropout masks, inside a forked RNG state
        try:
            yield params, origin
        finally:
            _load(params, origin)


def finetune(clf, train, dev, cfg: FinetuneConfig | None = None, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``clf``'s model on one task; return δ and the history. The model ends at θ_pre.

    ``clf`` is a :class:`skillgraft.prompt.PromptClassifier`; ``train`` and ``dev`` are
    ``datasets.Dataset`` with the prompt's text fields and ``label``. ``cfg``'s steps are for two
    classes and scale with the task's (:meth:`FinetuneConfig.for_classes`).
    """
    return finetune_multitask([(clf, train, dev)], cfg, progress)


def finetune_multitask(items: Sequence[tuple], cfg: FinetuneConfig | None = None,
                       progress: bool = True) -> FinetuneResult:
    """One model on several tasks at once, one task per batch (each with its own template and label
    words): each task takes the steps it would take alone (``cfg`` is for two classes, scaled by
    each task's classes, :meth:`FinetuneConfig.for_classes`), the tasks' steps interleaved evenly
    (:func:`interleave`; tasks of one size alternate). Dev checks come as often per pass as alone;
    dev accuracy is the mean over tasks. Ends at θ_pre.

    ``items``: (PromptClassifier, train, dev) per task, all classifiers over the same model.
    """
    cfg = cfg or FinetuneConfig()
    model = _shared_model(items)
    steps = [cfg.for_classes(len(clf.prompt.label_words)).steps for clf, _, _ in items]
    order = interleave(steps)
    total = replace(cfg, steps=len(order), eval_every=math.ceil(cfg.eval_every * len(order) / cfg.steps))
    with _session(model, total) as (params, origin):
        return _train(params, items, total, origin, 0, progress, "finetune", order)


def finetune_sequential(items: Sequence[tuple], cfg: FinetuneConfig | None = None,
                        progress: bool = True, done: Sequence[Delta] = ()) -> list[FinetuneResult]:
    """Task 1, then from there task 2, …; result t's delta is θ_t − θ_pre (cumulative), so stage t's own
    change is delta_t − delta_{t−1}. Each stage keeps its best-dev checkpoint (if ``keep_best``) and
    the next starts from θ_pre + delta_{t−1}, the stage's model as stored, so a sequence resumed from
    stored deltas continues exactly. Stage 0 is :func:`finetune` on the first task (same batches).

    ``done``: cumulative deltas of the first stages, already trained (e.g. read from a cache); they are
    not trained again and not returned. The model ends at θ_pre.
    """
    cfg = cfg or FinetuneConfig()
    model = _shared_model(items)
    if len(done) >= len(items):
        raise ValueError(f"all {len(items)} stages are done already ({len(done)} deltas given)")
    results = []
    with _session(model, cfg) as (params, origin):
        previous = done[-1] if done else None
        for t in range(len(done), len(items)):
            if previous is not None:
                _load(params, {n: origin[n] + previous[n].to(origin[n].device) for n in params})
            stage_cfg = cfg.for_classes(len(items[t][0].prompt.label_words))  # as finetune() on that task
            results.append(_train(params, [items[t]], stage_cfg, origin, t, progress, f"finetune task {t}"))
            previous = results[-1].delta
    return results
