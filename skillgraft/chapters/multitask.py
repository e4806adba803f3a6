"""Chapter 04, claim C4: the regions of different tasks are almost disjoint.

One model fine-tuned on all tasks at once; a region per task; how they overlap, and
whether overlap follows task similarity. The verdict rule and its threshold are fixed
here and unit-tested.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics as mt
from .. import verdicts
from ..lab import Variant
from ..localization import GraftConfig
from ..recipes import Similarity
from ..verdicts import Verdict
from .common import Setting, caveats, fine_tune_regime, graft_regime, evidence

__all__ = ["DISJOINT", "MIN_PAIRS", "MultiTask", "run", "multitask", "mean_overlap", "pair_overlaps", "permutation_pvalue",
           "overlap_summary", "verdict", "rule", "robustness", "caveats", "evidence", "reading"]


DISJOINT = 0.10        # "almost disjoint": mean asymmetric overlap of two task regions below 10%
MIN_PAIRS = 6          # task pairs a rank correlation needs before it can say anything (p < 0.05 needs ρ ≥ 0.89 at 6)


def run(p: dict, setting: Setting | None = None) -> "MultiTask":
    """The chapter from its notebook's parameters (as the notebook calls it)."""
    return multitask(p["tasks"], p["seed"], p["claim_sparsity"], setting or Setting.from_params(**p),
                     compare_bases=p["compare_bases"])


@dataclass
class MultiTask:
    masks: dict                 # task -> Mask localized on the multi-task model with that task's data
    overlap: pd.DataFrame       # asymmetric |γ_i ∩ γ_j| / |γ_j|
    jaccard: pd.DataFrame
    random_overlap: pd.DataFrame  # the same, expected for random masks of the same sizes
    cross_graft: pd.DataFrame   # rows: region of task i grafted; columns: accuracy on task j
    accuracy: pd.DataFrame      # per task: zero-shot, multi-task model, own region, single-task fine-tuned
    similarity: pd.DataFrame    # pair, kind, similarity (cosine of single-task deltas), overlap, jaccard
    alt_base: str = ""          # the other way to choose the base patch (GraftConfig.base), for comparison
    alt_overlap: pd.DataFrame | None = None  # asymmetric overlap of the regions localized from that base
    regime: pd.DataFrame | None = None       # fine_tune_regime: the multi-task model and the single-task ones
    grafts: pd.DataFrame | None = None       # graft_regime of the regions
    single_overlap: pd.DataFrame | None = None  # asymmetric overlap of the grafts of the single-task models (chapter 01's)


def multitask(tasks: list[str], seed: int, sparsity: float, setting: Setting,
              compare_bases: bool = False) -> MultiTask:
    """One model fine-tuned on all ``tasks`` at once; a region per task; how they overlap.

    Regions are localized from ``setting.graft.base``. With ``compare_bases``, the regions from
    the other base patch are localized too, for their overlap (``alt_overlap``): with one δ
    shared by all tasks, the official top-movement base patch is the same for every task.
    """
    from ..tasks import get_task

    lab = setting.lab()
    mt_spec = lab.fine_tune(tasks, setting.k, seed, setting.finetune, mode="multitask")
    regions = {t: lab.graft(mt_spec, t, sparsity, setting.graft) for t in tasks}
    masks = {t: lab.mask(spec) for t, spec in regions.items()}
    overlap, jac = mt.overlap_matrix(masks, "asymmetric"), mt.overlap_matrix(masks, "jaccard")
    total = next(iter(masks.values())).total
    sizes = {t: m.count for t, m in masks.items()}
    rnd = mt.random_overlap_matrix(sizes, total, "asymmetric")
    cross = pd.DataFrame(index=pd.Index(tasks, name="region of"), columns=pd.Index(tasks, name="evaluated on"),
                         dtype=float)
    acc_rows = []
    for i in tasks:
        for j in tasks:
            cross.loc[i, j] = mt.accuracy(*lab.predict(j, Variant("graft", mt_spec, regions[i], sparsity)))
    single = {t: lab.fine_tune(t, setting.k, seed, setting.finetune) for t in tasks}
    for t in tasks:
        acc_rows.append(dict(task=t, family=get_task(t).family,
                             zero_shot=mt.accuracy(*lab.predict(t, Variant("zero-shot"))),
                             multitask=mt.accuracy(*lab.predict(t, Variant("multitask", delta=mt_spec))),
                             own_region=cross.loc[t, t],
                             single_task=mt.accuracy(*lab.predict(t, Variant("fine-tuned", delta=single[t]))),
                             region_size=sizes[t]))
    sim_rows = []
    for a, b in itertools.combinations(tasks, 2):
        fa, fb = get_task(a).family, get_task(b).family
        sim_rows.append(dict(pair=f"{a}–{b}", kind="–".join(sorted((fa, fb))),
                             similarity=lab.resolve(Similarity(single[a], single[b])),
                             overlap=(overlap.loc[a, b] + overlap.loc[b, a]) / 2, jaccard=jac.loc[a, b]))
    out = MultiTask(masks, overlap, jac, rnd, cross.astype(float), pd.DataFrame(acc_rows), pd.DataFrame(sim_rows))
    out.regime = fine_tune_regime(lab, [(dict(model="multi-task", task=", ".join(tasks)), mt_spec)]
                                  + [(dict(model="single-task", task=t), single[t]) for t in tasks])
    out.grafts = graft_regime(lab, [(dict(task=t), spec) for t, spec in regions.items()])
    # the same tasks' grafts on their own single-task models, as chapter 01 localizes them (its default base patch):
    # how much two tasks' regions overlap when no δ is shared
    own = dataclasses.replace(setting.graft, base=GraftConfig().base)
    out.single_overlap = mt.overlap_matrix({t: lab.mask(lab.graft(single[t], t, sparsity, own)) for t in tasks},
                                           "asymmetric")
    if compare_bases:  # the same regions localized from the other base patch: overlaps only (no evaluations)
        out.alt_base = "movement" if setting.graft.base == "gradient" else "gradient"
        alt_cfg = dataclasses.replace(setting.graft, base=out.alt_base)
        alt = {t: lab.mask(lab.graft(mt_spec, t, sparsity, alt_cfg)) for t in tasks}
        out.alt_overlap = mt.overlap_matrix(alt, "asymmetric")
    return out




def mean_overlap(matrix: pd.DataFrame) -> float | None:
    """The mean off-diagonal entry of an overlap matrix (None with fewer than two tasks)."""
    off = ~np.eye(len(matrix), dtype=bool)
    return float(matrix.values[off].mean()) if off.any() else None


def pair_overlaps(matrix: pd.DataFrame) -> dict[tuple[str, str], float]:
    """Each unordered task pair's overlap: the mean of its two directions of an asymmetric overlap matrix."""
    names = list(matrix.index)
    return {(a, b): float((matrix.loc[a, b] + matrix.loc[b, a]) / 2) for a, b in itertools.combinations(names, 2)}


def permutation_pvalue(similarity: dict[tuple[str, str], float], overlap: dict[tuple[str, str], float],
                       limit: int = 40320, seed: int = 0) -> tuple[float, float]:
    """Spearman's ρ of pair overlap with pair similarity, and its two-sided p-value from a permutation over task
    relabelings: the similarity matrix's tasks are relabeled (every permutation up to ``limit``, else that many
    drawn) and ρ recomputed, so the 15 pairs of six tasks, which share tasks, are not counted as independent."""
    pairs = list(overlap)
    tasks = sorted({t for p in pairs for t in p})
    sim = lambda a, b: similarity[(a, b)] if (a, b) in similarity else similarity[(b, a)]
    y = np.array([overlap[p] for p in pairs])
    rho = mt.rank_correlation([sim(*p) for p in pairs], y).rho
    if len(tasks) < 3:
        return rho, float("nan")
    perms = (list(itertools.permutations(range(len(tasks)))) if math.factorial(len(tasks)) <= limit else
             [tuple(np.random.default_rng(seed + i).permutation(len(tasks))) for i in range(limit)])
    index = {t: i for i, t in enumerate(tasks)}
    count = 0
    for perm in perms:
        x = [sim(tasks[perm[index[a]]], tasks[perm[index[b]]]) for a, b in pairs]
        count += abs(mt.rank_correlation(x, y).rho) >= abs(rho) - 1e-12
    return rho, count / len(perms)


def overlap_summary(result: MultiTask) -> dict:
    """What C4 is judged on: the mean off-diagonal asymmetric overlap of the regions, the same
    expected of random masks of their sizes and of the single-task models' grafts, the rank
    correlation of a pair's overlap with the similarity of its tasks and its permutation p-value
    (over task relabelings: :func:`permutation_pvalue`), and the earlier p-value that counts the
    pairs as independent (``parametric_p``)."""
    sim, rnd = result.similarity, mean_overlap(result.random_overlap)
    single = getattr(result, "single_overlap", None)
    out = {"mean_overlap": mean_overlap(result.overlap), "random_overlap": float("nan") if rnd is None else rnd,
           "single_overlap": mean_overlap(single) if single is not None else None,
           "rho": mt.rank_correlation(sim.similarity, sim.overlap) if len(sim) else None, "pairs": len(sim),
           "pvalue": float("nan")}
    if out["rho"] is not None and "pair" in sim and len(sim) >= 3:
        names = list(result.overlap.index)
        by_pair = {tuple(p.split("–")): v for p, v in zip(sim.pair, sim.similarity)}
        if all(a in names and b in names for a, b in by_pair):
            _, out["pvalue"] = permutation_pvalue(by_pair, pair_overlaps(result.overlap))
    return out


def verdict(result: MultiTask) -> Verdict:
    """C4 on a chapter's result (:func:`overlap_summary`, then :func:`rule`; ρ judged on its permutation
    p-value)."""
    s = overlap_summary(result)
    rho = s["rho"]
    return rule(s["mean_overlap"], s["random_overlap"], rho.rho if rho is not None else float("nan"), s["pairs"],
                s["pvalue"], s["single_overlap"])


def rule(mean_overlap: float | None, random_overlap: float, rho: float, pairs: int,
         pvalue: float = float("nan"), single_overlap: float | None = None) -> Verdict:
    """C4 from the mean asymmetric overlap of the task regions, the overlap expected of random
    masks of their sizes, and the rank correlation ρ of overlap with task similarity (over
    ``pairs`` task pairs, two-sided ``pvalue`` from a permutation over task relabelings). Two parts,
    both needed: disjointness holds when the mean overlap is below 10% and fails otherwise; overlap
    tracks similarity holds when ρ > 0 at p < 0.05 over at least MIN_PAIRS pairs, fails when ρ < 0
    at p < 0.05, else is inconclusive. ``single_overlap``, the mean overlap of the single-task
    models' grafts, is reported beside it. Not testable here with fewer than two tasks."""
    if mean_overlap is None or pairs < 1 or not np.isfinite(mean_overlap):
        return Verdict("C4", verdicts.UNTESTABLE, ("fewer than two task regions",))
    disjoint = verdicts.HOLDS if mean_overlap < DISJOINT else verdicts.FAILS
    significant = pairs >= MIN_PAIRS and np.isfinite(pvalue) and pvalue < 0.05
    tracks = (verdicts.INCONCLUSIVE if not significant else verdicts.HOLDS if rho > 0 else verdicts.FAILS)
    p_text = "" if not np.isfinite(pvalue) else (", p < 0.001" if pvalue < 0.001 else f", p = {pvalue:.3f}")
    reasons = (f"mean overlap of two regions {mean_overlap:.1%} (random masks of the same sizes: "
               f"{random_overlap:.3%}" + (f"; the grafts of single-task models: {single_overlap:.1%}"
                                          if single_overlap is not None else "")
               + f"); 'almost disjoint' here means below {DISJOINT:.0%}: {disjoint}",
               f"Spearman rho of overlap with task similarity {rho:+.2f} over {pairs} pair(s)" + p_text
               + (" (permutation over task relabelings)" if p_text else "")
               + (f" (fewer than {MIN_PAIRS} pairs say nothing)" if pairs < MIN_PAIRS else "") + f": {tracks}")
    return Verdict("C4", verdicts.combine([disjoint, tracks]), reasons)


def robustness(result: MultiTask) -> list[dict]:
    """C4 under the primary rule and the alternatives: the point estimates alone, and ρ's earlier p-value, which
    counts the 15 pairs as independent although they share tasks."""
    s = overlap_summary(result)
    rho = s["rho"]
    v = verdict(result)
    row = verdicts.robust_row
    if rho is None:
        return [row("C4", "primary", v.verdict)]
    point = verdicts.combine([verdicts.HOLDS if s["mean_overlap"] < DISJOINT else verdicts.FAILS,
                              verdicts.point(rho.rho)])
    parametric = rule(s["mean_overlap"], s["random_overlap"], rho.rho, s["pairs"], rho.pvalue).verdict
    text = lambda p: "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    return [row("C4", "primary", v.verdict, note=f"ρ {rho.rho:+.2f}, {text(s['pvalue'])} (permutation)",
                estimand=f"mean overlap {s['mean_overlap']:.1%} (one seed, no interval); ρ {rho.rho:+.2f}, "
                         f"{text(s['pvalue'])}"),
            row("C4", "point", point, note=f"mean overlap {s['mean_overlap']:.1%}, ρ {rho.rho:+.2f}"),
            row("C4", "parametric p", parametric,
                note=f"ρ's p-value counting the pairs as independent: {text(rho.pvalue)}")]


def scope(tasks: list[str], seed: int) -> str:
    """C4's evidence in a few words: tasks, pairs, families, the one seed."""
    from .common import scope as _scope

    n = len(dict.fromkeys(tasks))
    return _scope(tasks, [seed], f"{n} tasks ({n * (n - 1) // 2} pairs)")


def reading(result: MultiTask) -> str:
    """The chapter's result in words written from ``result``: the regions' overlap against random
    masks of their sizes, within and across task families, and its rank correlation with task
    similarity; the multi-task model and the regions grafted alone against single-task models."""
    s = overlap_summary(result)
    if s["mean_overlap"] is None:
        return "Fewer than two task regions here."
    sim = result.similarity
    same = sim.kind.map(lambda k: len(set(k.split("–"))) == 1)
    parts = []
    if same.any():
        parts.append(f"{same.sum()} same-family pair(s) {sim.overlap[same].mean():.1%}")
    if (~same).any():
        parts.append(f"{(~same).sum()} cross-family pair(s) {sim.overlap[~same].mean():.1%}")
    rho = s["rho"]
    acc = result.accuracy
    ratio = s["mean_overlap"] / s["random_overlap"] if s["random_overlap"] > 0 else float("inf")
    text = (f"**Reading the result.** Sizes of the regions: {acc.region_size.min():,}–{acc.region_size.max():,} "
            f"entries. One task's region shares on average {s['mean_overlap']:.1%} of another's, "
            f"{ratio:,.0f} times what random masks of the same sizes would share ({s['random_overlap']:.3%}); "
            f"by pair, mean overlap of the two directions: {'; '.join(parts)}. ")
    if rho is not None:
        p = s["pvalue"]
        text += (f"Over the {s['pairs']} pairs, Spearman's ρ of overlap with the similarity of the tasks' single-task "
                 f"deltas is {rho.rho:+.2f} (" + ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")
                 + ", from a permutation over task relabelings, since the pairs share tasks). ")
    if s["single_overlap"] is not None:
        text += (f"The same tasks' grafts on their own single-task models (chapter 01's) share {s['single_overlap']:.1%} "
                 f"of each other on average: no δ is shared there. ")
    text += (f"The multi-task model's accuracy is {acc.multitask.mean():.1%} on average over the tasks, against "
             f"{acc.single_task.mean():.1%} for single-task fine-tunes and {acc.zero_shot.mean():.1%} zero-shot; "
             f"each task's region grafted alone reaches {acc.own_region.mean():.1%}.")
    return text
