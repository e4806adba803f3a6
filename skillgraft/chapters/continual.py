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

__all__ = ["forgetting", "BY_CONSTRUCTION", "CONTINUAL_METHODS", "Continual", "run", "continual", "continual_many", "evaluated", "intervals", "pooled_intervals", "pooled_forgetting",
           "name", "verdict", "rule", "rule_across", "merged", "by_sequence", "forest", "robustness", "earlier_rule", "caveats", "evidence", "reading"]

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


def _unit(result: Continual, method: str) -> tuple[list, np.ndarray] | None:
    """One sequence's groups, one per seed, aligned on the test examples of its tasks one after another: whether
    each example is right under ``method`` after the last stage and just after its own stage, and the same for
    sequential fine-tuning; with the task of each example (the strata). None for a one-task sequence."""
    T = len(_sequence(result))
    if T < 2:
        return None
    p = lambda seed, m, t, j: result.probs.get(seed=seed, method=m, stage=t, task=j).probs
    labels = lambda seed, j: result.probs.get(seed=seed, method="sequential", stage=j, task=j).labels
    groups = []
    for seed in sorted(result.probs.values("seed")):
        # each task's predictions scored first (verdicts.correctness): the tasks of a sequence differ in classes
        groups.append(pooled([verdicts.correctness((p(seed, method, T - 1, j), p(seed, method, j, j),
                                                    p(seed, "sequential", T - 1, j), p(seed, "sequential", j, j),
                                                    labels(seed, j))) for j in range(T)]))
    first = sorted(result.probs.values("seed"))[0]
    strata = np.concatenate([np.full(len(labels(first, j)), j) for j in range(T)])
    return [(*g, strata) for g in groups], strata


def _c5_stat(groups: list[tuple]) -> list[float]:
    """One sequence's estimands, per seed then averaged over seeds, from the per-task accuracies R[t, j]: final
    average accuracy gap mean_j (R_m[T, j] − R_seq[T, j]) over all tasks; backward transfer gap mean_{j<T}
    ((R_m[T, j] − R_m[j, j]) − (R_seq[T, j] − R_seq[j, j])); forgetting of sequential fine-tuning mean_{j<T}
    (R_seq[j, j] − R_seq[T, j])."""
    strata = groups[0][4]
    tasks = np.unique(strata)
    out = []
    for g in groups:
        acc = np.array([[g[i][strata == j].mean() for j in tasks] for i in range(4)])  # (4 arrays, T tasks)
        m_end, m_own, s_end, s_own = acc
        out.append([float(np.mean(m_end - s_end)), float(np.mean((m_end - m_own)[:-1] - (s_end - s_own)[:-1])),
                    float(np.mean((s_own - s_end)[:-1]))])
    return list(np.mean(out, axis=0))


def _c5_finish(m: np.ndarray) -> dict:
    return {"final": m[0], "bwt": m[1], "forgetting": m[2]}


def _c5(results: list[Continual], method: str, **kw) -> dict | None:
    """The three intervals over ``results`` (sequences held fixed: the verdict is about them; seeds and test
    examples, stratified by task, resampled); None when no sequence has two tasks."""
    units, strata = {}, {}
    for i, r in enumerate(results):  # keyed by position: two results may be of one sequence
        unit = _unit(r, method)
        if unit is not None:
            units[i], strata[i] = unit
    if not units:
        return None
    return verdicts.hierarchical(_c5_stat, units, _c5_finish, strata=strata,
                                 resample_units=len(units) >= verdicts.MIN_UNITS, **kw)


def intervals(result: Continual, method: str = "graft (task known)", **kw) -> tuple:
    """(BWT gap, final average accuracy gap) of ``method`` − sequential, over seeds and test
    examples, for :func:`rule`; (None, None) for a one-task sequence."""
    def compute():
        out = _c5([result], method, **kw)
        return (None, None) if out is None else (out["bwt"], out["final"])
    return verdicts.memo(result, ("c5", method, tuple(sorted(kw.items()))), compute)


def pooled_intervals(results: list[Continual], method: str = "graft (task known)", **kw) -> tuple:
    """The same over several sequences: the mean over sequences of each sequence's estimate."""
    out = _c5(results, method, **kw)
    return (None, None) if out is None else (out["bwt"], out["final"])


def forgetting(result: Continual, method: str = "sequential", **kw) -> Interval | None:
    """How much sequential fine-tuning forgets: the mean over earlier tasks j of R[j, j] − R[T, j] (accuracy on
    task j just after learning it, minus at the end), over seeds and test examples; None for a one-task
    sequence."""
    def compute():
        out = _c5([result], method, **kw)
        return None if out is None else out["forgetting"]
    return verdicts.memo(result, ("c5 forgetting", method, tuple(sorted(kw.items()))), compute)


def pooled_forgetting(results: list[Continual], method: str = "sequential", **kw) -> Interval | None:
    """:func:`forgetting` over several sequences: the mean over sequences."""
    out = _c5(results, method, **kw)
    return None if out is None else out["forgetting"]


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
    return verdicts.verdict_first(pd.DataFrame([dict(sequence=label, families=families([t for r in on for t in _sequence(r)]),
                              seeds=len({s for r in on for s in r.probs.values("seed")}), forgetting=fmt(forgot),
                              backward_transfer_gap=fmt(bwt), final_accuracy_gap=fmt(acc),
                              verdict=rule(bwt, acc, forgot).verdict if counts else verdicts.UNTESTABLE)
                         for label, (bwt, acc, forgot), on, counts in rows]), "sequence")


def forest(results: list[Continual], method: str = "graft (task known)", **kw) -> pd.DataFrame:
    """Graft − sequential final average accuracy by sequence and pooled, for :func:`skillgraft.plots.forest`."""
    per, tested, pool = _judged(results, method, **kw)
    pool = pool if len(tested) > 1 else None
    return verdicts.forest_frame({n: v[1] for n, v in per.items() if v[1] is not None},
                                 {name(r): rule(*per[name(r)]).verdict for r in tested},
                                 pool[1] if pool else None, rule(*pool).verdict if pool else verdicts.UNTESTABLE)


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


def earlier_rule(bwt_gap: Interval | None, accuracy_gap_: Interval | None, forgetting: Interval | None = None) -> str:
    """The rule C5 was judged by before the analysis plan (for the robustness table): holds when the graft
    forgets less (backward transfer gap above zero, which a task-known graft gets by construction) and ends
    no lower; fails when it forgets more, or ends lower while forgetting no less; else inconclusive."""
    if bwt_gap is None or accuracy_gap_ is None:
        return verdicts.UNTESTABLE
    if forgetting is not None and forgetting.sign <= 0:
        return verdicts.UNTESTABLE
    less, lower = verdicts.side(bwt_gap), accuracy_gap_.sign < 0
    return (verdicts.FAILS if less == verdicts.FAILS or (lower and less != verdicts.HOLDS)
            else verdicts.HOLDS if less == verdicts.HOLDS and not lower else verdicts.INCONCLUSIVE)


def _flat(results: list[Continual], method: str, **kw) -> tuple:
    """(BWT gap, final accuracy gap) by the earlier flat scheme: each sequence × seed one independent group,
    the predictions of a sequence's tasks concatenated."""
    bwt, final = [], []
    for r in results:
        unit = _unit(r, method)
        if unit is None:
            continue
        groups, strata = unit
        T = int(strata.max()) + 1
        for g in groups:
            early = strata < T - 1
            bwt.append(tuple(a[early] for a in g[:4]))
            final.append((g[0], g[2]))
    return (verdicts.accuracy_interval(bwt, lambda a, b, c, d: (a - b) - (c - d), scored=True, **kw),
            verdicts.accuracy_gap(final, scored=True, **kw))


def robustness(results: list[Continual], method: str = "graft (task known)", **kw) -> list[dict]:
    """C5 under the primary rule and the reasonable alternatives (:data:`skillgraft.verdicts.ANALYSES`), and under
    the earlier rule on backward transfer (which a task-known graft meets by construction)."""
    per, tested, pool = _judged(results, method, **kw)
    if pool is None:
        return [verdicts.robust_row("C5", "primary", verdicts.UNTESTABLE)]
    bwt, acc, forgot = pool
    flat_bwt, flat_acc = _flat(tested, method, **kw)
    row = verdicts.robust_row
    return [row("C5", "primary", rule(bwt, acc, forgot).verdict, acc,
                estimand="final average accuracy, graft − sequential"),
            row("C5", "point", verdicts.point(acc.estimate), acc),
            row("C5", "majority", verdicts.majority([rule(*per[name(r)]).verdict for r in tested])),
            row("C5", "flat", rule(flat_bwt, flat_acc, forgot).verdict, flat_acc),
            row("C5", "backward transfer", earlier_rule(bwt, acc, forgot), bwt,
                note="the earlier rule: backward transfer first, final accuracy only as a check")]


def _stitched_variant(lab, stages, mspecs, t: int, sparsity: float) -> Variant:
    """All regions of stages 0..t stitched into θ_pre (the stitched delta is zero off the union);
    after the first stage there is one region, and stitching it is grafting it."""
    if t == 0:
        return Variant("stitched", mspecs[0].delta, mspecs[0], sparsity)
    return Variant("stitched", delta=Stitch(tuple(mspecs[:t + 1])), sparsity=sparsity)


BY_CONSTRUCTION = ("a task-known graft answers task j with the graft of stage j, fixed once that stage ends, so its "
                   "own backward transfer is 0 by construction and this gap equals the forgetting of sequential "
                   "fine-tuning: not evidence for C5")


def rule(bwt_gap: Interval | None, accuracy_gap_: Interval | None, forgetting: Interval | None = None,
         method: str = "graft (task known)") -> Verdict:
    """C5 from graft − sequential intervals of final average accuracy (``accuracy_gap_``, the primary estimand: the
    mean accuracy over the sequence's tasks after its last stage) and of backward transfer (``bwt_gap``, reported,
    not judged: for a task-known graft it holds by construction). Holds when the final accuracy gap's interval is
    above zero, fails when below, else inconclusive. Not testable here for a one-task sequence, or when
    ``forgetting`` (sequential fine-tuning's, if given) is not above zero: there was nothing to help with."""
    if bwt_gap is None or accuracy_gap_ is None:
        return Verdict("C5", verdicts.UNTESTABLE, ("a sequence of one task has no earlier task to forget",))
    reasons = [f"final average accuracy, graft − sequential {accuracy_gap_.fmt('+.1f', 100, ' pt')}: "
               f"{verdicts.side(accuracy_gap_)}",
               f"backward transfer, graft − sequential {bwt_gap.fmt('+.1f', 100, ' pt')}"
               + (f" ({BY_CONSTRUCTION})" if method == "graft (task known)" else "")]
    blocked = verdicts.no_room("C5", reasons, forgetting, "forgetting of plain sequential fine-tuning",
                               "sequential fine-tuning forgot nothing measurable, so there was no forgetting for a graft to reduce")
    return blocked or Verdict("C5", verdicts.side(accuracy_gap_), tuple(reasons))


def scope(sequences: list[list[str]], seeds: list[int]) -> str:
    """C5's evidence in a few words: sequences, their tasks and families, seeds."""
    from .common import scope as _scope

    tasks = [t for q in sequences for t in q]
    return _scope(tasks, seeds, f"{len(sequences)} sequence{'s' * (len(sequences) != 1)} of "
                                f"{len(dict.fromkeys(tasks))} tasks")


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
