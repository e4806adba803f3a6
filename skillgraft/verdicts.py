"""Verdicts and the intervals they are judged on.

Each claim's rule lives with its chapter (``rule`` in :mod:`skillgraft.chapters`), with its
thresholds, fixed before a chapter is executed and unit tested on hand-made numbers
(``tests/test_verdicts.py``); this module holds what they share. Uncertainty comes from a
bootstrap over data seeds and test examples (:func:`bootstrap`): a difference whose 95%
interval contains zero is "no difference", never a win or a loss.

A verdict is one of :data:`VERDICTS` and says what its interval says: the claim **holds** when
the interval lies wholly on the claim's side of its threshold, **fails** when it lies wholly on
the other side (the data exclude the claim), and is **inconclusive** when it contains the
threshold; **not testable here** means the setting leaves the claim no room (no task where
fine-tuning gained, a baseline with nothing to improve on, one task, an empty selection, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import metrics

__all__ = ["MIN_UNITS", "hierarchical", "per_unit", "ece_binned", "VERDICTS", "HOLDS", "FAILS", "INCONCLUSIVE", "UNTESTABLE", "side", "combine", "no_room", "across", "tally", "verdict_first", "point", "majority", "ANALYSES", "robust_row", "forest_frame", "memo", "Interval", "Verdict", "bootstrap", "correctness", "accuracy_interval", "accuracy_gap", "ece_gap",
           "ece_reduction"]

HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE = "holds", "fails", "inconclusive", "not testable here"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE)


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def sign(self) -> int:
        """+1 if the whole interval is above zero, −1 if below, 0 if it contains zero (no difference)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def fmt(self, spec: str = "+.3f", scale: float = 1.0, unit: str = "") -> str:
        e, lo, hi = (scale * v for v in (self.estimate, self.low, self.high))
        return f"{e:{spec}}{unit} [{lo:{spec}}, {hi:{spec}}]"

    def cell(self, spec: str = "+.3f", scale: float = 1.0, unit: str = "") -> str:
        """:meth:`fmt` for a table cell: it wraps between the estimate and its bounds, never inside a number
        with its unit."""
        return self.fmt(spec, scale, unit.replace(" ", "\u00a0"))

    def __str__(self) -> str:
        return self.fmt()


def side(interval: "Interval", threshold: float = 0.0) -> str:
    """What ``interval`` says of "the value is above ``threshold``": holds (wholly above), fails
    (wholly below or at it), inconclusive (it contains the threshold)."""
    if interval.low > threshold:
        return HOLDS
    if interval.high <= threshold:
        return FAILS
    return INCONCLUSIVE


def combine(parts: Sequence[str]) -> str:
    """One verdict from the verdicts of a claim's parts (all must hold): fails if any part fails,
    holds if every part holds, else inconclusive."""
    if not parts:
        return UNTESTABLE
    if FAILS in parts:
        return FAILS
    return HOLDS if all(p == HOLDS for p in parts) else INCONCLUSIVE


def no_room(claim: str, reasons: list[str], room: "Interval | None", what: str, why: str) -> "Verdict | None":
    """The "not testable here" verdict of ``claim`` when ``room`` (what the claim needs to be above
    zero: a gain to keep, a forgetting to reduce) is not above zero; None when it is, or is not
    given. Its line, ``what`` with the interval, is added to ``reasons`` either way."""
    if room is None:
        return None
    reasons.append(f"{what} {room.fmt('+.1f', 100, ' pt')}")
    return Verdict(claim, UNTESTABLE, tuple(reasons + [why])) if room.sign <= 0 else None


def memo(result, key: tuple, compute: Callable[[], object]):
    """``compute()`` once per ``result`` and ``key``: a chapter's verdict, its per-task table and its
    forest plot read the same bootstrap intervals, computed once (kept on the result object)."""
    store = result.__dict__.setdefault("_intervals", {})
    if key not in store:
        store[key] = compute()
    return store[key]


def across(claim: str, pooled: "Verdict", per_task: dict[str, "Verdict"], untested: dict[str, str] | None = None,
           unit: str = "task") -> "Verdict":
    """A claim judged on many tasks (or sequences: ``unit``). The verdict is ``pooled``'s: the chapter's rule on
    intervals pooled over the tested tasks, each task × seed one bootstrap group, so that every task weighs by its
    test examples; the reasons add the tally of the same rule on each tested task, and name the ``untested`` ones
    (task → why it tests nothing, e.g. fine-tuning did not beat zero-shot). Not testable here with no tested task."""
    untested = dict(untested or {})
    skipped = [f"not tested: {t} ({why})" for t, why in sorted(untested.items())]
    if not per_task:
        return Verdict(claim, UNTESTABLE, tuple(skipped + [f"no {unit} tests {claim} here"]))
    n = len(per_task)
    counts = [f"{v} on {sum(p.verdict == v for p in per_task.values())} ({', '.join(t for t, p in per_task.items() if p.verdict == v)})"
              for v in VERDICTS if any(p.verdict == v for p in per_task.values())]
    reasons = [f"pooled over the {n} tested {unit}s ({', '.join(per_task)}):" if n > 1
               else f"on the one tested {unit} ({next(iter(per_task))}):"]
    reasons += list(pooled.reasons)
    reasons.append(f"{unit} by {unit}: " + "; ".join(counts))
    return Verdict(claim, pooled.verdict, tuple(reasons + skipped))


def forest_frame(per_task: dict[str, "Interval"], verdicts_: dict[str, str], pooled: "Interval | None",
                 pooled_verdict: str) -> pd.DataFrame:
    """Rows for a forest plot (:func:`skillgraft.plots.forest`): each task's interval of the claim's key
    number with its verdict ("not testable here" for a task left out), then the pooled one."""
    rows = [dict(label=t, estimate=i.estimate, low=i.low, high=i.high, verdict=verdicts_.get(t, UNTESTABLE))
            for t, i in per_task.items()]
    if pooled is not None:
        rows.append(dict(label="pooled", estimate=pooled.estimate, low=pooled.low, high=pooled.high,
                         verdict=pooled_verdict))
    return pd.DataFrame(rows, columns=["label", "estimate", "low", "high", "verdict"])


def point(estimate: float, threshold: float = 0.0, strict: bool = True) -> str:
    """A verdict from a point estimate alone, as the paper reports (no interval): holds when the estimate clears
    ``threshold`` (above it; or at it, without ``strict``), else fails. For the robustness table only."""
    if estimate is None or not np.isfinite(estimate):
        return UNTESTABLE
    return HOLDS if (estimate > threshold if strict else estimate >= threshold) else FAILS


def majority(parts: Sequence[str]) -> str:
    """A verdict by majority of units (for the robustness table): holds when more than half of ``parts`` hold,
    fails when more than half fail, else inconclusive; not testable here without a part."""
    if not parts:
        return UNTESTABLE
    for v in (HOLDS, FAILS):
        if sum(p == v for p in parts) * 2 > len(parts):
            return v
    return INCONCLUSIVE


ANALYSES = {  # the robustness table's columns: the primary analysis, then the reasonable alternatives
    "primary": "the analysis plan's rule: hierarchical interval, mean of per-task estimates",
    "point": "point estimate only, as the paper reports (no interval)",
    "majority": "majority of units (tasks, sources, sequences), each judged alone",
    "flat": "the earlier flat bootstrap: task × seed groups independent, predictions concatenated across tasks",
    "all units": "the primary rule on every task (source, sequence), without the precondition that selects them",
}


def robust_row(claim: str, analysis: str, verdict: str, interval: "Interval | None" = None, spec: str = "+.1f",
               scale: float = 100, unit: str = " pt", note: str = "", estimand: str = "", beside: str = "") -> dict:
    """One row of a claim's robustness table: which analysis (a key of :data:`ANALYSES`, or a claim's own
    alternative named in ``note``), its verdict and the estimate it rests on; ``headline`` is what the results
    page's first table shows of it: ``estimand`` (what that number is) with the estimate, then ``beside``."""
    estimate = interval.fmt(spec, scale, unit) if interval is not None else "—"
    headline = "; ".join(x for x in (f"{estimand} {estimate}" if interval is not None else estimand, beside) if x)
    return {"claim": claim, "analysis": analysis, "verdict": verdict, "note": note, "estimate": estimate,
            "headline": headline or "—"}


def verdict_first(frame: pd.DataFrame, by: str = "task") -> pd.DataFrame:
    """A claim's table with its verdict columns right after the unit's name (``by``), so that a reader sees them
    without scrolling a wide table sideways."""
    first = [by] + [c for c in frame.columns if c.endswith("verdict")]
    return frame[first + [c for c in frame.columns if c not in first]]


def tally(per_task: dict[str, "Verdict"]) -> dict[str, int]:
    """How many tasks each verdict has, in the order of :data:`VERDICTS` (absent ones left out)."""
    return {v: n for v in VERDICTS if (n := sum(p.verdict == v for p in per_task.values()))}


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict and the reasons for it, in words a reader can check against the tables."""

    claim: str
    verdict: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def __str__(self) -> str:
        return f"{self.claim} on the embedded model: {self.verdict}"

    def report(self) -> str:
        return "\n".join([*(f"- {r}" for r in self.reasons), str(self)])

    def summary(self) -> str:
        """The reasons as one line: "; " between them, a space after one that introduces the next (ends with ":")."""
        return "".join(r + ("" if i == len(self.reasons) - 1 else " " if r.endswith(":") else "; ")
                       for i, r in enumerate(self.reasons))


# ---------------------------------------------------------------------------- bootstrap
Group = Sequence[np.ndarray]  # arrays of one data seed, aligned on its test examples (first axis)
Unit = Sequence[Group]        # one unit of analysis (a task, a source, a sequence): one group per data seed

MIN_UNITS = 5  # a claim over at least this many units resamples them; over fewer it holds them fixed


def hierarchical(stat: Callable[[list[Group]], "float | Sequence[float]"], units: "Mapping[str, Unit]",
                 finish: "Callable[[np.ndarray], float | dict[str, float]] | None" = None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95, resample_units: bool | None = None,
                 strata: "Mapping[str, np.ndarray] | None" = None) -> "Interval | dict[str, Interval]":
    """Percentile interval of a pooled estimand by the hierarchical bootstrap of the analysis plan.

    The data's hierarchy is unit (task) → data seed → test example, and the test examples of a unit
    are the same for all its seeds and models. One draw: units with replacement (when
    ``resample_units``; by default when there are at least :data:`MIN_UNITS`, else they are held
    fixed and the interval is about those units), then, within each drawn unit, its seeds with
    replacement and **one** draw of its test examples shared by all its seeds and models (paired),
    stratified by ``strata[unit]`` where given (e.g. the targets of a source, the tasks of a sequence).

    With resampled units, a percentile interval over n of them is too narrow for small n (it covers the truth
    about 89% of the time at n = 8 where 95% is asked); the interval is therefore the *expanded* percentile
    interval (Hesterberg 2015): the quantiles at the tail Φ(−√(n/(n−1))·t_{n−1}) in place of (1 − level)/2.

    ``stat`` maps one unit's drawn seed groups to the unit's estimate (a number or a vector of
    numbers: per seed, then averaged over seeds). The pooled estimate is the **mean over units** of
    those estimates, each unit weighing the same (never one metric over predictions concatenated
    across units); ``finish`` turns that mean vector into the number reported (or a dict of named
    numbers, which returns a dict of intervals drawn from the same resamples).
    """
    names = list(units)
    if not names:
        raise ValueError("a hierarchical bootstrap needs at least one unit")
    if not 0 < level < 1 or n_boot < 10:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 10, got {level} and {n_boot}")
    data = [[tuple(np.asarray(a) for a in g) for g in units[n]] for n in names]
    sizes = []
    for name, groups in zip(names, data):
        if not groups:
            raise ValueError(f"unit {name!r} has no data seed")
        n = len(groups[0][0])
        if any(len(a) != n for g in groups for a in g):
            raise ValueError(f"unit {name!r}: every array of every seed must have one row per test example of the "
                             "unit (its seeds and models see the same test examples)")
        sizes.append(n)
    layers = []
    for name, n in zip(names, sizes):
        labels = None if strata is None or name not in strata else np.asarray(strata[name])
        if labels is not None and len(labels) != n:
            raise ValueError(f"unit {name!r}: strata has {len(labels)} labels for {n} test examples")
        layers.append(None if labels is None else [np.flatnonzero(labels == s) for s in dict.fromkeys(labels.tolist())])
    resample = len(names) >= MIN_UNITS if resample_units is None else resample_units
    finish = finish or (lambda v: float(v[0]))
    rng = np.random.default_rng(seed)

    def draw(u: int) -> np.ndarray:
        if layers[u] is None:
            return rng.integers(sizes[u], size=sizes[u])
        return np.concatenate([pos[rng.integers(len(pos), size=len(pos))] for pos in layers[u]])

    def pooled(values: list) -> np.ndarray:
        return np.mean(np.stack([np.atleast_1d(np.asarray(v, dtype=float)) for v in values]), axis=0)

    estimate = finish(pooled([stat(groups) for groups in data]))
    draws = []
    for _ in range(n_boot):
        picks = rng.integers(len(data), size=len(data)) if resample and len(data) > 1 else range(len(data))
        values = []
        for u in picks:
            groups = data[u]
            chosen = rng.integers(len(groups), size=len(groups)) if len(groups) > 1 else [0]
            idx = draw(u)
            values.append(stat([tuple(a[idx] for a in groups[s]) for s in chosen]))
        draws.append(finish(pooled(values)))
    tail = (1 - level) / 2
    if resample and len(data) > 1:  # few resampled units: the expanded percentile interval (Hesterberg 2015)
        from scipy import stats
        n = len(data)
        tail = float(stats.norm.sf(np.sqrt(n / (n - 1)) * stats.t.ppf(1 - tail, n - 1)))

    def interval(est: float, vals) -> Interval:
        with np.errstate(all="ignore"):
            vals = np.asarray(vals, dtype=float)
            low, high = np.nanquantile(vals, [tail, 1 - tail]) if np.isfinite(vals).any() else (np.nan, np.nan)
        return Interval(float(est), float(low), float(high), level)
    if isinstance(estimate, dict):
        return {k: interval(estimate[k], [d[k] for d in draws]) for k in estimate}
    return interval(estimate, draws)


def per_unit(stat, units: "Mapping[str, Unit]", finish=None, strata=None, **kw) -> dict:
    """:func:`hierarchical` on each unit alone (its seeds and test examples resampled): a task's own interval."""
    return {n: hierarchical(stat, {n: units[n]}, finish, resample_units=False,
                            strata=None if strata is None or n not in strata else {n: strata[n]}, **kw)
            for n in units}


def ece_binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """:func:`skillgraft.metrics.ece_top` (the same bins, the same number) in a few array operations, for the
    thousands of ECEs a bootstrap computes."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    gap = np.bincount(idx, weights=correct, minlength=n_bins) - np.bincount(idx, weights=confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


def bootstrap(stat: Callable[[list[Group]], float], groups: Sequence[Group], n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> Interval:
    """The flat scheme the chapters used before the analysis plan (kept for its robustness table and the
    coverage comparison): percentile interval of ``stat`` by a two-level bootstrap: data seeds with replacement,
    then test examples with replacement within each drawn seed (paired: one index draw per
    seed applies to all its arrays, so differences between models keep their pairing).

    ``groups``: one tuple of arrays per data seed, e.g. ``(probs_a, probs_b, labels)``;
    ``stat`` maps a list of such tuples to a number. With one seed only examples are drawn.
    """
    if not groups:
        raise ValueError("bootstrap needs at least one group (data seed)")
    if not 0 < level < 1 or n_boot < 10:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 10, got {level} and {n_boot}")
    sizes = [len(g[0]) for g in groups]
    if any(len(a) != n for g, n in zip(groups, sizes) for a in g):
        raise ValueError("the arrays of one group must have the same length (one row per test example)")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(len(groups), size=len(groups)) if len(groups) > 1 else [0]
        drawn = []
        for i in picks:
            idx = rng.integers(sizes[i], size=sizes[i])
            drawn.append(tuple(a[idx] for a in groups[i]))
        values[b] = stat(drawn)
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return Interval(float(stat(list(groups))), float(low), float(high), level)


def _pool(groups: list[Group], i: int) -> np.ndarray:
    return np.concatenate([g[i] for g in groups])


def correctness(group: Group) -> tuple[np.ndarray, ...]:
    """``(probs_1, …, probs_m, labels)`` as ``(correct_1, …, correct_m)``: whether each model's top
    class is the label (1.0 or 0.0), all an accuracy reads. Groups made so pool across tasks with
    other numbers of classes; :func:`accuracy_interval` takes them with ``scored=True``."""
    return tuple(metrics.top_class(probs, group[-1])[1] for probs in group[:-1])


def accuracy_interval(groups: Sequence[Group], combine: Callable[..., float], scored: bool = False, **kw) -> Interval:
    """``combine(acc_1, …, acc_m)`` of the accuracies of m models, from groups
    ``(probs_1, …, probs_m, labels)`` (or, with ``scored``, groups of :func:`correctness`) with the
    examples of the drawn seeds pooled."""
    tops = list(groups) if scored else [correctness(g) for g in groups]

    def stat(gs):
        return float(combine(*(float(np.mean(_pool(gs, i))) for i in range(len(gs[0])))))
    return bootstrap(stat, tops, **kw)


def accuracy_gap(groups: Sequence[Group], **kw) -> Interval:
    """accuracy(a) − accuracy(b), from groups ``(probs_a, probs_b, labels)``, examples pooled."""
    return accuracy_interval(groups, lambda a, b: a - b, **kw)


def _tops(groups: Sequence[Group]) -> list[tuple]:
    """Groups ``(probs_a, probs_b, labels)`` as ``(conf_a, correct_a, conf_b, correct_b)``: what an ECE
    reads (:func:`metrics.top_class`), so that tasks with other numbers of classes pool."""
    return [metrics.top_class(g[0], g[2]) + metrics.top_class(g[1], g[2]) for g in groups]


def _eces(gs, n_bins: int) -> tuple[float, float]:
    return (metrics.ece_top(_pool(gs, 0), _pool(gs, 1), n_bins), metrics.ece_top(_pool(gs, 2), _pool(gs, 3), n_bins))


def ece_gap(groups: Sequence[Group], n_bins: int = 10, **kw) -> Interval:
    """ECE(b) − ECE(a) from groups ``(probs_a, probs_b, labels)``: positive when a is better calibrated."""
    def stat(gs):
        a, b = _eces(gs, n_bins)
        return b - a
    return bootstrap(stat, _tops(groups), **kw)


def ece_reduction(groups: Sequence[Group], n_bins: int = 10, **kw) -> Interval:
    """(ECE(b) − ECE(a)) / ECE(b) from groups ``(probs_a, probs_b, labels)``: the paper's "% lower"."""
    def stat(gs):
        a, ref = _eces(gs, n_bins)
        return (ref - a) / ref if ref > 0 else np.nan
    return bootstrap(stat, _tops(groups), **kw)
