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
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import metrics

__all__ = ["VERDICTS", "HOLDS", "FAILS", "INCONCLUSIVE", "UNTESTABLE", "side", "combine", "no_room", "across", "tally", "forest_frame", "memo", "Interval", "Verdict", "bootstrap", "correctness", "accuracy_interval", "accuracy_gap", "ece_gap",
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


def bootstrap(stat: Callable[[list[Group]], float], groups: Sequence[Group], n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of ``stat`` by a two-level bootstrap: data seeds with replacement,
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
