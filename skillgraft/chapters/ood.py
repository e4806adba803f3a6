"""Chapter 03, claim C3: grafts transfer out of distribution better than fine-tuned models.

Fine-tune and graft on each source; evaluate on the source's test set and every target's.
The verdict rule is fixed here and unit-tested.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import tasks as tk
from .. import verdicts
from ..verdicts import Interval, Verdict
from .common import Setting, caveats, difference_words, families, fine_tune_regime, graft_regime, three_models, pooled, scores
from .predictions import Predictions

__all__ = ["headroom", "OOD", "run", "ood", "intervals", "rule", "rule_across", "verdict", "by_source", "forest", "robustness", "caveats", "evidence",
           "reading"]

FIELDS = ("source", "target", "seed", "variant")  # what names a prediction (target: the test set)


def run(p: dict, setting: Setting | None = None) -> "OOD":
    """The chapter from its notebook's parameters (as the notebook calls it)."""
    return ood(p["sources"], p["targets"], p["seeds"], p["claim_sparsity"], setting or Setting.from_params(**p))


@dataclass
class OOD:
    results: pd.DataFrame    # source, target, seed, variant, in_distribution, accuracy, ece, brier, nll, confidence
    probs: Predictions = field(default_factory=lambda: Predictions(*FIELDS))  # test-set predictions, by FIELDS
    regime: pd.DataFrame = None  # fine_tune_regime of the sources' fine-tunes
    grafts: pd.DataFrame = None  # graft_regime of their grafts


def same_labels(source: str, target: str) -> bool:
    """Whether ``target`` has ``source``'s classes, in the same order (then the source's prompt can score it)."""
    return tk.get_task(source).class_names == tk.get_task(target).class_names


def ood(sources: list[str], targets: list[str], seeds: list[int], sparsity: float, setting: Setting) -> OOD:
    """Fine-tune and graft on each source; evaluate on the source's test set and every target's.

    Targets are scored with the *source's* prompt, the one the model was tuned with, so each
    source is evaluated on the targets with its classes (sentiment sets share negative,
    positive; sms and spamassassin ham, spam). One row per source ×
    target × seed × variant, with accuracy, ECE, Brier, NLL and ``in_distribution``.
    """
    unmatched = [t for t in targets if not any(same_labels(s, t) for s in sources)]
    if unmatched:
        raise ValueError(f"target(s) {unmatched} share no source's classes: a target is scored with a source's "
                         f"prompt, so its classes must be the source's; sources {sources} have "
                         f"{sorted({tk.get_task(s).class_names for s in sources})}")
    lab = setting.lab()
    rows, kept, dspecs, gspecs = [], Predictions(*FIELDS), [], []
    for source, seed in itertools.product(sources, seeds):
        variants = three_models(lab, setting, source, seed, sparsity, dspecs, gspecs)
        for target in [source] + [t for t in targets if t != source and same_labels(source, t)]:
            for v in variants:
                probs, labels = lab.predict(target, v, prompt_task=source)
                kept.add((probs, labels), source=source, target=target, seed=seed, variant=v.name)
                rows.append(dict(source=source, target=target, seed=seed, variant=v.name,
                                 in_distribution=target == source, **scores(probs, labels)))
    return OOD(pd.DataFrame(rows), kept, fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs))


def intervals(result: OOD, sources: list[str] | None = None, **kw) -> tuple:
    """(overall, per target pair) intervals of graft − fine-tuned accuracy out of distribution from
    ``sources`` (default: all), for :func:`rule`; overall pools every OOD target of a source and seed."""
    key = ("c3", None if sources is None else tuple(sources), tuple(sorted(kw.items())))
    return verdicts.memo(result, key, lambda: _intervals(result, sources, **kw))


def _shifted(result: OOD, variant: str, sources: list[str] | None = None) -> list[tuple[str, str]]:
    """The (source, shifted target) pairs ``variant`` was evaluated on, of ``sources`` (default: all)."""
    return sorted({(k["source"], k["target"]) for k, _ in result.probs.find(variant=variant)
                   if k["source"] != k["target"] and (sources is None or k["source"] in sources)})


def _source_unit(result: OOD, source: str, pairs: list[tuple[str, str]], a: str, b: str) -> tuple[list, np.ndarray]:
    """One source's groups, one per seed: correctness of models ``a`` and ``b`` on each example of its shifted
    targets (the targets one after another), and the target of each example (the strata)."""
    seeds = sorted(result.probs.values("seed"))
    targets = [t for s, t in pairs if s == source]

    def scored(t, seed):
        first = result.probs.get(source=source, target=t, seed=seed, variant=a)
        return verdicts.correctness((first.probs, result.probs.get(source=source, target=t, seed=seed,
                                                                   variant=b).probs, first.labels))
    groups = [pooled([scored(t, seed) for t in targets]) for seed in seeds]
    strata = np.concatenate([np.full(len(result.probs.get(source=source, target=t, seed=seeds[0], variant=a).labels), i)
                             for i, t in enumerate(targets)])
    return [(*g, strata) for g in groups], strata


def _gap_stat(groups: list[tuple]) -> float:
    """One source's a − b accuracy: per target, per seed, then the mean over its seeds and targets."""
    strata = groups[0][2]
    return float(np.mean([np.mean([g[0][strata == s].mean() - g[1][strata == s].mean() for s in np.unique(strata)])
                          for g in groups]))


def _gap(result: OOD, pairs: list[tuple[str, str]], a: str, b: str, **kw) -> Interval | None:
    """a − b accuracy over the shifted targets of the sources in ``pairs``: the mean over sources of each source's
    mean over its targets (:func:`_gap_stat`); sources held fixed (the verdict is about them), seeds and test
    examples (stratified by target) resampled."""
    sources = sorted({s for s, _ in pairs})
    if not sources:
        return None
    units, strata = {}, {}
    for src in sources:
        units[src], strata[src] = _source_unit(result, src, pairs, a, b)
    return verdicts.hierarchical(_gap_stat, units, strata=strata, resample_units=len(units) >= verdicts.MIN_UNITS,
                                 **kw)


def _intervals(result: OOD, sources: list[str] | None = None, **kw) -> tuple:
    pairs = _shifted(result, "graft", sources)
    per = {f"{s}→{t}": _gap(result, [(s, t)], "graft", "fine-tuned", **kw) for s, t in pairs}
    return (_gap(result, pairs, "graft", "fine-tuned", **kw) if pairs else None), per


def headroom(result: OOD, sources: list[str] | None = None, **kw) -> Interval | None:
    """Fine-tuned − zero-shot accuracy over the OOD targets of ``sources`` (default: all; per target, then the
    mean over a source's targets and over sources): what fine-tuning gained out of distribution, hence what a
    graft could keep (None: no target)."""
    key = ("c3 headroom", None if sources is None else tuple(sources), tuple(sorted(kw.items())))
    return verdicts.memo(result, key, lambda: _gap(result, _shifted(result, "fine-tuned", sources), "fine-tuned",
                                                   "zero-shot", **kw))


def rule(overall: Interval | None, per_target: dict[str, Interval], headroom: Interval | None = None) -> Verdict:
    """C3 from graft − fine-tuned accuracy intervals out of distribution: ``overall`` (all
    OOD targets pooled) and ``per_target``. Holds when the overall interval is above zero,
    fails when it is below, inconclusive when it contains zero; not testable here with no OOD
    target, or when ``headroom`` (fine-tuned − zero-shot accuracy on the targets, if given)
    is not above zero: fine-tuning left the graft nothing out of distribution to keep."""
    if overall is None or not per_target:
        return Verdict("C3", verdicts.UNTESTABLE, ("no out-of-distribution target to evaluate",))
    ahead = sorted(t for t, i in per_target.items() if i.sign > 0)
    behind = sorted(t for t, i in per_target.items() if i.sign < 0)
    reasons = [f"graft − fine-tuned accuracy over all OOD targets {overall.fmt('+.1f', 100, ' pt')}",
               f"graft ahead on {len(ahead)} of {len(per_target)} target(s){': ' + ', '.join(ahead) if ahead else ''}; "
               f"behind on {len(behind)}{': ' + ', '.join(behind) if behind else ''}; no difference on the rest"]
    blocked = verdicts.no_room("C3", reasons, headroom, "fine-tuned − zero-shot accuracy on the targets",
                               "fine-tuning gained nothing out of distribution: no room for the graft")
    return blocked or Verdict("C3", verdicts.side(overall), tuple(reasons))


def _judged(result: OOD, **kw) -> tuple[dict, list[str], tuple | None]:
    """Per source (overall, per target, headroom); the sources that test C3 (fine-tuning gained on their
    targets); the same three pooled over those (None without one)."""
    sources = sorted({s for s, _ in _shifted(result, "graft")})
    per = {s: (*intervals(result, [s], **kw), headroom(result, [s], **kw)) for s in sources}
    room = [s for s in sources if per[s][2] is not None and per[s][2].sign > 0]
    return per, room, (*intervals(result, room, **kw), headroom(result, room, **kw)) if room else None


def verdict(result: OOD, **kw) -> Verdict:
    """C3 source by source and pooled over the sources that test it (:func:`rule_across`)."""
    per, _, pool = _judged(result, **kw)
    return rule_across(per, pool)


def by_source(result: OOD, **kw) -> pd.DataFrame:
    """One row per source and one pooled over the sources that test C3: the evidence (family, targets,
    seeds), the headroom of fine-tuning out of distribution, graft − fine-tuned over its targets, the verdict."""
    per, room, pool = _judged(result, **kw)
    rows = []
    for source in list(per) + (["pooled"] if len(room) > 1 else []):
        overall, per_target, room_ = pool if source == "pooled" else per[source]
        rows.append(dict(source=source, family="—" if source == "pooled" else tk.get_task(source).family,
                         targets=", ".join(sorted({p.split("→")[1] for p in per_target})),
                         seeds=len(result.probs.values("seed")),
                         headroom=room_.cell("+.1f", 100, " pt") if room_ is not None else "—",
                         graft_minus_fine_tuned=overall.cell("+.1f", 100, " pt") if overall is not None else "—",
                         verdict=(rule(overall, per_target, room_).verdict if source == "pooled" or source in room
                                  else verdicts.UNTESTABLE)))
    return verdicts.verdict_first(pd.DataFrame(rows), "source")


def forest(result: OOD, **kw) -> pd.DataFrame:
    """Graft − fine-tuned accuracy out of distribution by source and pooled, for :func:`skillgraft.plots.forest`."""
    per, room, pooled = _judged(result, **kw)
    pooled = pooled if len(room) > 1 else None
    return verdicts.forest_frame({s: v[0] for s, v in per.items() if v[0] is not None},
                                 {s: rule(*per[s]).verdict for s in room},
                                 pooled[0] if pooled else None, rule(*pooled).verdict if pooled else verdicts.UNTESTABLE)


def _flat(result: OOD, sources: list[str], **kw) -> tuple:
    """The earlier flat scheme (for the robustness table): each source × seed one independent group, the
    predictions of a source's targets concatenated."""
    pairs = _shifted(result, "graft", sources)
    seeds = sorted(result.probs.values("seed"))

    def group(s, t, seed, a, b):
        first = result.probs.get(source=s, target=t, seed=seed, variant=a)
        return first.probs, result.probs.get(source=s, target=t, seed=seed, variant=b).probs, first.labels
    gap = lambda a, b: verdicts.accuracy_gap([pooled([group(s, t, seed, a, b) for s, t in pairs if s == src])
                                              for src in sorted(set(sources)) for seed in seeds], **kw)
    return gap("graft", "fine-tuned"), gap("fine-tuned", "zero-shot")


def robustness(result: OOD, **kw) -> list[dict]:
    """C3 under the primary rule and the reasonable alternatives (:data:`skillgraft.verdicts.ANALYSES`)."""
    per, room, pool = _judged(result, **kw)
    if pool is None:
        return [verdicts.robust_row("C3", "primary", verdicts.UNTESTABLE)]
    overall, per_target, head = pool
    flat, flat_head = _flat(result, room, **kw)
    every = intervals(result, sorted(per), **kw)
    row = verdicts.robust_row
    return [row("C3", "primary", rule(overall, per_target, head).verdict, overall,
                estimand="graft − fine-tuned accuracy on the shifted targets"),
            row("C3", "point", verdicts.point(overall.estimate), overall),
            row("C3", "majority", verdicts.majority([rule(*per[s]).verdict for s in room])),
            row("C3", "flat", rule(flat, per_target, flat_head).verdict, flat),
            row("C3", "all units", verdicts.side(every[0]), every[0])]


def rule_across(per_source: dict[str, tuple], pooled: tuple | None) -> Verdict:
    """C3 over many sources: :func:`rule` on the intervals pooled over the sources whose fine-tuning
    gained out of distribution (``pooled``: overall, per target, headroom over those sources), each such
    source's :func:`rule` tallied beside it (:func:`skillgraft.verdicts.across`); a source whose
    fine-tuning gained nothing on its targets (headroom not above zero) tests nothing, and is named."""
    names = [s for s, (_, _, room) in per_source.items() if room is not None and room.sign > 0]
    untested = {s: "no out-of-distribution target of its classes" if per_source[s][0] is None
                else "fine-tuning gained nothing on its targets: no room for the graft"
                for s in per_source if s not in names}
    return verdicts.across("C3", rule(*pooled) if names else None, {s: rule(*per_source[s]) for s in names},
                           untested, unit="source")


def scope(sources: list[str], targets: list[str], seeds: list[int]) -> str:
    """C3's evidence in a few words: sources, pairs, families, seeds."""
    from .common import scope as _scope

    pairs = sum(t != s and same_labels(s, t) for s in sources for t in targets)
    return _scope(sources, seeds, f"{len(sources)} sources ({pairs} pairs)")


def evidence(sources: list[str], targets: list[str], seeds: list[int], test_size: int) -> str:
    """What C3 rests on: the source → target pairs scored, seeds and test examples."""
    pairs = [f"{s} → {t}" for s in sources for t in targets if t != s and same_labels(s, t)]
    return (f"{len(pairs)} source → target pairs from {len(sources)} source(s) in {families(sources)} "
            f"({', '.join(pairs)}); {len(seeds)} data seeds; "
            f"{test_size} test examples per target")


def reading(result: OOD, overall: Interval | None, per_pair: dict, headroom_: Interval | None) -> str:
    """The chapter's result in words written from ``result`` and its intervals: how each source's
    models do on their shifted targets, what fine-tuning gained there, and the graft against it."""
    if overall is None:
        return "No shifted target to evaluate here."
    f = result.results
    acc = f.groupby(["source", "in_distribution", "variant"])["accuracy"].mean()
    per_source = "; ".join(
        f"{s}: zero-shot {acc[s, True, 'zero-shot']:.1%} in distribution and {acc[s, False, 'zero-shot']:.1%} on its "
        f"targets, fine-tuned {acc[s, True, 'fine-tuned']:.1%} and {acc[s, False, 'fine-tuned']:.1%}, graft "
        f"{acc[s, True, 'graft']:.1%} and {acc[s, False, 'graft']:.1%}"
        for s in sorted(set(f.source)) if (s, False, "graft") in acc.index)
    ahead = sum(i.sign > 0 for i in per_pair.values())
    behind = sum(i.sign < 0 for i in per_pair.values())
    ece = f[~f.in_distribution].groupby("variant")["ece"].mean()
    text = (f"**Reading the result.** Mean accuracy over seeds (targets pooled): {per_source}. "
            + (f"Out of distribution fine-tuning gained {headroom_.fmt('+.1f', 100, ' points')} over zero-shot: "
               + difference_words(headroom_, "room a graft could keep", "it lost ground there",) + ". "
               if headroom_ is not None else "")
            + f"The graft against the fine-tuned model on the shifted targets, pooled: "
              f"{overall.fmt('+.1f', 100, ' points')}, "
            + difference_words(overall, "the graft transfers better", "the graft transfers worse")
            + f"; per pair, ahead on {ahead}, behind on {behind} of {len(per_pair)}. On the targets the graft's mean "
              f"ECE is {ece['graft']:.3f} against the fine-tuned model's {ece['fine-tuned']:.3f}, a difference this "
              f"chapter reports without an interval and does not judge.")
    return text
