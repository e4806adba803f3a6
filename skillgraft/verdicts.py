"""The rules that turn a chapter's results into a verdict on one of the paper's claims.

Every rule is fixed here, with its thresholds, before a chapter is executed, and is unit
tested on hand-made numbers (``tests/test_verdicts.py``). Uncertainty comes from a
bootstrap over data seeds and test examples (:func:`bootstrap`): a difference whose 95%
interval contains zero is "no difference", never a win or a loss.

A verdict is one of :data:`VERDICTS`; "not tested" means the results hold nothing the
rule could judge (no task where fine-tuning gained, an empty selection, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import metrics

__all__ = ["VERDICTS", "RECOVERY", "NORMALIZED", "ECE_REDUCTION", "DISJOINT", "Interval", "Verdict",
           "bootstrap", "accuracy_interval", "accuracy_gap", "ece_gap", "ece_reduction", "c1_recovery", "c2_calibration", "c3_ood",
           "c4_disjoint", "c5_continual"]

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not tested")
RECOVERY = 0.95        # C1: the paper's ">95% of the fine-tuned performance"
NORMALIZED = 0.5       # C1: at least half of the fine-tuning gain over zero-shot (ours: the model is good zero-shot)
ECE_REDUCTION = 0.40   # C2: the low end of the paper's "40-90% lower calibration error"
DISJOINT = 0.10        # C4: "almost disjoint": mean asymmetric overlap of two task regions below 10%


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

    def __str__(self) -> str:
        return self.fmt()


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


def accuracy_interval(groups: Sequence[Group], combine: Callable[..., float], **kw) -> Interval:
    """``combine(acc_1, …, acc_m)`` of the accuracies of m models, from groups
    ``(probs_1, …, probs_m, labels)`` with the examples of the drawn seeds pooled."""
    def stat(gs):
        labels = _pool(gs, -1)
        return float(combine(*(float(np.mean(_pool(gs, i).argmax(1) == labels)) for i in range(len(gs[0]) - 1))))
    return bootstrap(stat, groups, **kw)


def accuracy_gap(groups: Sequence[Group], **kw) -> Interval:
    """accuracy(a) − accuracy(b), from groups ``(probs_a, probs_b, labels)``, examples pooled."""
    return accuracy_interval(groups, lambda a, b: a - b, **kw)


def ece_gap(groups: Sequence[Group], n_bins: int = 10, **kw) -> Interval:
    """ECE(b) − ECE(a) from groups ``(probs_a, probs_b, labels)``: positive when a is better calibrated."""
    def stat(gs):
        labels = _pool(gs, 2)
        return metrics.ece(_pool(gs, 1), labels, n_bins) - metrics.ece(_pool(gs, 0), labels, n_bins)
    return bootstrap(stat, groups, **kw)


def ece_reduction(groups: Sequence[Group], n_bins: int = 10, **kw) -> Interval:
    """(ECE(b) − ECE(a)) / ECE(b) from groups ``(probs_a, probs_b, labels)``: the paper's "% lower"."""
    def stat(gs):
        labels = _pool(gs, 2)
        ref = metrics.ece(_pool(gs, 1), labels, n_bins)
        return (ref - metrics.ece(_pool(gs, 0), labels, n_bins)) / ref if ref > 0 else np.nan
    return bootstrap(stat, groups, **kw)


# ---------------------------------------------------------------------------- the rules
def c1_recovery(tasks: dict[str, dict]) -> Verdict:
    """C1 from per-task intervals: ``gain`` (fine-tuned − zero-shot accuracy), ``recovery``
    (graft / fine-tuned accuracy), ``normalized`` (share of the gain kept) and ``vs_random``
    (graft − random mask of the graft's size).

    A task tests C1 only where fine-tuning gained (gain interval above zero). On a tested task
    the claim holds when recovery ≥ 95% *with its whole interval*, at least half the gain is
    kept, and the graft beats the random mask. Reproduced: holds on every tested task;
    partly: the point estimates meet the thresholds everywhere but some interval reaches below
    95%, or it holds on some tested tasks only; not tested: no task gained.
    """
    tested = {t: v for t, v in tasks.items() if v["gain"].sign > 0}
    reasons = [f"fine-tuning beat zero-shot (interval above zero) on {len(tested)} of {len(tasks)} task(s)"
               + (f": {', '.join(sorted(tested))}" if tested else "")]
    if not tested:
        return Verdict("C1", "not tested", tuple(reasons + ["with no gain to recover, C1 cannot be tested"]))
    firm, point = [], []
    for t, v in sorted(tested.items()):
        ok_rest = v["normalized"].estimate >= NORMALIZED and v["vs_random"].sign > 0
        firm.append(v["recovery"].low >= RECOVERY and ok_rest)
        point.append(v["recovery"].estimate >= RECOVERY and ok_rest)
        reasons.append(f"{t}: recovery {v['recovery'].fmt('.1%')}, share of the gain kept "
                       f"{v['normalized'].fmt('.0%')}, graft − random {v['vs_random'].fmt('+.1f', 100, ' pt')}")
    verdict = ("reproduced" if all(firm) else "partly reproduced" if all(point) or any(firm)
               else "not reproduced")
    return Verdict("C1", verdict, tuple(reasons))


def c2_calibration(reduction: Interval | None, gap: Interval | None) -> Verdict:
    """C2 from the pooled ECE ``gap`` (fine-tuned − graft; positive: the graft is better
    calibrated) and the relative ``reduction``. Reproduced: the gap is above zero and the
    reduction ≥ 40%; partly: the gap is above zero, the reduction below 40%; not
    reproduced: no difference or the graft is worse; not tested: nothing to compare."""
    if reduction is None or gap is None:
        return Verdict("C2", "not tested", ("no graft and fine-tuned model to compare",))
    reasons = (f"ECE fine-tuned − graft {gap.fmt('+.3f')}"
               + (" (no difference)" if gap.sign == 0 else ""),
               f"relative ECE reduction {reduction.fmt('.0%')} (the paper: 40-90%)")
    verdict = ("reproduced" if gap.sign > 0 and reduction.estimate >= ECE_REDUCTION
               else "partly reproduced" if gap.sign > 0 else "not reproduced")
    return Verdict("C2", verdict, reasons)


def c3_ood(overall: Interval | None, per_target: dict[str, Interval]) -> Verdict:
    """C3 from graft − fine-tuned accuracy intervals out of distribution: ``overall`` (all
    OOD targets pooled) and ``per_target``. Reproduced: the overall gap is above zero;
    partly: it is not, but the graft is ahead on some target; not reproduced: no target where
    the graft is ahead; not tested: no OOD target."""
    if overall is None or not per_target:
        return Verdict("C3", "not tested", ("no out-of-distribution target to evaluate",))
    ahead = sorted(t for t, i in per_target.items() if i.sign > 0)
    behind = sorted(t for t, i in per_target.items() if i.sign < 0)
    reasons = (f"graft − fine-tuned accuracy over all OOD targets {overall.fmt('+.1f', 100, ' pt')}",
               f"graft ahead on {len(ahead)} of {len(per_target)} target(s){': ' + ', '.join(ahead) if ahead else ''}; "
               f"behind on {len(behind)}{': ' + ', '.join(behind) if behind else ''}; no difference on the rest")
    verdict = ("reproduced" if overall.sign > 0 else "partly reproduced" if ahead else "not reproduced")
    return Verdict("C3", verdict, reasons)


def c4_disjoint(mean_overlap: float | None, random_overlap: float, rho: float, pairs: int) -> Verdict:
    """C4 from the mean asymmetric overlap of the task regions, the overlap expected of random
    masks of their sizes, and the rank correlation ρ of overlap with task similarity (over
    ``pairs`` task pairs). Reproduced: mean overlap < 10% and ρ > 0; partly: < 10% only;
    not reproduced: ≥ 10%; not tested: fewer than two tasks."""
    if mean_overlap is None or pairs < 1 or not np.isfinite(mean_overlap):
        return Verdict("C4", "not tested", ("fewer than two task regions",))
    reasons = (f"mean overlap of two regions {mean_overlap:.1%} (random masks of the same sizes: "
               f"{random_overlap:.3%}); 'almost disjoint' here means below {DISJOINT:.0%}",
               f"Spearman rho of overlap with task similarity {rho:+.2f} over {pairs} pair(s)")
    verdict = ("reproduced" if mean_overlap < DISJOINT and rho > 0
               else "partly reproduced" if mean_overlap < DISJOINT else "not reproduced")
    return Verdict("C4", verdict, reasons)


def c5_continual(bwt_gap: Interval | None, accuracy_gap_: Interval | None) -> Verdict:
    """C5 from graft − sequential intervals of backward transfer (``bwt_gap``) and of final
    average accuracy. Reproduced: the graft forgets less (BWT gap above zero) and its final
    average accuracy is no lower (gap not below zero); partly: it forgets less but ends lower;
    not reproduced: no difference in forgetting, or more; not tested: a one-task sequence."""
    if bwt_gap is None or accuracy_gap_ is None:
        return Verdict("C5", "not tested", ("a sequence of one task has no earlier task to forget",))
    reasons = (f"backward transfer, graft − sequential {bwt_gap.fmt('+.1f', 100, ' pt')}",
               f"final average accuracy, graft − sequential {accuracy_gap_.fmt('+.1f', 100, ' pt')}")
    verdict = ("reproduced" if bwt_gap.sign > 0 and accuracy_gap_.sign >= 0
               else "partly reproduced" if bwt_gap.sign > 0 else "not reproduced")
    return Verdict("C5", verdict, reasons)
