"""Chapter 02, claim C2: grafted models are better calibrated than fine-tuned ones.

Zero-shot, fine-tuned (plain and temperature-scaled on dev) and grafted models; ECE and
reliability bins. The verdict rule and its threshold are fixed here and unit-tested.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as mt
from .. import verdicts
from ..verdicts import Interval, Verdict
from .common import Setting, caveats, confidence_words, difference_words, fine_tune_regime, graft_regime, three_models, scores, evidence, scope
from .predictions import Predictions

__all__ = ["ECE_REDUCTION", "Calibration", "run", "calibration", "intervals", "gains", "tested", "rule", "rule_across", "verdict", "by_task", "forest", "robustness", "caveats", "evidence", "reading"]


FIELDS = ("task", "seed", "variant")  # what names a prediction
ECE_REDUCTION = 0.40   # the low end of the paper's "40-90% lower calibration error"


def run(p: dict, setting: Setting | None = None) -> "Calibration":
    """The chapter from its notebook's parameters (as the notebook calls it)."""
    return calibration(p["tasks"], p["seeds"], p["claim_sparsity"], setting or Setting.from_params(**p),
                       n_bins=p["ece_bins"])


@dataclass
class Calibration:
    results: pd.DataFrame      # task, seed, variant, accuracy, ece, brier, nll, confidence, temperature
    reliability: pd.DataFrame  # task, variant, bin, lower, upper, count, confidence, accuracy, gap (seeds pooled)
    probs: Predictions = field(default_factory=lambda: Predictions(*FIELDS))  # test-set predictions, by FIELDS
    regime: pd.DataFrame = None  # fine_tune_regime of the fine-tunes
    grafts: pd.DataFrame = None  # graft_regime of the grafts


def calibration(tasks: list[str], seeds: list[int], sparsity: float, setting: Setting, n_bins: int = 10) -> Calibration:
    """Zero-shot, fine-tuned (plain and temperature-scaled on dev) and grafted models;
    ECE and reliability bins with ``n_bins`` equal-width confidence bins."""
    lab = setting.lab()
    rows, pooled, kept, dspecs, gspecs = [], {}, Predictions(*FIELDS), [], []
    for task, seed in itertools.product(tasks, seeds):
        variants = three_models(lab, setting, task, seed, sparsity, dspecs, gspecs)
        for v in variants:
            probs, labels = lab.predict(task, v)
            kept.add((probs, labels), task=task, seed=seed, variant=v.name)
            rows.append(dict(task=task, seed=seed, variant=v.name, temperature=1.0, **scores(probs, labels, n_bins)))
            pooled.setdefault((task, v.name), []).append((probs, labels))
        # temperature scaling of the fine-tuned model, fitted on its dev predictions
        dev_probs, dev_labels = lab.predict(task, variants[1], split="dev", k=setting.k, seed=seed)
        temp = mt.fit_temperature(np.log(np.clip(dev_probs, 1e-12, None)), dev_labels)
        probs, labels = pooled[(task, "fine-tuned")][-1]
        scaled = mt.softmax(np.log(np.clip(probs, 1e-12, None)), temperature=temp)
        rows.append(dict(task=task, seed=seed, variant="fine-tuned+TS", temperature=temp, **scores(scaled, labels, n_bins)))
        pooled.setdefault((task, "fine-tuned+TS"), []).append((scaled, labels))
        kept.add((scaled, labels), task=task, seed=seed, variant="fine-tuned+TS")
    bins = []
    for (task, variant), parts in pooled.items():
        probs = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        bins.append(mt.reliability_bins(probs, labels, n_bins).assign(task=task, variant=variant,
                                                                       ece=mt.ece(probs, labels, n_bins)))
    return Calibration(pd.DataFrame(rows), pd.concat(bins, ignore_index=True), kept,
                       fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs))


def _units(cal: Calibration, against: str, tasks: list[str] | None) -> dict:
    """Per task, one group per seed: each test example's top-class confidence and correctness under the
    graft and under ``against`` (:func:`skillgraft.metrics.top_class`)."""
    units = {}
    for k, graft in cal.probs.find(variant="graft"):
        if tasks is None or k["task"] in tasks:
            other = cal.probs.get(task=k["task"], seed=k["seed"], variant=against)
            units.setdefault(k["task"], []).append(mt.top_class(graft.probs, graft.labels)
                                                   + mt.top_class(other.probs, other.labels))
    return units


def _ece_stat(n_bins: int):
    """One task's ECE of the graft and of the other model, each computed per seed, then averaged over seeds."""
    def stat(groups):
        return [float(np.mean([verdicts.ece_binned(g[0], g[1], n_bins) for g in groups])),
                float(np.mean([verdicts.ece_binned(g[2], g[3], n_bins) for g in groups]))]
    return stat


def _ece_finish(m: np.ndarray) -> dict:
    """From the mean over tasks of the per-task ECEs: the gap (other − graft) and the relative reduction."""
    graft, other = m
    return {"reduction": (other - graft) / other if other > 0 else np.nan, "gap": other - graft}


def intervals(cal: Calibration, n_bins: int = 10, against: str = "fine-tuned", tasks: list[str] | None = None,
              **kw) -> tuple:
    """(relative ECE reduction, ECE gap) of the graft against ``against`` over ``tasks`` (default: all),
    for :func:`rule`; (None, None) for none. Each task's ECE is computed per seed and averaged over its
    seeds; the pooled ECE of a model is the mean of the tasks' ECEs (never one ECE over predictions of
    several tasks concatenated, where miscalibrations of opposite sign cancel); the interval is
    :func:`skillgraft.verdicts.hierarchical`'s (tasks resampled when there are at least five)."""
    def compute():
        units = _units(cal, against, tasks)
        if not units:
            return None, None
        out = verdicts.hierarchical(_ece_stat(n_bins), units, _ece_finish, **kw)
        return out["reduction"], out["gap"]
    key = ("c2", n_bins, against, None if tasks is None else tuple(tasks), tuple(sorted(kw.items())))
    return verdicts.memo(cal, key, compute)


def gains(cal: Calibration, **kw) -> dict[str, Interval]:
    """Per task, fine-tuned − zero-shot test accuracy over its seeds: a task tests C2 only where it is
    above zero (fine-tuning learned something for the graft to keep)."""
    return verdicts.memo(cal, ("c2 gains", tuple(sorted(kw.items()))), lambda: _gains(cal, **kw))


def _gains(cal: Calibration, **kw) -> dict[str, Interval]:
    units = {}
    for task in cal.probs.values("task", variant="graft"):
        model = lambda seed, variant: cal.probs.get(task=task, seed=seed, variant=variant)
        units[task] = [verdicts.correctness((model(s, "fine-tuned").probs, model(s, "zero-shot").probs,
                                             model(s, "zero-shot").labels))
                       for s in cal.probs.values("seed", task=task, variant="graft")]
    return verdicts.per_unit(lambda gs: float(np.mean([g[0].mean() - g[1].mean() for g in gs])), units, **kw)


def tested(cal: Calibration, **kw) -> list[str]:
    """The tasks that test C2: fine-tuning beat zero-shot (:func:`gains` above zero)."""
    return [t for t, g in gains(cal, **kw).items() if g.sign > 0]


def verdict(cal: Calibration, n_bins: int = 10, **kw) -> Verdict:
    """C2 on this result: per task and pooled over the tested tasks (:func:`rule_across`)."""
    g = gains(cal, **kw)
    per = {t: intervals(cal, n_bins, tasks=[t], **kw) for t in g}
    return rule_across(per, intervals(cal, n_bins, tasks=tested(cal, **kw), **kw), g)


def by_task(cal: Calibration, n_bins: int = 10, **kw) -> pd.DataFrame:
    """One row per task and one pooled over the tested tasks: the evidence of C2 (family, seeds, the
    fine-tuned and grafted models' ECE and confidence, the gain of fine-tuning) with its intervals and verdict."""
    from ..tasks import get_task

    g = gains(cal, **kw)
    names = tested(cal, **kw)
    r = cal.results
    rows = []
    for task in list(g) + (["pooled"] if len(names) > 1 else []):
        on = names if task == "pooled" else [task]
        red, gap = intervals(cal, n_bins, tasks=on, **kw)
        sub = r[r.task.isin(on)]
        mean = lambda v, col: sub.loc[sub.variant == v, col].mean()
        rows.append(dict(task=task, family="—" if task == "pooled" else get_task(task).family,
                         seeds=sub.seed.nunique(), gain="—" if task == "pooled" else g[task].cell("+.1f", 100, " pt"),
                         ece_fine_tuned=mean("fine-tuned", "ece"), ece_graft=mean("graft", "ece"),
                         confidence_fine_tuned=mean("fine-tuned", "confidence"), confidence_graft=mean("graft", "confidence"),
                         ece_gap=gap.cell("+.3f"), reduction=red.cell(".0%"),
                         verdict=(rule(red, gap).verdict if task == "pooled" or task in names else verdicts.UNTESTABLE)))
    return verdicts.verdict_first(pd.DataFrame(rows))


def forest(cal: Calibration, n_bins: int = 10, **kw) -> pd.DataFrame:
    """Relative ECE reduction by task and pooled, with verdicts, for :func:`skillgraft.plots.forest`."""
    g = gains(cal, **kw)
    names = tested(cal, **kw)
    per = {t: intervals(cal, n_bins, tasks=[t], **kw) for t in g}
    pooled = intervals(cal, n_bins, tasks=names, **kw) if len(names) > 1 else None
    return verdicts.forest_frame({t: v[0] for t, v in per.items()}, {t: rule(*per[t]).verdict for t in names},
                                 pooled[0] if pooled else None, rule(*pooled).verdict if pooled else verdicts.UNTESTABLE)


def rule_across(per_task: dict[str, tuple], pooled: tuple, gains_: dict[str, Interval]) -> Verdict:
    """C2 over many tasks: :func:`rule` on the intervals pooled over the tested tasks (``pooled``, from
    :func:`intervals` with ``tasks``), each tested task's :func:`rule` on its own intervals
    (``per_task``) tallied beside it (:func:`skillgraft.verdicts.across`). A task tests C2 only where
    fine-tuning beat zero-shot (its ``gains_`` interval above zero)."""
    names = [t for t in per_task if gains_[t].sign > 0]
    untested = {t: "fine-tuning's gain over zero-shot is not clearly above zero (its interval reaches zero): no skill to keep" for t in per_task if t not in names}
    return verdicts.across("C2", rule(*pooled) if names else None, {t: rule(*per_task[t]) for t in names}, untested)


def rule(reduction: Interval | None, gap: Interval | None) -> Verdict:
    """C2 from the pooled ECE ``gap`` (fine-tuned − graft; positive: the graft is better
    calibrated) and the relative ``reduction`` (the paper: 40-90% lower). Holds when the gap is
    above zero and the reduction's interval lies at or above 40%; fails when the graft is worse
    calibrated (gap below zero) or the reduction's interval lies below 40%; inconclusive when an
    interval contains its threshold; not testable here with nothing to compare."""
    if reduction is None or gap is None:
        return Verdict("C2", verdicts.UNTESTABLE, ("no graft and fine-tuned model to compare",))
    size = (verdicts.HOLDS if reduction.low >= ECE_REDUCTION else verdicts.FAILS if reduction.high < ECE_REDUCTION
            else verdicts.INCONCLUSIVE)
    reasons = (f"ECE fine-tuned − graft {gap.fmt('+.3f')}: {verdicts.side(gap)}"
               + (" (no difference)" if gap.sign == 0 else ""),
               f"relative ECE reduction {reduction.fmt('.0%')} against the paper's {ECE_REDUCTION:.0%}: {size}")
    return Verdict("C2", verdicts.combine([verdicts.side(gap), size]), reasons)


def robustness(cal: Calibration, n_bins: int = 10, **kw) -> list[dict]:
    """C2 under the primary rule and the reasonable alternatives (:data:`skillgraft.verdicts.ANALYSES`); "flat"
    is the earlier analysis: one ECE over the predictions of all tested tasks concatenated, task × seed groups
    resampled as independent."""
    g = gains(cal, **kw)
    names = tested(cal, **kw)
    if not names:
        return [verdicts.robust_row("C2", "primary", verdicts.UNTESTABLE)]
    red, gap = intervals(cal, n_bins, tasks=names, **kw)
    # the earlier analysis whole: its own test of which tasks gained (flat, task by task), then one ECE over the
    # predictions of those tasks concatenated
    model = lambda task, seed, variant: cal.probs.get(task=task, seed=seed, variant=variant)
    gained = [t for t in g if verdicts.accuracy_gap(
        [(model(t, s, "fine-tuned").probs, model(t, s, "zero-shot").probs, model(t, s, "zero-shot").labels)
         for s in cal.probs.values("seed", task=t, variant="graft")], **kw).sign > 0]
    groups = [(graft.probs, cal.probs.get(task=k["task"], seed=k["seed"], variant="fine-tuned").probs, graft.labels)
              for k, graft in cal.probs.find(variant="graft") if k["task"] in gained]
    flat_red, flat_gap = verdicts.ece_reduction(groups, n_bins, **kw), verdicts.ece_gap(groups, n_bins, **kw)
    point = verdicts.HOLDS if red.estimate >= ECE_REDUCTION and gap.estimate > 0 else verdicts.FAILS
    every = intervals(cal, n_bins, tasks=list(g), **kw)
    row = verdicts.robust_row
    return [row("C2", "primary", rule(red, gap).verdict, red, ".0%", 1, "",
                estimand="relative ECE reduction", beside=f"ECE gap {gap.fmt('+.3f')}"),
            row("C2", "point", point, red, ".0%", 1, ""),
            row("C2", "majority", verdicts.majority([rule(*intervals(cal, n_bins, tasks=[t], **kw)).verdict
                                                      for t in names])),
            row("C2", "flat", rule(flat_red, flat_gap).verdict, flat_red, ".0%", 1, ""),
            row("C2", "all units", rule(*every).verdict, every[0], ".0%", 1, "")]


def reading(cal: Calibration, reduction: Interval | None, gap: Interval | None, ts_reduction: Interval | None) -> str:
    """The chapter's result in words written from ``cal`` and its intervals (:func:`intervals`):
    how confident each model is against its accuracy, the ECE per task, and the two comparisons."""
    if reduction is None or gap is None:
        return "No graft and fine-tuned model to compare here."
    r = cal.results
    ece = r.groupby(["task", "variant"])["ece"].mean().unstack()
    per_task = "; ".join(f"{t} {row['fine-tuned']:.3f} → {row['graft']:.3f}" for t, row in ece.iterrows())
    text = (f"**Reading the result.** Fine-tuned models: {confidence_words(r[r.variant == 'fine-tuned'])}; "
            f"grafts: {confidence_words(r[r.variant == 'graft'])} (all tasks and seeds). ECE per task, fine-tuned → "
            f"graft: {per_task}. Averaged over the tasks (each task's ECE per seed, then over its seeds), the ECE "
            f"difference fine-tuned − graft is {gap.fmt('+.3f')}: "
            f"{difference_words(gap, 'the graft is better calibrated', 'the graft is worse calibrated')}; "
            f"the relative reduction is {reduction.fmt('.0%')}, against the paper's {ECE_REDUCTION:.0%} or more.")
    if ts_reduction is not None:
        text += (f" Against the fine-tuned model temperature-scaled on its dev set, the graft's ECE reduction is "
                 f"{ts_reduction.fmt('.0%')}: " + difference_words(
                     ts_reduction, "the graft is better calibrated than temperature scaling makes the fine-tuned model",
                     "temperature scaling calibrates the fine-tuned model better than grafting does") + ".")
    return text


def reduction_by_task(cal: Calibration, n_bins: int = 10, against: str = "fine-tuned") -> pd.Series:
    """Per task, the relative ECE reduction of the graft against ``against``, each model's ECE computed per
    seed and averaged over seeds — the per-task estimate :func:`intervals` pools."""
    out = {}
    for task in cal.probs.values("task"):
        def ece(variant):
            return float(np.mean([mt.ece(p.probs, p.labels, n_bins) for _, p in cal.probs.find(task=task, variant=variant)]))
        ref = ece(against)
        out[task] = (ref - ece("graft")) / ref if ref > 0 else np.nan
    return pd.Series(out, name="ECE reduction", dtype=float).rename_axis("task")
