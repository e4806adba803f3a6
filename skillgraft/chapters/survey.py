"""The task survey: every offline task, zero-shot against fine-tuned, in the chapters' regime.

Before a claim can be tested on a task, fine-tuning must teach the model something there: a
task where the fine-tuned model is not better than the zero-shot one tests nothing. This
survey fine-tunes each task once (one data seed, the chapters' settings: steps scaled to the
task's classes, :meth:`FinetuneConfig.for_classes`), and reports per task its regime (passes,
fit), its zero-shot and fine-tuned test accuracy, the gain with its bootstrap interval over
test examples, and what one fine-tuning step costs against ``reference`` (mr's).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import tasks as tk
from .. import verdicts
from ..lab import Variant
from .common import Setting, records

__all__ = ["COSTLY", "GAIN", "NO_GAIN", "Survey", "run", "survey", "gain_verdict", "costly"]

GAIN, NO_GAIN = "gain", "no gain shown"
COSTLY = 3.0  # a task whose fine-tuning costs more than this many times the reference's stays out of default grids


def run(p: dict, setting: Setting | None = None) -> "Survey":
    """The survey from its notebook's parameters (as the notebook calls it)."""
    return survey(p["tasks"], p["seed"], setting or Setting.from_params(**p), reference=p["reference"])


@dataclass
class Survey:
    table: pd.DataFrame      # one row per task (see :func:`survey`)
    reference: str           # the task whose step cost is 1


def gain_verdict(interval: verdicts.Interval) -> str:
    """A task shows a gain when the whole interval of fine-tuned − zero-shot accuracy is above zero."""
    return GAIN if interval.sign > 0 else NO_GAIN


def costly(ratio: float) -> bool:
    """Whether a task's fine-tuning costs more than :data:`COSTLY` times the reference's."""
    return bool(np.isfinite(ratio) and ratio > COSTLY)


def survey(tasks: list[str], seed: int, setting: Setting, reference: str = "mr") -> Survey:
    """One row per task: family, classes, train examples, tokens per prompt, the fine-tune's steps,
    passes and fit, zero-shot and fine-tuned test accuracy, the gain with its interval and verdict,
    seconds per fine-tuning step and per fine-tune, and both as ratios to ``reference``'s (which
    is surveyed too, first, if not listed)."""
    if not tasks:
        raise ValueError("tasks is empty; give at least one task (`skillgraft tasks` lists them)")
    for name in [*tasks, reference]:
        tk.get_task(name)
    lab = setting.lab()
    rows = []
    for name in dict.fromkeys([reference, *tasks]):
        task = tk.get_task(name)
        zs = lab.predict(name, Variant("zero-shot"))
        dspec = lab.fine_tune(name, setting.k, seed, setting.finetune)
        ft = lab.predict(name, Variant("fine-tuned", delta=dspec))
        meta = lab.meta(dspec)
        history = records(meta["history"])
        gain = verdicts.accuracy_gap([(ft[0], zs[0], ft[1])])
        rows.append(dict(task=name, family=task.family, classes=len(task.class_names),
                         train=setting.k * len(task.class_names), tokens=lab.length(name),
                         steps=int(history["step"].max()), passes=meta["passes"], total_passes=meta["total_passes"],
                         fit=bool(meta["fit"]), test=len(zs[1]),
                         zero_shot=float(np.mean(zs[0].argmax(1) == zs[1])),
                         fine_tuned=float(np.mean(ft[0].argmax(1) == ft[1])),
                         gain=gain.estimate, gain_low=gain.low, gain_high=gain.high, verdict=gain_verdict(gain),
                         step_seconds=float(history["seconds"].median()),
                         finetune_minutes=float(history["seconds"].sum()) / 60))
    table = pd.DataFrame(rows)
    ref = table.set_index("task").loc[reference]
    table["step_cost"] = table["step_seconds"] / ref["step_seconds"]
    table["finetune_cost"] = table["finetune_minutes"] / ref["finetune_minutes"]
    table["costly"] = table["finetune_cost"].map(costly)
    keep = [reference] + [t for t in tasks if t != reference] if reference in tasks else list(tasks)
    return Survey(table.set_index("task").loc[keep].reset_index(), reference)
