"""The data path of every computed artifact: a task's seeded splits, its prompt and classifier over
a model, and a delta applied to the model. Every recipe that asks the lab for these
(``lab.splits``, ``lab.classifier``, ``lab.applied``, …) has this module, and the modules it
imports, in its key (:mod:`skillgraft.codekeys`): a change to how a task is cleaned or split
recomputes what was made from its data, and nothing else."""
from __future__ import annotations

import contextlib
from functools import lru_cache

from . import assets
from . import tasks as tk
from .grafting import apply_delta, grafted
from .masks import Mask
from .models import LM
from .prompt import Prompt, PromptClassifier

__all__ = ["splits", "task_prompt", "length", "prompt_classifier", "applied"]


def splits(task: str, k: int, seed: int, test_size: int) -> tk.Splits:
    """Seeded k-shot train/dev and the fixed test split (of ``test_size``) of ``task``, from the
    corpora under the current cache root."""
    return _splits(task, k, seed, test_size, str(assets.home()))


@lru_cache(maxsize=64)
def _splits(task: str, k: int, seed: int, test_size: int, home: str) -> tk.Splits:  # home: part of the key only
    return tk.load_splits(task, k=k, seed=seed, test_size=test_size)


def task_prompt(task: str, kind: str) -> Prompt:
    """``task``'s template and label words for a model of ``kind`` ("causal" or "masked")."""
    return tk.get_task(task).prompt(kind)


def length(task: str, max_length: int) -> int:
    """Tokens per prompt of ``task``'s examples: ``max_length``, or the task's own where it needs more."""
    return tk.get_task(task).length(max_length)


def prompt_classifier(lm: LM, template: str, label_words, max_length: int, precision: str) -> PromptClassifier:
    return PromptClassifier(lm, Prompt(template, tuple(label_words)), max_length=max_length, precision=precision)


@contextlib.contextmanager
def applied(model, delta: dict | None, mask: Mask | None = None):
    """``model`` at θ_pre + δ (masked by γ if given), in place, reverted exactly on exit."""
    if delta is None:
        yield model
    elif mask is None:
        with apply_delta(model, delta):
            yield model
    else:
        with grafted(model, delta, mask):
            yield model
