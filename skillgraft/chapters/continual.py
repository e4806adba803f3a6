"""Chapter 05, claim C5: grafting keeps earlier skills in continual learning.

Learn a sequence of tasks one after another; compare plain sequential fine-tuning with
grafts of each stage's own update (task known) and with their stitched union (task
unknown). The verdict rule is fixed here and unit-tested.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as mt
from .. import verdicts
from ..lab import Variant
from ..models import num_graftable
from ..recipes import Difference, Stitch
from ..verdicts import Interval, Verdict
from .common import Setting, caveats, difference_words, families, fine_tune_regime, graft_regime, pooled, evidence
from .predictions import Predictions

__all__ = ["forgetting", "CONTINUAL_METHODS", "Continual", "run", "continual", "continual_many", "evaluated", "intervals", "pooled_intervals", "pooled_forgetting",
           "name", "verdict", "rule", "rule_across", "merged", "by_sequence", "forest", "caveats", "evidence", "reading"]

FIELDS = ("seed", "method", "stage", "task")  # what names a prediction: stage t and task j, counted from 0


def run(p: dict, setting: Setting | None = None) -> list["Continual"]:
    """The chapter from its notebook's parameters (as the notebook calls it): one result per sequence."""
    return continual_many(p["sequences"], p["seeds"], p["claim_sparsity"], setting or Setting.from_params(**p),
                          with_multitask=p["with_multitask"])


def continual_many(sequences: list[list[str]], seeds: list[int], sparsity: float, setting: Setting,
                   with_multitask: bool = False) -> list["Continual"]:
    """:func:`continual` for each of ``sequences``."""
    return [continual(q, seeds, sparsity, setting, with_multitask=with_multitask) for q in sequences]


# ---------------------------------------------------------------------------- 05: continual learning
CONTINUAL_METHODS = ("sequential", "graft (task known)", "stitched")


@dataclass
class Continual:
    matrices: dict            # method -> accuracy matrix R (after stage t, on task j), mean over seeds
    summary: pd.DataFrame     # method, average_accuracy, backward_transfer, forgetting (means over seeds)
    regions: pd.DataFrame     # seed, stage, task, region size, sparsity
    per_seed: pd.DataFrame = None  # seed, method, average_accuracy, backward_transfer, forgetting
    probs: Predictions = field(default_factory=lambda: Predictions(*FIELDS))  # test-set predictions, by FIELDS
    regime: pd.DataFrame = None    # fine_tune_regime of the stages
    grafts: pd.DataFrame = None    # graft_regime of the stage grafts


def continual(sequence: list[str], seeds: list[int] | int, sparsity: float, setting: Setting,
              with_multitask: bool = False) -> Continual:
    """Learn ``sequence`` one task after another, for each data seed; compare ways to keep
    earlier skills.

    - sequential: plain fine-tuning, stage after stage (θ_t);
    - graft (task known): stage t's region is localized on θ_t vs θ_{t−1} with task t's
      data; task j is answered by θ_pre + γ_j ⊙ (θ_j − θ_{j−1}), the graft of its own stage;
    - stitched (task unknown): all regions learned so far merged into one model,
      overlaps averaged (Localize-and-Stitch);
    - multitask (``with_multitask``): one model fine-tuned on all tasks at once, a reference.
    """
    lab = setting.lab()
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    T, total = len(sequence), num_graftable(lab.lm.model)
    idx = pd.Index(range(1, T + 1), name="after stage")
    cols = pd.Index(sequence, name="task")
    methods = CONTINUAL_METHODS + (("multitask",) if with_multitask else ())
    per_seed_R, kept, regions, dspecs, gspecs = {m: [] for m in methods}, Predictions(*FIELDS), [], [], []
    for seed in seeds:
        stages = [lab.fine_tune(sequence, setting.k, seed, setting.finetune, mode="sequential", stage=t)
                  for t in range(T)]
        mspecs = []
        for t, task in enumerate(sequence):
            # the stage's own update θ_t − θ_{t−1}, localized on top of θ_{t−1} (stage 0: the single-task graft)
            own = Difference(stages[t], stages[t - 1]) if t else stages[0]
            mspecs.append(lab.graft(own, task, sparsity, setting.graft, base=stages[t - 1] if t else None,
                                    k=setting.k, seed=seed))
            dspecs.append((dict(seed=seed, stage=t + 1, task=task), stages[t]))
            gspecs.append((dict(seed=seed, stage=t + 1, task=task), mspecs[-1]))
        R = {m: pd.DataFrame(np.nan, index=idx, columns=cols) for m in CONTINUAL_METHODS}

        def record(method, t, j, task, variant):
            pred = lab.predict(task, variant)
            kept.add(pred, seed=seed, method=method, stage=t, task=j)
            R[method].iloc[t, j] = mt.accuracy(*pred)

        for t in range(T):
            stitched = _stitched_variant(lab, stages, mspecs, t, sparsity)
            for j, task in enumerate(sequence):
                if not evaluated(t, j, T):
                    continue
                record("sequential", t, j, task, Variant("sequential", delta=stages[t]))
                record("stitched", t, j, task, stitched)
                if j <= t:
                    record("graft (task known)", t, j, task,
                           Variant("graft", mspecs[j].delta, mspecs[j], sparsity))
        if with_multitask:
            multi = lab.fine_tune(sequence, setting.k, seed, setting.finetune, mode="multitask")
            R["multitask"] = pd.DataFrame([[mt.accuracy(*lab.predict(task, Variant("multitask", delta=multi)))
                                            for task in sequence]], index=pd.Index([T], name="after stage"),
                                          columns=cols)
        for m in methods:
            per_seed_R[m].append(R[m])
        for t, (task, spec) in enumerate(zip(sequence, mspecs)):
            n = lab.mask_count(spec)
            regions.append(dict(seed=seed, stage=t + 1, task=task, region_size=n, sparsity=n / total))
    rows = [dict(seed=seed, method=m, average_accuracy=float(r.iloc[-1].mean()),  # mean of the final row
                 backward_transfer=mt.backward_transfer(r) if len(r) > 1 else np.nan,
                 forgetting=mt.forgetting(r) if len(r) > 1 else np.nan)
            for m in methods for seed, r in zip(seeds, per_seed_R[m])]
    per_seed = pd.DataFrame(rows)
    summary = per_seed.groupby("method", sort=False, as_index=False)[
        ["average_accuracy", "backward_transfer", "forgetting"]].mean()
    matrices = {m: sum(rs) / len(rs) for m, rs in per_seed_R.items()}
    return Continual(matrices, summary, pd.DataFrame(regions), per_seed, kept,
                     fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs))


def evaluated(t: int, j: int, T: int) -> bool:
    """Whether entry R[t, j] of a T-stage sequence is evaluated: on or below the diagonal (a task
    learned by stage t), or above it where forgetting reads it (a task not yet learned, before the
    last stage: t < j ≤ T − 2, Chaudhry et al.'s maximum over the stages before the last). The rest
    feeds no metric; with two tasks that is the one entry above the diagonal."""
    return j <= t or j <= T - 2


def _sequence(result: Continual) -> list[str]:
    return list(next(iter(result.matrices.values())).columns)


def name(result: Continual) -> str:
    """The sequence as its reader writes it: mr → trec → sms."""
    return " → ".join(_sequence(result))


def _groups(result: Continual, method: str) -> tuple[list, list]:
    """Per seed, the bootstrap groups of (backward transfer, final average accuracy) of ``method``
    against sequential fine-tuning; empty for a one-task sequence."""
    T = len(_sequence(result))
    seeds = sorted(result.probs.values("seed"))
    if T < 2:
        return [], []
    p = lambda seed, m, t, j: result.probs.get(seed=seed, method=m, stage=t, task=j).probs
    labels = lambda seed, j: result.probs.get(seed=seed, method="sequential", stage=j, task=j).labels
    bwt, final = [], []
    for seed in seeds:
        # BWT = mean over j < T of R[T, j] − R[j, j]; test sets of equal size, so pooling is the mean.
        # Each task's predictions are scored first (verdicts.correctness): tasks of a sequence differ in classes.
        bwt.append(pooled([verdicts.correctness((p(seed, method, T - 1, j), p(seed, method, j, j),
                                                 p(seed, "sequential", T - 1, j), p(seed, "sequential", j, j),
                                                 labels(seed, j))) for j in range(T - 1)]))
        final.append(pooled([verdicts.correctness((p(seed, method, T - 1, j), p(seed, "sequential", T - 1, j),
                                                   labels(seed, j))) for j in range(T)]))
    return bwt, final


def _interval_pair(bwt: list, final: list, **kw) -> tuple:
    if not bwt:
        return None, None
    return (verdicts.accuracy_interval(bwt, lambda a, b, c, d: (a - b) - (c - d), scored=True, **kw),
            verdicts.accuracy_gap(final, scored=True, **kw))


def intervals(result: Continual, method: str = "graft (task known)", **kw) -> tuple:
    """(BWT gap, final average accuracy gap) of ``method`` − sequential, over seeds and test
    examples, for :func:`rule`; (None, None) for a one-task sequence."""
    return verdicts.memo(result, ("c5", method, tuple(sorted(kw.items()))),
                         lambda: _interval_pair(*_groups(result, method), **kw))


def pooled_intervals(results: list[Continual], method: str = "graft (task known)", **kw) -> tuple:
    """The same over several sequences pooled (each sequence × seed one bootstrap group)."""
    parts = [_groups(r, method) for r in results]
    return _interval_pair([g for b, _ in parts for g in b], [g for _, f in parts for g in f], **kw)


def _forgetting_groups(result: Continual, method: str) -> list:
    T = len(_sequence(result))
    if T < 2:
        return []
    p = lambda seed, t, j: result.probs.get(seed=seed, method=method, stage=t, task=j)
    return [pooled([verdicts.correctness((p(seed, j, j).probs, p(seed, T - 1, j).probs, p(seed, j, j).labels))
                    for j in range(T - 1)]) for seed in sorted(result.probs.values("seed"))]


def forgetting(result: Continual, method: str = "sequential", **kw) -> Interval | None:
    """How much ``method`` forgets: the mean over earlier tasks j of R[j, j] − R[T, j] (accuracy on
    task j just after learning it, minus at the end), over seeds and test examples; None for a
    one-task sequence."""
    def compute():
        groups = _forgetting_groups(result, method)
        return verdicts.accuracy_gap(groups, scored=True, **kw) if groups else None
    return verdicts.memo(result, ("c5 forgetting", method, tuple(sorted(kw.items()))), compute)


def pooled_forgetting(results: list[Continual], method: str = "sequential", **kw) -> Interval | None:
    """:func:`forgetting` over several sequences pooled (each sequence × seed one bootstrap group)."""
    groups = [g for r in results for g in _forgetting_groups(r, method)]
    return verdicts.accuracy_gap(groups, scored=True, **kw) if groups else None


def _judged(results: list[Continual], method: str, **kw) -> tuple[dict, list, tuple | None]:
    """Per sequence (BWT gap, accuracy gap, forgetting); the sequences that test C5 (sequential
    fine-tuning forgot); the same three intervals pooled over those (None without one)."""
    per = {name(r): (*intervals(r, method, **kw), forgetting(r, **kw)) for r in results}
    tested = [r for r in results if per[name(r)][2] is not None and per[name(r)][2].sign > 0]
    if not tested:
        return per, tested, None
    key = ("c5 pooled", method, tuple(name(r) for r in tested), tuple(sorted(kw.items())))
    pool = verdicts.memo(tested[0], key, lambda: (*pooled_intervals(tested, method, **kw),
                                                  pooled_forgetting(tested, **kw)))
    return per, tested, pool


def verdict(results: list[Continual], method: str = "graft (task known)", **kw) -> Verdict:
    """C5 sequence by sequence and pooled over the sequences that test it (:func:`rule_across`)."""
    per, _, pool = _judged(results, method, **kw)
    return rule_across(per, pool)


def merged(results: list[Continual]) -> Continual:
    """Several sequences' results as one, for the tables: every frame with a ``sequence`` column first,
    the matrices keyed "sequence: method" (no predictions: intervals read each sequence's own result)."""
    def cat(frames, names):
        frames = [f.assign(sequence=n) for f, n in zip(frames, names) if f is not None]
        out = pd.concat(frames, ignore_index=True)
        return out[["sequence"] + [c for c in out.columns if c != "sequence"]]
    names = [name(r) for r in results]
    return Continual({f"{n}: {m}": R for n, r in zip(names, results) for m, R in r.matrices.items()},
                     cat([r.summary for r in results], names), cat([r.regions for r in results], names),
                     cat([r.per_seed for r in results], names), Predictions(*FIELDS),
                     cat([r.regime for r in results], names), cat([r.grafts for r in results], names))


def by_sequence(results: list[Continual], method: str = "graft (task known)", **kw) -> pd.DataFrame:
    """One row per sequence and one pooled over those that test C5: the evidence (families crossed,
    seeds), the forgetting of sequential fine-tuning, graft − sequential backward transfer and final
    average accuracy, and the verdict."""
    per, tested, pool = _judged(results, method, **kw)
    rows = [(name(r), per[name(r)], [r], any(r is t for t in tested)) for r in results]
    if len(tested) > 1:
        rows.append(("pooled", pool, tested, True))
    fmt = lambda i: i.cell("+.1f", 100, " pt") if i is not None else "—"
    return pd.DataFrame([dict(sequence=label, families=families([t for r in on for t in _sequence(r)]),
                              seeds=len({s for r in on for s in r.probs.values("seed")}), forgetting=fmt(forgot),
                              backward_transfer_gap=fmt(bwt), final_accuracy_gap=fmt(acc),
                              verdict=rule(bwt, acc, forgot).verdict if counts else verdicts.UNTESTABLE)
                         for label, (bwt, acc, forgot), on, counts in rows])


def forest(results: list[Continual], method: str = "graft (task known)", **kw) -> pd.DataFrame:
    """Graft − sequential backward transfer by sequence and pooled, for :func:`skillgraft.plots.forest`."""
    per, tested, pool = _judged(results, method, **kw)
    pool = pool if len(tested) > 1 else None
    return verdicts.forest_frame({n: v[0] for n, v in per.items() if v[0] is not None},
                                 {name(r): rule(*per[name(r)]).verdict for r in tested},
                                 pool[0] if pool else None, rule(*pool).verdict if pool else verdicts.UNTESTABLE)


def rule_across(per_sequence: dict[str, tuple], pooled: tuple | None) -> Verdict:
    """C5 over several sequences: :func:`rule` on the intervals pooled over the sequences in which
    plain sequential fine-tuning forgot (``pooled``: BWT gap, accuracy gap, forgetting), each such
    sequence's :func:`rule` tallied beside it (:func:`skillgraft.verdicts.across`); a sequence with
    nothing forgotten (or of one task) tests nothing, and is named."""
    names = [n for n, (_, _, f) in per_sequence.items() if f is not None and f.sign > 0]
    untested = {n: "a sequence of one task" if per_sequence[n][2] is None
                else "sequential fine-tuning forgot nothing measurable" for n in per_sequence if n not in names}
    return verdicts.across("C5", rule(*pooled) if names else None, {n: rule(*per_sequence[n]) for n in names},
                           untested, unit="sequence")


def _stitched_variant(lab, stages, mspecs, t: int, sparsity: float) -> Variant:
    """All regions of stages 0..t stitched into θ_pre (the stitched delta is zero off the union);
    after the first stage there is one region, and stitching it is grafting it."""
    if t == 0:
        return Variant("stitched", mspecs[0].delta, mspecs[0], sparsity)
    return Variant("stitched", delta=Stitch(tuple(mspecs[:t + 1])), sparsity=sparsity)


def rule(bwt_gap: Interval | None, accuracy_gap_: Interval | None, forgetting: Interval | None = None) -> Verdict:
    """C5 from graft − sequential intervals of backward transfer (``bwt_gap``) and of final
    average accuracy. Holds when the graft forgets less (BWT gap above zero) and ends no lower
    (accuracy gap not below zero); fails when it forgets more (BWT gap below zero) or ends lower
    while forgetting no less; else inconclusive. Not testable here for a one-task sequence, or
    when ``forgetting`` (the sequential model's, if given) is not above zero: there was nothing
    to forget less of."""
    if bwt_gap is None or accuracy_gap_ is None:
        return Verdict("C5", verdicts.UNTESTABLE, ("a sequence of one task has no earlier task to forget",))
    reasons = [f"backward transfer, graft − sequential {bwt_gap.fmt('+.1f', 100, ' pt')}",
               f"final average accuracy, graft − sequential {accuracy_gap_.fmt('+.1f', 100, ' pt')}"]
    blocked = verdicts.no_room("C5", reasons, forgetting, "forgetting of plain sequential fine-tuning",
                               "sequential fine-tuning forgot nothing measurable, so there was no forgetting for a graft to reduce")
    if blocked:
        return blocked
    less = verdicts.side(bwt_gap)
    lower = accuracy_gap_.sign < 0
    verdict = (verdicts.FAILS if less == verdicts.FAILS or (lower and less != verdicts.HOLDS)
               else verdicts.HOLDS if less == verdicts.HOLDS and not lower else verdicts.INCONCLUSIVE)
    return Verdict("C5", verdict, tuple(reasons))


def reading(result: Continual, forgetting_: Interval | None) -> str:
    """The chapter's result in words written from ``result``: how much plain sequential
    fine-tuning forgot, each method's backward transfer and final accuracy, the regions' sizes."""
    if forgetting_ is None:
        return "A sequence of one task: nothing to forget."
    s = result.summary.set_index("method")
    seq = list(next(iter(result.matrices.values())).columns)
    methods = "; ".join(f"{m}: backward transfer {100 * r.backward_transfer:+.1f} points, final average accuracy "
                        f"{r.average_accuracy:.1%}" for m, r in s.iterrows())
    r = result.regions
    return (f"**Reading the result.** Learning {' → '.join(seq)} in turn, plain sequential fine-tuning forgot "
            f"{forgetting_.fmt('+.1f', 100, ' points')} of the earlier tasks' accuracy: "
            + difference_words(forgetting_, "there was forgetting for a graft to reduce",
                               "it gained on them, so there was nothing to protect")
            + f". Means over seeds: {methods}. The task-known grafts hold "
              f"{r.region_size.min():,}–{r.region_size.max():,} entries per stage (the regions table).")
