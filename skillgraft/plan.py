"""The analysis plan: for each claim, what is estimated, on what unit, against what, and how it is decided.

The book's page {doc}`protocol` renders :data:`PLAN` (the results page glues it) beside the change
log of every rule and default change since the chapters first ran. The rules themselves are code, in
the chapter modules and :mod:`skillgraft.verdicts`; :data:`RULES` names them, and :func:`rules_hash`
hashes their source and thresholds, so that a change to a rule changes the hash, and a test fails
until the plan's change log records the new one (``tests/test_plan.py``).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "PLAN", "RULES", "rules_hash", "recorded_hashes", "frame"]


@dataclass(frozen=True)
class Entry:
    """One claim (or sub-claim) of the plan."""

    claim: str
    estimand: str    # the primary number, over what population
    unit: str        # the unit of analysis, and what the interval resamples
    baseline: str    # what the estimand is compared with (the null)
    rule: str        # how the interval decides holds / fails / inconclusive / not testable here
    secondary: str   # reported beside it, never promoted to the verdict


_HIER = ("tasks with replacement (at least five: else held fixed, and the verdict is about them), then seeds "
         "within a task, then one draw of the task's test examples shared by its seeds and models")

PLAN = (
    Entry("C1", "recovery: graft / fine-tuned test accuracy, per task (each a mean over seeds), then the mean over "
                "tasks; and the share of fine-tuning's gain over zero-shot the graft keeps, mean (graft − zero-shot) "
                "over mean (fine-tuned − zero-shot) across tasks",
          "task (the tasks where fine-tuning beat zero-shot: the gain's interval above zero); " + _HIER,
          "the fine-tuned model (95% of it) and zero-shot (half of the gain)",
          "holds when the recovery's interval lies at or above 95% and the share's above 50%; fails when either "
          "lies below; else inconclusive; not testable here where no task gained. The start is the grown graft "
          "(the shipped script's), chosen on dev data before the verdicts (change log 6); refine at 0.01% is shown "
          "on the seeds it ran on",
          "per-task verdicts (tallied beside the pooled one); graft − random mask of its size (a sanity line)"),
    Entry("C1c", "graft − top-movement mask of the graft's own final size, test accuracy, per task (mean over "
                 "seeds), then the mean over tasks",
          "task, as C1", "the top-movement mask of the same size: what |δ| alone chooses",
          "holds when the interval lies above zero (the optimization chose better entries), fails below, else "
          "inconclusive", "per-task verdicts"),
    Entry("C2", "relative ECE reduction of the graft against the fine-tuned model: 1 − mean over tasks of the graft's "
                "ECE / mean over tasks of the fine-tuned ECE, each task's ECE computed per seed (10 equal-width "
                "bins of the top-class probability) and averaged over its seeds; never one ECE over predictions "
                "of several tasks concatenated",
          "task (those where fine-tuning beat zero-shot); " + _HIER,
          "the fine-tuned model; the paper's 40% reduction",
          "holds when the ECE gap (fine-tuned − graft) lies above zero and the reduction's interval at or above "
          "40%; fails when the gap lies below zero or the reduction's interval below 40%; else inconclusive",
          "per-task verdicts and ECEs; the reduction against the fine-tuned model temperature-scaled on dev "
          "(the reference a practitioner would use)"),
    Entry("C3", "graft − fine-tuned accuracy on a source's shifted targets: per target and seed, the mean over the "
                "source's targets and seeds, then the mean over sources",
          "source (those where fine-tuning gained on its targets); with fewer than five sources they are held "
          "fixed (the verdict is about them); seeds, then test examples stratified by target",
          "the fine-tuned model", "holds when the interval lies above zero, fails below, else inconclusive; not "
          "testable here where fine-tuning gained nothing out of distribution", "per-source and per-target "
          "intervals; the graft's ECE on the targets (unjudged)"),
    Entry("C4", "mean asymmetric overlap |γ_i ∩ γ_j| / |γ_j| of two task regions grown on one multi-task model, and "
                "Spearman's ρ of a pair's overlap with the cosine similarity of the two tasks' single-task deltas",
          "task pair in one multi-task model (one data seed); ρ's p-value from a permutation over task "
          "relabelings (the 15 pairs share tasks)",
          "10% (almost disjoint); uniform random masks of the same sizes (reported); the overlap of the same "
          "tasks' grafts on separately fine-tuned single-task models (reported)",
          "holds when the mean overlap is below 10% and ρ > 0 at p < 0.05 over at least six pairs; fails when "
          "the overlap is at or above 10% or ρ < 0 at p < 0.05; else inconclusive",
          "the cross-graft matrix; the regions grown from the official base patch (an exercise)"),
    Entry("C5", "final average accuracy after the last stage, graft (task known) − sequential fine-tuning: per "
                "task of the sequence and seed, the mean over its tasks and seeds, then the mean over sequences",
          "sequence (those where sequential fine-tuning forgot); with fewer than five they are held fixed; seeds, "
          "then test examples stratified by task",
          "sequential fine-tuning",
          "holds when the interval lies above zero, fails below, else inconclusive; not testable here where "
          "sequential fine-tuning forgot nothing measurable. Backward transfer is reported, not judged: a "
          "task-known graft is fixed once its stage ends, so its own is 0 by construction",
          "backward transfer gap; the stitched model (task unknown) − sequential"),
)

# The code that decides a verdict: module → names (functions and thresholds) whose source or value is hashed.
RULES = {
    "skillgraft.verdicts": ("side", "combine", "no_room", "across", "hierarchical", "per_unit", "ece_binned",
                            "correctness", "MIN_UNITS"),
    "skillgraft.chapters.single_task": ("RECOVERY", "NORMALIZED", "_c1_stat", "_c1_finish", "tested",
                                        "recovery_part", "kept_part", "top_part", "task_rule", "rule", "verdict"),
    "skillgraft.chapters.calibration": ("ECE_REDUCTION", "_ece_stat", "_ece_finish", "intervals", "tested", "rule",
                                        "rule_across", "verdict"),
    "skillgraft.chapters.ood": ("_gap_stat", "_gap", "rule", "rule_across", "verdict"),
    "skillgraft.chapters.multitask": ("DISJOINT", "MIN_PAIRS", "permutation_pvalue", "overlap_summary", "rule",
                                      "verdict"),
    "skillgraft.chapters.continual": ("_c5_stat", "_c5", "rule", "rule_across", "verdict"),
}


def rules_hash(rules: dict[str, tuple[str, ...]] | None = None) -> str:
    """sha256 (first 12 hex digits) of the source of every function in :data:`RULES` and the value of every
    threshold: it changes exactly when a rule does."""
    digest = hashlib.sha256()
    for module_name, names in sorted((rules or RULES).items()):
        module = importlib.import_module(module_name)
        for name in names:
            obj = getattr(module, name)
            text = inspect.getsource(obj) if callable(obj) else repr(obj)
            digest.update(f"{module_name}.{name}\0{text}\0".encode())
    return digest.hexdigest()[:12]


def recorded_hashes(page: str | Path) -> list[str]:
    """The rules hashes the change log of ``page`` (the protocol page) records, in order."""
    return re.findall(r"rules hash `([0-9a-f]{12})`", Path(page).read_text(), flags=re.IGNORECASE)


def frame():
    """:data:`PLAN` as a table, for the protocol page."""
    import pandas as pd

    return pd.DataFrame([e.__dict__ for e in PLAN]).rename(columns={"baseline": "baseline or null"})
