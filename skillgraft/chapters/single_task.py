"""Chapter 01, claim C1: a graft of ~0.01% of the parameters recovers the fine-tuned model.

Zero-shot, fine-tuned and grafted models on each task's test set, with top-movement and
random masks of each graft's final size; grafts refined at each target sparsity and grown
from the shipped script's tiny patch. The verdict rule and its thresholds are fixed here
and unit-tested on hand-made intervals (``tests/test_verdicts.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import verdicts
from ..lab import Variant
from ..models import num_graftable
from ..verdicts import Verdict
from .common import MASK_VARIANTS, Setting, caveats, fine_tune_regime, graft_regime, records, scores, evidence, scope
from .predictions import Predictions

__all__ = ["RECOVERY", "NORMALIZED", "SingleTask", "run", "single_task", "recovery_table", "sparsity_to_reach",
           "intervals", "pooled_intervals", "tested", "recovery_part", "kept_part", "top_part", "task_rule", "task_verdicts", "rule", "verdict", "by_task", "forest", "robustness", "pooled_vs_top", "caveats", "MASK_VARIANTS", "evidence", "reading"]


FIELDS = ("task", "seed", "start", "target", "variant")  # what names a prediction (start, target: None unmasked)
RECOVERY = 0.95        # the paper's ">95% of the fine-tuned performance"
NORMALIZED = 0.5       # at least half of the fine-tuning gain over zero-shot (ours: the model is good zero-shot)


def run(p: dict, setting: Setting | None = None) -> "SingleTask":
    """The chapter from its notebook's parameters (as the notebook calls it)."""
    return single_task(p["tasks"], p["seeds"], p["sparsities"], setting or Setting.from_params(**p),
                       compare_seeds=p["compare_seeds"])


@dataclass
class SingleTask:
    results: pd.DataFrame    # task, seed, start, target, variant, sparsity (final), mask_size, accuracy, ece, ...
    locations: pd.DataFrame  # task, seed, start, target, layer, module, count, share (of the graft mask)
    histories: pd.DataFrame  # task, seed, start, target, epoch, ... (localization, per epoch)
    finetuning: pd.DataFrame # task, seed, step, train_loss, dev_acc, fit_loss, fit_acc
    regime: pd.DataFrame = None   # per fine-tune: kept step, passes, train loss / accuracy (fine_tune_regime)
    grafts: pd.DataFrame = None   # per graft: size, entries in and out, equal to top movement (graft_regime)
    probs: Predictions = field(default_factory=lambda: Predictions(*FIELDS))  # test-set predictions, by FIELDS


def _graft_specs(lab, setting: Setting, dspec, task: str, sparsities, starts) -> list[tuple]:
    """(start, target, graft recipe) of one delta: refine at every target sparsity, grow once."""
    out = []
    for start in starts:
        cfg = dataclasses.replace(setting.graft, start=start)
        for target in (sparsities if start == "refine" else [np.nan]):
            out.append((start, target, lab.graft(dspec, task, target, cfg)))
    return out


def single_task(tasks: list[str], seeds: list[int], sparsities: list[float], setting: Setting,
                starts: tuple[str, ...] = ("refine", "grow"), compare_seeds: int | None = None) -> SingleTask:
    """Zero-shot, fine-tuned and grafted models on each task's test set, with top-movement and
    random masks of each graft's final size; grafts refined at each target sparsity and grown
    from the shipped script's tiny patch (``starts``).

    The chapters' start (``setting.graft.start``) runs on every seed; the other starts run on
    the first ``compare_seeds`` seeds only (None: on every seed), to compare the starts."""
    lab = setting.lab()
    total = num_graftable(lab.lm.model)
    rows, locs, hists, fts, probs, dspecs, gspecs = [], [], [], [], Predictions(*FIELDS), [], []
    for task in tasks:
        zs = lab.predict(task, Variant("zero-shot"))
        for seed in seeds:
            probs.add(zs, task=task, seed=seed, start=None, target=None, variant="zero-shot")
            rows.append(dict(task=task, seed=seed, variant="zero-shot", mask_size=0, **scores(*zs)))
            dspec = lab.fine_tune(task, setting.k, seed, setting.finetune)
            dspecs.append((dict(task=task, seed=seed), dspec))
            ft_pred = lab.predict(task, Variant("fine-tuned", delta=dspec))
            probs.add(ft_pred, task=task, seed=seed, start=None, target=None, variant="fine-tuned")
            rows.append(dict(task=task, seed=seed, variant="fine-tuned", **scores(*ft_pred)))
            fts.append(records(lab.meta(dspec)["history"]).assign(task=task, seed=seed))
            here = [s for s in starts if s == setting.graft.start or compare_seeds is None
                    or seed in seeds[:compare_seeds]]
            for start, target, gspec in _graft_specs(lab, setting, dspec, task, sparsities, here):
                tag = dict(task=task, seed=seed, start=start, target=target)
                gspecs.append((tag, gspec))
                for how in MASK_VARIANTS:
                    mspec = gspec if how == "graft" else lab.sized_like(gspec, how, seed=seed)
                    pred = lab.predict(task, Variant(how, delta=dspec, mask=mspec))
                    probs.add(pred, **tag, variant=how)
                    size = lab.mask_count(mspec)
                    rows.append(dict(**tag, variant=how, sparsity=size / total, mask_size=size, **scores(*pred)))
                locs.append(pd.DataFrame(lab.mask_location(gspec)).assign(**tag))
                hists.append(records(lab.mask_history(gspec)).assign(**tag))
    return SingleTask(pd.DataFrame(rows), pd.concat(locs, ignore_index=True), pd.concat(hists, ignore_index=True),
                      pd.concat(fts, ignore_index=True), fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs),
                      probs)


def recovery_table(results: pd.DataFrame, min_gain: float = 0.01) -> pd.DataFrame:
    """Mean accuracy over seeds per task × start × target × mask kind, with recovery = acc /
    fine-tuned and normalized recovery = (acc − zero-shot) / (fine-tuned − zero-shot), both from
    the seed means; ``sparsity`` and ``mask_size`` are the masks' final sizes (mean over seeds).
    The normalized recovery is NaN where fine-tuning gained less than ``min_gain``."""
    ref = (results[results.variant.isin(["fine-tuned", "zero-shot"])]
           .groupby(["task", "variant"])["accuracy"].mean().unstack())
    masked = results[results.variant.isin(MASK_VARIANTS)].fillna({"target": -1.0})  # grow: no target
    out = masked.groupby(["task", "start", "target", "variant"], as_index=False)[
        ["accuracy", "sparsity", "mask_size"]].mean()
    out["target"] = out["target"].where(out["target"] >= 0)
    out["fine_tuned"] = ref["fine-tuned"].reindex(out.task).values
    out["zero_shot"] = ref["zero-shot"].reindex(out.task).values
    gain = out.fine_tuned - out.zero_shot
    out["recovery"] = out.accuracy / out.fine_tuned
    out["normalized_recovery"] = ((out.accuracy - out.zero_shot) / gain).where(gain >= min_gain)
    order = {v: i for i, v in enumerate(MASK_VARIANTS)}
    out = out.sort_values(["task", "start", "target", "variant"], key=lambda c: c.map(order) if c.name == "variant"
                          else c, ascending=[True, False, True, True])
    return out[["task", "start", "target", "variant", "sparsity", "mask_size", "accuracy", "fine_tuned",
                "zero_shot", "recovery", "normalized_recovery"]].reset_index(drop=True)


def sparsity_to_reach(results: pd.DataFrame, share: float = 0.95, variant: str = "graft") -> pd.DataFrame:
    """Per task: the smallest target sparsity at which the mean refined ``variant`` accuracy
    reaches ``share`` × fine-tuned."""
    table = recovery_table(results)
    rows = []
    for task, grp in table[(table.variant == variant) & (table.start == "refine")].groupby("task"):
        ok = grp[grp.accuracy >= share * grp.fine_tuned].sort_values("target")
        rows.append(dict(task=task, share=share, sparsity=ok.target.iloc[0] if len(ok) else np.nan))
    return pd.DataFrame(rows)


def _groups(result: SingleTask, task: str, start: str, target: float) -> list[tuple]:
    """One bootstrap group per seed of ``task``: whether each test example is right under the graft,
    the fine-tuned model, zero-shot, the random and the top-movement masks of the graft's size."""
    grafts = result.probs.find(task=task, start=start, variant="graft") if start == "grow" else \
        result.probs.find(task=task, start=start, target=target, variant="graft")
    groups = []
    for name, graft in grafts:
        seed, tgt = name["seed"], name["target"]
        model = lambda variant: result.probs.get(task=task, seed=seed, start=None, target=None, variant=variant)
        masked = lambda variant: result.probs.get(task=task, seed=seed, start=start, target=tgt, variant=variant)
        top = masked("top-movement").probs if result.probs.find(task=task, seed=seed, start=start, target=tgt,
                                                                 variant="top-movement") else graft.probs
        groups.append(verdicts.correctness((graft.probs, model("fine-tuned").probs, model("zero-shot").probs,
                                            masked("random").probs, top, graft.labels)))
    return groups


def _c1_stat(groups: list[tuple]) -> list[float]:
    """One task's accuracies, each a mean over its seeds (graft, fine-tuned, zero-shot, random, top
    movement), and its recovery graft / fine-tuned."""
    g, f, z, r, t = (float(np.mean([grp[i].mean() for grp in groups])) for i in range(5))
    return [g, f, z, r, t, g / f if f > 0 else np.nan]


def _c1_finish(m: np.ndarray) -> dict:
    """The estimands from the mean over tasks of :func:`_c1_stat`: the recovery is the mean of the tasks'
    recoveries; the share of the gain kept is the mean graft − zero-shot over the mean gain (each task
    weighing the same, and no division by one task's tiny gain)."""
    g, f, z, r, t, rec = m
    return {"gain": f - z, "recovery": rec, "normalized": (g - z) / (f - z) if f != z else np.nan,
            "vs_random": g - r, "vs_top": g - t}


def _units(result: SingleTask, start: str, target: float, tasks) -> dict:
    return {t: g for t in tasks if (g := _groups(result, t, start, target))}


def intervals(result: SingleTask, start: str, target: float, **kw) -> dict[str, dict]:
    """Per task, the bootstrap intervals C1 is judged on (:func:`rule`; each task alone: its seeds and
    test examples resampled): gain of fine-tuning over zero-shot, recovery, share of the gain kept, graft
    − random and graft − top movement of its size."""
    def compute():
        units = _units(result, start, target, sorted(result.probs.values("task")))
        return verdicts.per_unit(_c1_stat, units, _c1_finish, **kw)
    return verdicts.memo(result, ("c1", start, target, tuple(sorted(kw.items()))), compute)


def pooled_intervals(result: SingleTask, start: str, target: float, tasks: list[str], **kw) -> dict | None:
    """The same intervals pooled over ``tasks`` (:func:`skillgraft.verdicts.hierarchical`: each task weighs
    the same; tasks resampled when there are at least five, then seeds, then test examples), for
    :func:`rule`; None for no task."""
    def compute():
        units = _units(result, start, target, tasks)
        return verdicts.hierarchical(_c1_stat, units, _c1_finish, **kw) if units else None
    return verdicts.memo(result, ("c1 pooled", start, target, tuple(tasks), tuple(sorted(kw.items()))), compute)


def tested(tasks: dict[str, dict]) -> list[str]:
    """The tasks that test C1: fine-tuning beat zero-shot (the gain's interval above zero)."""
    return sorted(t for t, v in tasks.items() if v["gain"].sign > 0)


def recovery_part(v: dict) -> str:
    """C1a: the recovery graft / fine-tuned against the paper's 95% (its interval)."""
    return (verdicts.HOLDS if v["recovery"].low >= RECOVERY else verdicts.FAILS if v["recovery"].high < RECOVERY
            else verdicts.INCONCLUSIVE)


def kept_part(v: dict) -> str:
    """C1b: the share of fine-tuning's gain over zero-shot the graft keeps, against half (its interval)."""
    return verdicts.side(v["normalized"], NORMALIZED)


def top_part(v: dict) -> str:
    """C1c: the graft against the top-movement mask of its own size (its interval against zero): whether the
    optimization chose better entries than the largest movements."""
    return verdicts.side(v["vs_top"])


def task_rule(v: dict) -> str:
    """C1 on one task (or a pool of tasks) where fine-tuning gained: recovery ≥ 95% (C1a) and more than
    half of the gain kept (C1b; a recovery near 95% says little where zero-shot is already close), each
    interval against its threshold. Holds when both hold, fails when one fails, else inconclusive. The
    graft against top movement of its size (C1c) has its own verdict (:func:`top_part`); a random mask
    of its size is a sanity line, not a condition."""
    return verdicts.combine([recovery_part(v), kept_part(v)])


def _judged(v: dict) -> Verdict:
    return Verdict("C1", task_rule(v), (f"recovery {v['recovery'].fmt('.1%')}: {recovery_part(v)}; share of the "
                                        f"gain kept {v['normalized'].fmt('.0%')}: {kept_part(v)}",
                                        f"C1c, graft − top movement of its size "
                                        f"{v['vs_top'].fmt('+.1f', 100, ' pt')}: {top_part(v)}; graft − random "
                                        f"{v['vs_random'].fmt('+.1f', 100, ' pt')} (a sanity line)"))


def task_verdicts(tasks: dict[str, dict]) -> dict[str, Verdict]:
    """:func:`task_rule` on each tested task, with its numbers."""
    return {t: _judged(tasks[t]) for t in tested(tasks)}


def rule(tasks: dict[str, dict], pooled: dict | None = None) -> Verdict:
    """C1 from per-task intervals (:func:`intervals`: ``gain``, fine-tuned − zero-shot accuracy;
    ``recovery``, graft / fine-tuned accuracy; ``normalized``, the share of the gain kept;
    ``vs_random``, graft − a random mask of the graft's size) and the same ``pooled`` over the
    tested tasks (:func:`pooled_intervals`; with one tested task, its own).

    A task tests C1 only where fine-tuning gained (gain interval above zero). The verdict is
    :func:`task_rule` on the pooled intervals; each tested task's own verdict is tallied beside it
    (:func:`skillgraft.verdicts.across`); not testable here when no task gained."""
    names = tested(tasks)
    untested = {t: "fine-tuning's gain over zero-shot is not clearly above zero (its interval reaches zero): no gain to recover" for t in sorted(set(tasks) - set(names))}
    if len(names) == 1:
        pooled = tasks[names[0]]
    elif names and pooled is None:
        raise ValueError("C1 over several tested tasks needs their pooled intervals (pooled_intervals)")
    return verdicts.across("C1", _judged(pooled) if names else None, task_verdicts(tasks), untested)


def verdict(result: SingleTask, start: str, target: float, **kw) -> Verdict:
    """C1 on this result: per task and pooled over the tested tasks (:func:`rule`)."""
    per = intervals(result, start, target, **kw)
    return rule(per, pooled_intervals(result, start, target, tested(per), **kw))


def by_task(result: SingleTask, start: str, target: float, **kw) -> pd.DataFrame:
    """One row per task and one pooled over the tested tasks: the evidence of C1 (family, seeds, test
    examples, the fine-tuned and grafted accuracies, the graft's size) with its intervals and verdict."""
    from ..tasks import get_task

    per = intervals(result, start, target, **kw)
    names = tested(per)
    judged = task_verdicts(per)
    pool = pooled_intervals(result, start, target, names, **kw) if len(names) > 1 else None
    r = result.results
    graft = r[(r.variant == "graft") & (r.start == start) & ((start == "grow") | np.isclose(r.target, target))]
    rows = []
    for task, v in list(per.items()) + ([("pooled", pool)] if pool is not None else []):
        on = graft[graft.task.isin(names if task == "pooled" else [task])]
        ft = r[(r.variant == "fine-tuned") & (r.task.isin(names if task == "pooled" else [task]))]
        rows.append(dict(task=task, family="—" if task == "pooled" else get_task(task).family,
                         seeds=on.seed.nunique(), fine_tuned=ft.accuracy.mean(), graft=on.accuracy.mean(),
                         mask_size=on.mask_size.mean(), gain=v["gain"].cell("+.1f", 100, " pt"),
                         recovery=v["recovery"].cell(".1%"), kept=v["normalized"].cell(".0%"),
                         vs_top=v["vs_top"].cell("+.1f", 100, " pt"), vs_random=v["vs_random"].cell("+.1f", 100, " pt"),
                         top_verdict=top_part(v) if task == "pooled" or task in judged else verdicts.UNTESTABLE,
                         verdict=(task_rule(v) if task == "pooled" else judged[task].verdict if task in judged
                                  else verdicts.UNTESTABLE)))
    return verdicts.verdict_first(pd.DataFrame(rows))


def forest(result: SingleTask, start: str, target: float, **kw) -> pd.DataFrame:
    """Recovery by task and pooled, with verdicts, for :func:`skillgraft.plots.forest`."""
    per = intervals(result, start, target, **kw)
    names = tested(per)
    pool = pooled_intervals(result, start, target, names, **kw) if len(names) > 1 else None
    judged = {t: v.verdict for t, v in task_verdicts(per).items()}
    return verdicts.forest_frame({t: v["recovery"] for t, v in per.items()}, judged,
                                 pool["recovery"] if pool is not None else None,
                                 task_rule(pool) if pool is not None else verdicts.UNTESTABLE)


def _flat(result: SingleTask, start: str, target: float, tasks: list[str], **kw) -> dict:
    """C1's intervals by the earlier flat scheme (for the robustness table): every task × seed one independent
    bootstrap group, accuracies over the predictions of all tasks concatenated."""
    groups = [g for t in tasks for g in _groups(result, t, start, target)]
    acc = lambda f: verdicts.accuracy_interval(groups, f, scored=True, **kw)
    return {"gain": acc(lambda g, f, z, r, t: f - z), "recovery": acc(lambda g, f, z, r, t: g / f),
            "normalized": acc(lambda g, f, z, r, t: (g - z) / (f - z) if f != z else np.nan),
            "vs_random": acc(lambda g, f, z, r, t: g - r), "vs_top": acc(lambda g, f, z, r, t: g - t)}


def robustness(result: SingleTask, start: str, target: float, **kw) -> list[dict]:
    """C1 and C1c under the primary rule and the reasonable alternatives (:data:`skillgraft.verdicts.ANALYSES`):
    rows for the results page's robustness table."""
    per = intervals(result, start, target, **kw)
    names = tested(per)
    if not names:
        return [verdicts.robust_row("C1", "primary", verdicts.UNTESTABLE)]
    pool = pooled_intervals(result, start, target, names, **kw) if len(names) > 1 else per[names[0]]
    # the earlier analysis whole: its own test of which tasks gained (flat, task by task), then its pooled intervals
    gained = [t for t, groups in _units(result, start, target, sorted(result.probs.values("task"))).items()
              if verdicts.accuracy_interval(groups, lambda g, f, z, r, t: f - z, scored=True, **kw).sign > 0]
    flat = _flat(result, start, target, gained, **kw)
    every = pooled_intervals(result, start, target, sorted(per), **kw) if len(per) > 1 else pool
    row = verdicts.robust_row
    point = verdicts.HOLDS if (pool["recovery"].estimate >= RECOVERY and
                               pool["normalized"].estimate >= NORMALIZED) else verdicts.FAILS
    return [row("C1", "primary", task_rule(pool), pool["recovery"], ".1%", 1, "",
                estimand="recovery", beside=f"share of the gain kept {pool['normalized'].fmt('.0%')}"),
            row("C1", "point", point, pool["recovery"], ".1%", 1, ""),
            row("C1", "majority", verdicts.majority([task_rule(per[t]) for t in names])),
            row("C1", "flat", task_rule(flat), flat["recovery"], ".1%", 1, ""),
            row("C1", "all units", task_rule(every), every["recovery"], ".1%", 1, ""),
            row("C1c", "primary", top_part(pool), pool["vs_top"], estimand="graft − top movement of its size"),
            row("C1c", "point", verdicts.point(pool["vs_top"].estimate), pool["vs_top"]),
            row("C1c", "majority", verdicts.majority([top_part(per[t]) for t in names])),
            row("C1c", "flat", top_part(flat), flat["vs_top"]),
            row("C1c", "all units", top_part(every), every["vs_top"])]


def pooled_vs_top(result: SingleTask, start: str, target: float, **kw) -> "verdicts.Interval | None":
    """C1c's interval, graft − top movement of its size, pooled over the tested tasks (None: no task tests C1)."""
    per = intervals(result, start, target, **kw)
    names = tested(per)
    if not names:
        return None
    return (pooled_intervals(result, start, target, names, **kw) if len(names) > 1 else per[names[0]])["vs_top"]


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def reading(result: SingleTask, start: str, vs_top: "verdicts.Interval | None" = None) -> str:
    """What the optimization did, in words written from ``result`` (the grafts of ``start``): the
    sizes the grafts reached from their base patches, how many kept masks differ from the
    top-movement mask of their size, and, per task, the graft against the unoptimized masks of its
    own final size (mean test accuracy over seeds, in points); with ``vs_top`` (C1c's pooled interval,
    graft − top movement of its size), what its interval says, never more."""
    g = result.grafts[result.grafts.start == start]
    if g.empty:
        return f"No graft started from {start!r} here."
    table = recovery_table(result.results)
    table = table[table.start == start]
    acc = table.pivot_table(index="task", columns="variant", values="accuracy")
    moved = int((~g.equals_top_movement).sum())
    res = result.results
    share = float(res[(res.variant == "graft") & (res.start == start)].sparsity.mean())
    sizes = (f"from base patches of {g.base_size.min():,}–{g.base_size.max():,} entries to "
             f"{g['size'].min():,}–{g['size'].max():,}" if g.base_size.nunique() > 1 else
             f"from a base patch of {g.base_size.iloc[0]:,} entries to {g['size'].min():,}–{g['size'].max():,}")
    per_task = "; ".join(f"{t}: {_points(r['graft'] - r['top-movement'])} against top movement, "
                         f"{_points(r['graft'] - r['random'])} against random" for t, r in acc.iterrows())
    top = verdicts.side(vs_top) if vs_top is not None else None
    close = "C1c below judges the graft against the largest movements of its size" if vs_top is None else {
             verdicts.HOLDS: f"over the tested tasks the graft beats the largest movements of its size "
                             f"({vs_top.fmt('+.1f', 100, ' points')}): the optimization chose better entries",
             verdicts.FAILS: f"over the tested tasks the largest movements of the graft's size do better "
                             f"({vs_top.fmt('+.1f', 100, ' points')}) than the entries the optimization chose",
             verdicts.INCONCLUSIVE: f"over the tested tasks the graft cannot be told from the largest movements of "
                                    f"its size ({vs_top.fmt('+.1f', 100, ' points')}, C1c inconclusive): the "
                                    f"optimization's gain lies in how many entries to keep more than in which",
             }[top]
    return (f"**What the optimization did.** The {len(g)} {start} grafts went {sizes} entries "
            f"({share:.4%} of the graftable parameters on average); "
            f"{moved} of {len(g)} kept masks differ from the top-movement mask of their size. On the test set "
            f"(mean accuracy over seeds, in points), the graft against unoptimized masks of its own final size: "
            f"{per_task}; {close}.")


def starts_sentence(best: str | None, default: str) -> str:
    """What :func:`compare_starts`' winner says of the chapters' start, in words conditioned on both."""
    if best is None:
        return "only one start ran here: no comparison of starts"
    if best == default:
        return (f"the chapters' start, {default}, has the higher mean train + dev accuracy of its kept masks on the "
                f"seeds where both ran")
    return (f"on the seeds where both ran, {best} has the higher mean train + dev accuracy of its kept masks, not the "
            f"chapters' start ({default}); that start was chosen on dev data before these tasks ran (the analysis "
            f"plan's change log) and is not changed after the results were seen")


def compare_starts(result: SingleTask) -> tuple[pd.DataFrame, str | None]:
    """The two starts on the seeds where both ran: per start, the mean size, entries added and
    removed, and train, dev and train + dev accuracy of the kept masks (the official selection
    rule's number); and the start with the higher train + dev accuracy (None if not both ran)."""
    g = result.grafts
    both = g.groupby("seed").start.nunique().loc[lambda n: n > 1].index
    kept = result.histories[result.histories.kept & result.histories.seed.isin(both)].assign(
        selection=lambda h: h.train_acc + h.dev_acc)
    by_start = kept.groupby("start")[["count", "added", "removed", "train_acc", "dev_acc", "selection"]].mean()
    if len(by_start) < 2:
        return by_start, None
    return by_start, str(by_start.selection.idxmax())
