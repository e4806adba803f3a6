"""Localization variance: how much a graft depends on where its mask scores start.

Localization starts its scores S uniform in [0, 1) from one seeded generator (``GraftConfig.seed``, 0 in
every chapter), so every interval of the chapters holds that start fixed. This study grafts one data
seed's fine-tune of each task from several score seeds and sets the spread of the graft's size and test
accuracy beside the spread that the data seeds give (chapter 01's grafts of the same tasks, score seed 0).
The rule, written in the analysis plan before the study ran: the score seed's spread is *small* when, for
both the accuracy and the size, its standard deviation (mean over tasks) is at most half the data seeds'
(:data:`SMALL`); otherwise the score seed should follow the data seed in every chapter, so that the
chapters' intervals over seeds include it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics as mt
from ..lab import Variant
from .common import Setting

__all__ = ["SMALL", "Variance", "run", "variance", "spread", "judge"]

SMALL = 0.5  # the score seeds' SD at most this share of the data seeds' SD (accuracy and size): a small spread


def run(p: dict, setting: Setting | None = None) -> "Variance":
    """The study from its notebook's parameters (as the notebook calls it)."""
    return variance(p["tasks"], p["seed"], p["score_seeds"], p["seeds"], setting or Setting.from_params(**p))


@dataclass
class Variance:
    grafts: pd.DataFrame  # task, varied ("score seed" | "data seed"), data_seed, score_seed, size, accuracy


def variance(tasks: list[str], seed: int, score_seeds: list[int], data_seeds: list[int], setting: Setting) -> Variance:
    """Each task's fine-tune of data seed ``seed`` grafted from each of ``score_seeds``; and the grafts of the
    fine-tunes of ``data_seeds`` from the setting's own score seed. One row per graft: its size and test accuracy."""
    lab = setting.lab()
    rows = []

    def graft(task: str, data_seed: int, score_seed: int, varied: str) -> None:
        delta = lab.fine_tune(task, setting.k, data_seed, setting.finetune)
        spec = lab.graft(delta, task, setting.graft.sparsity, dataclasses.replace(setting.graft, seed=score_seed))
        pred = lab.predict(task, Variant("graft", delta=delta, mask=spec))
        rows.append(dict(task=task, varied=varied, data_seed=data_seed, score_seed=score_seed,
                         size=lab.mask_count(spec), accuracy=mt.accuracy(*pred)))
    for task in tasks:
        for s in score_seeds:
            graft(task, seed, s, "score seed")
        for d in data_seeds:
            graft(task, d, setting.graft.seed, "data seed")
    return Variance(pd.DataFrame(rows))


def spread(result: Variance) -> pd.DataFrame:
    """Per task and what varied: the grafts, and the standard deviation (ddof 1) and range of their accuracy
    and size."""
    g = result.grafts.groupby(["task", "varied"], sort=False)
    out = g.agg(grafts=("size", "size"), accuracy_sd=("accuracy", "std"), accuracy_min=("accuracy", "min"),
                accuracy_max=("accuracy", "max"), size_sd=("size", "std"), size_min=("size", "min"),
                size_max=("size", "max"))
    return out.reset_index()


def judge(result: Variance) -> tuple[bool, dict]:
    """Whether the score seed's spread is small against the data seeds' (:data:`SMALL`, accuracy and size, the
    standard deviations averaged over tasks), and the ratios."""
    s = spread(result).groupby("varied")[["accuracy_sd", "size_sd"]].mean()
    ratios = {what: float(s.loc["score seed", f"{what}_sd"] / s.loc["data seed", f"{what}_sd"])
              if s.loc["data seed", f"{what}_sd"] > 0 else float("inf") for what in ("accuracy", "size")}
    return all(r <= SMALL for r in ratios.values() if np.isfinite(r)) and all(np.isfinite(list(ratios.values()))), ratios
