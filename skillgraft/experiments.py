"""One function per experiment: parameters in, tidy pandas frames out.

Each function builds its models from cached steps (:mod:`skillgraft.lab`), so runs
that share settings share work. Frames have one row per task × seed × variant (×
sparsity, target, ...) and one column per metric; :mod:`skillgraft.plots` draws them.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import metrics as mt
from . import verdicts as vd
from .finetune import FinetuneConfig
from .graft import GraftConfig, num_graftable
from .lab import Variant, get_lab

__all__ = ["Setting", "SingleTask", "single_task", "calibration", "ood", "multitask", "continual"]

log = logging.getLogger(__name__)

MASK_VARIANTS = ("graft", "top-movement", "random")


@dataclass
class Setting:
    """What every experiment shares: the model, data sizes and the two stage configs."""

    model: str = "smollm2-135m"  # embedded short name, local folder or hub id
    device: str = "cpu"          # "cpu", "cuda", "auto"
    k: int = 16                  # training examples per class (and dev examples per class)
    test_size: int = 200         # fixed test examples per task (independent of the data seed)
    max_length: int = 64         # tokens per prompt; the text is cut, never the template
    precision: str = "fp32"      # "fp32" | "bf16": autocast in fine-tuning and localization; predictions in fp32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    graft: GraftConfig = field(default_factory=lambda: GraftConfig(sparsity=1e-4))

    def _repr_pretty_(self, printer, cycle) -> None:
        """A notebook shows the setting one field per line, wrapped, never as one long line."""
        import dataclasses
        import textwrap

        def fields(obj) -> list[str]:
            return [f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj)]

        lines, top = [], []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                lines += textwrap.wrap(", ".join(fields(value)), 88, initial_indent=f"  {f.name}: ",
                                       subsequent_indent=" " * (len(f.name) + 4), break_on_hyphens=False)
            else:
                top.append(f"{f.name}={value!r}")
        printer.text("\n".join(["Setting(" + ", ".join(top) + ")", *lines]))

    def lab(self):
        return get_lab(self.model, self.device, self.max_length, self.test_size, self.precision)

    @classmethod
    def from_params(cls, **params) -> "Setting":
        """From a notebook's flat parameters: ``ft_<field>`` go to :class:`FinetuneConfig`,
        ``graft_<field>`` to :class:`GraftConfig`, the rest to this class; others are ignored."""
        own = {f.name for f in dataclasses.fields(cls)} - {"finetune", "graft"}
        ft = {k[3:]: v for k, v in params.items() if k.startswith("ft_")}
        gr = {k[6:]: v for k, v in params.items() if k.startswith("graft_")}
        return cls(**{k: v for k, v in params.items() if k in own},
                   finetune=FinetuneConfig(**ft), graft=GraftConfig(**{"sparsity": 1e-4, **gr}))


def _records(rows: list[dict]) -> pd.DataFrame:
    """A history stored as JSON records (NaN saved as "nan") back as a numeric frame."""
    return pd.DataFrame(rows).replace("nan", np.nan).infer_objects()


def _pooled(parts: list[tuple]) -> tuple:
    """Tuples of arrays aligned on examples (one per target or task) joined into one such tuple."""
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(parts[0])))


def _scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Accuracy, ECE, Brier, NLL and the mean confidence (highest class probability)."""
    return {**mt.calibration_summary(probs, labels, n_bins), "confidence": float(probs.max(axis=1).mean())}


# ---------------------------------------------------------------------------- 01: single task
@dataclass
class SingleTask:
    results: pd.DataFrame    # task, seed, start, target, variant, sparsity (final), mask_size, accuracy, ece, ...
    locations: pd.DataFrame  # task, seed, start, target, layer, module, count, share (of the graft mask)
    histories: pd.DataFrame  # task, seed, start, target, epoch, ... (localization, per epoch)
    finetuning: pd.DataFrame # task, seed, step, train_loss, dev_acc, fit_loss, fit_acc
    regime: pd.DataFrame = None   # per fine-tune: kept step, passes, train loss / accuracy (fine_tune_regime)
    grafts: pd.DataFrame = None   # per graft: size, entries in and out, equal to top movement (graft_regime)
    probs: dict = field(default_factory=dict)  # (task, seed, start, target, variant) -> (probs, labels), test set


def _graft_specs(lab, setting: Setting, dspec: dict, task: str, sparsities, starts) -> list[tuple]:
    """(start, target, graft spec) of one delta: refine at every target sparsity, grow once."""
    out = []
    for start in starts:
        cfg = dataclasses.replace(setting.graft, start=start)
        for target in (sparsities if start == "refine" else [np.nan]):
            out.append((start, target, lab.mask_spec(dspec, "graft", target, task=task, cfg=cfg)))
    return out


def single_task(tasks: list[str], seeds: list[int], sparsities: list[float], setting: Setting,
                starts: tuple[str, ...] = ("refine", "grow")) -> SingleTask:
    """Zero-shot, fine-tuned and grafted models on each task's test set, with top-movement and
    random masks of each graft's final size; grafts refined at each target sparsity and grown
    from the shipped script's tiny patch (``starts``)."""
    lab = setting.lab()
    total = num_graftable(lab.lm.model)
    rows, locs, hists, fts, probs, dspecs, gspecs = [], [], [], [], {}, [], []
    for task in tasks:
        zs = lab.predict(task, Variant("zero-shot"))
        for seed in seeds:
            probs[task, seed, None, np.nan, "zero-shot"] = zs
            rows.append(dict(task=task, seed=seed, variant="zero-shot", mask_size=0, **_scores(*zs)))
            dspec = lab.delta_spec(task, setting.k, seed, setting.finetune)
            dspecs.append((dict(task=task, seed=seed), dspec))
            ft_pred = lab.predict(task, Variant("fine-tuned", delta=dspec))
            probs[task, seed, None, np.nan, "fine-tuned"] = ft_pred
            rows.append(dict(task=task, seed=seed, variant="fine-tuned", **_scores(*ft_pred)))
            fts.append(_records(lab.delta_meta(dspec)["history"]).assign(task=task, seed=seed))
            for start, target, gspec in _graft_specs(lab, setting, dspec, task, sparsities, starts):
                tag = dict(task=task, seed=seed, start=start, target=target)
                gspecs.append((tag, gspec))
                for how in MASK_VARIANTS:
                    mspec = gspec if how == "graft" else lab.sized_like(gspec, how, seed=seed)
                    pred = lab.predict(task, Variant(how, delta=dspec, mask=mspec))
                    probs[task, seed, start, target, how] = pred
                    size = lab.mask_count(mspec)
                    rows.append(dict(**tag, variant=how, sparsity=size / total, mask_size=size, **_scores(*pred)))
                locs.append(pd.DataFrame(lab.mask_location(gspec)).assign(**tag))
                hists.append(_records(lab.mask_history(gspec)).assign(**tag))
    return SingleTask(pd.DataFrame(rows), pd.concat(locs, ignore_index=True), pd.concat(hists, ignore_index=True),
                      pd.concat(fts, ignore_index=True), fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs),
                      probs)


def fine_tune_regime(lab, dspecs: list[tuple[dict, dict]]) -> pd.DataFrame:
    """One row per fine-tune: the kept checkpoint's step, passes over the train set (kept and
    in all), whole-train-set loss and accuracy, and whether it fits the train set."""
    rows = []
    for tag, spec in dspecs:
        meta = lab.delta_meta(spec)
        rows.append(dict(**tag, **{k: meta.get(k, np.nan) for k in
                                   ("best_step", "passes", "total_passes", "train_loss", "train_acc", "fit",
                                    "best_dev_acc")}))
    return pd.DataFrame(rows)


def graft_regime(lab, gspecs: list[tuple[dict, dict]]) -> pd.DataFrame:
    """One row per graft: steps on S, the kept epoch, base and final sizes, entries that entered
    and left the base patch, and whether the kept mask equals the top-movement mask of its size
    (then the optimization added nothing there)."""
    rows = []
    for tag, spec in gspecs:
        meta = lab._meta("mask", spec)
        kept = next(r for r in meta["history"] if r["epoch"] == meta["best_epoch"])
        top = lab.mask(lab.sized_like(spec, "top-movement"))
        rows.append(dict(**tag, steps=spec["graft"]["epochs"], kept_epoch=meta["best_epoch"],
                         base_size=meta["base_count"], size=meta["count"], added=kept["added"],
                         removed=kept["removed"], equals_top_movement=bool(lab.mask(spec).equal(top))))
    return pd.DataFrame(rows)


def caveats(result, setting: Setting, start: str | None = None, seeds: list[int] | None = None) -> str:
    """What a reader should know next to a chapter's verdict, from its regime tables and
    results: the seeds and test examples behind it, whether every kept checkpoint fits its
    train set, how many grafts equal their top-movement mask (the optimization added
    nothing there), and the fine-tuning gain over zero-shot where the chapter has both."""
    out = []
    regime, grafts = getattr(result, "regime", None), getattr(result, "grafts", None)
    if grafts is not None and start is not None and "start" in grafts:
        grafts = grafts[grafts["start"] == start]
    if seeds is None:
        seeds = sorted(set(regime["seed"])) if regime is not None and "seed" in regime else []
    if len(seeds) == 1:
        out.append(f"one data seed ({seeds[0]}): no interval over seeds")
    elif seeds:
        out.append(f"{len(seeds)} data seeds × {setting.test_size} test examples per task")
    if regime is not None and len(regime):
        unfit = int((~regime["fit"].astype(bool)).sum())
        out.append("every kept checkpoint fits its train set" if unfit == 0 else
                   f"{unfit} of {len(regime)} fine-tunes never fit their train set (the last step was kept)")
    if grafts is not None and len(grafts):
        same = int(grafts["equals_top_movement"].sum())
        out.append("no graft equals its top-movement mask" if same == 0 else
                   f"{same} of {len(grafts)} grafts equal their top-movement mask (the optimization added nothing there)")
    res = getattr(result, "results", None)
    if res is not None and {"variant", "accuracy"} <= set(res.columns):
        rows = res[res["in_distribution"]] if "in_distribution" in res else res
        acc = rows.groupby("variant")["accuracy"].mean()
        if {"fine-tuned", "zero-shot"} <= set(acc.index):
            gain = 100 * (acc["fine-tuned"] - acc["zero-shot"])
            out.append(f"fine-tuning gained {gain:+.1f} points over zero-shot" + (" (in-distribution)" if
                                                                                  "in_distribution" in res else ""))
    return "; ".join(out)


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


def c1_intervals(result: SingleTask, start: str, target: float, **kw) -> dict[str, dict]:
    """Per task, the bootstrap intervals C1 is judged on (:func:`verdicts.c1_recovery`): gain of
    fine-tuning over zero-shot, recovery, share of the gain kept, graft − random of its size."""
    out = {}
    for task in sorted({k[0] for k in result.probs}):
        keys = [k for k in result.probs if k[0] == task and k[2] == start and k[4] == "graft"
                and (start == "grow" or np.isclose(k[3], target))]
        if not keys:
            continue
        groups = []
        for _, seed, _, tgt, _ in keys:
            p = lambda s, t, v: result.probs[task, seed, s, t, v][0]
            groups.append((p(start, tgt, "graft"), p(None, np.nan, "fine-tuned"), p(None, np.nan, "zero-shot"),
                           p(start, tgt, "random"), result.probs[task, seed, None, np.nan, "zero-shot"][1]))
        out[task] = {
            "gain": vd.accuracy_interval(groups, lambda g, f, z, r: f - z, **kw),
            "recovery": vd.accuracy_interval(groups, lambda g, f, z, r: g / f, **kw),
            "normalized": vd.accuracy_interval(groups, lambda g, f, z, r: (g - z) / (f - z) if f != z else np.nan, **kw),
            "vs_random": vd.accuracy_interval(groups, lambda g, f, z, r: g - r, **kw)}
    return out


# ---------------------------------------------------------------------------- 02: calibration
@dataclass
class Calibration:
    results: pd.DataFrame      # task, seed, variant, accuracy, ece, brier, nll, confidence, temperature
    reliability: pd.DataFrame  # task, variant, bin, lower, upper, count, confidence, accuracy, gap (seeds pooled)
    probs: dict = field(default_factory=dict)  # (task, seed, variant) -> (probs, labels) on the test set
    regime: pd.DataFrame = None  # fine_tune_regime of the fine-tunes
    grafts: pd.DataFrame = None  # graft_regime of the grafts


def calibration(tasks: list[str], seeds: list[int], sparsity: float, setting: Setting, n_bins: int = 10) -> Calibration:
    """Zero-shot, fine-tuned (plain and temperature-scaled on dev) and grafted models;
    ECE and reliability bins with ``n_bins`` equal-width confidence bins."""
    lab = setting.lab()
    rows, pooled, kept, dspecs, gspecs = [], {}, {}, [], []
    for task, seed in itertools.product(tasks, seeds):
        dspec = lab.delta_spec(task, setting.k, seed, setting.finetune)
        mspec = lab.mask_spec(dspec, "graft", sparsity, task=task, cfg=setting.graft)
        dspecs.append((dict(task=task, seed=seed), dspec))
        gspecs.append((dict(task=task, seed=seed), mspec))
        variants = [Variant("zero-shot"), Variant("fine-tuned", delta=dspec), Variant("graft", dspec, mspec, sparsity)]
        for v in variants:
            probs, labels = lab.predict(task, v)
            kept[task, seed, v.name] = (probs, labels)
            rows.append(dict(task=task, seed=seed, variant=v.name, temperature=1.0, **_scores(probs, labels, n_bins)))
            pooled.setdefault((task, v.name), []).append((probs, labels))
        # temperature scaling of the fine-tuned model, fitted on its dev predictions
        dev_probs, dev_labels = lab.predict(task, variants[1], split="dev", k=setting.k, seed=seed)
        temp = mt.fit_temperature(np.log(np.clip(dev_probs, 1e-12, None)), dev_labels)
        probs, labels = pooled[(task, "fine-tuned")][-1]
        scaled = mt.softmax(np.log(np.clip(probs, 1e-12, None)), temperature=temp)
        rows.append(dict(task=task, seed=seed, variant="fine-tuned+TS", temperature=temp, **_scores(scaled, labels, n_bins)))
        pooled.setdefault((task, "fine-tuned+TS"), []).append((scaled, labels))
        kept[task, seed, "fine-tuned+TS"] = (scaled, labels)
    bins = []
    for (task, variant), parts in pooled.items():
        probs = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        bins.append(mt.reliability_bins(probs, labels, n_bins).assign(task=task, variant=variant,
                                                                       ece=mt.ece(probs, labels, n_bins)))
    return Calibration(pd.DataFrame(rows), pd.concat(bins, ignore_index=True), kept,
                       fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs))


def c2_intervals(cal: Calibration, n_bins: int = 10, against: str = "fine-tuned", **kw) -> tuple:
    """(relative ECE reduction, ECE gap) of the graft against ``against``, over all tasks and
    seeds (each task × seed a bootstrap group), for :func:`verdicts.c2_calibration`."""
    groups = [(cal.probs[t, s, "graft"][0], cal.probs[t, s, against][0], cal.probs[t, s, "graft"][1])
              for t, s, v in cal.probs if v == "graft"]
    if not groups:
        return None, None
    return vd.ece_reduction(groups, n_bins, **kw), vd.ece_gap(groups, n_bins, **kw)


# ---------------------------------------------------------------------------- 03: out of distribution
@dataclass
class OOD:
    results: pd.DataFrame    # source, target, seed, variant, in_distribution, accuracy, ece, brier, nll, confidence
    probs: dict = field(default_factory=dict)  # (source, target, seed, variant) -> (probs, labels)
    regime: pd.DataFrame = None  # fine_tune_regime of the sources' fine-tunes
    grafts: pd.DataFrame = None  # graft_regime of their grafts


def ood(sources: list[str], targets: list[str], seeds: list[int], sparsity: float, setting: Setting) -> OOD:
    """Fine-tune and graft on each source; evaluate on the source's test set and every target's.

    Targets are scored with the *source's* prompt, the one the model was tuned with (all
    sentiment sets share the class order negative, positive). One row per source ×
    target × seed × variant, with accuracy, ECE, Brier, NLL and ``in_distribution``.
    """
    lab = setting.lab()
    rows, kept, dspecs, gspecs = [], {}, [], []
    for source, seed in itertools.product(sources, seeds):
        dspec = lab.delta_spec(source, setting.k, seed, setting.finetune)
        mspec = lab.mask_spec(dspec, "graft", sparsity, task=source, cfg=setting.graft)
        dspecs.append((dict(task=source, seed=seed), dspec))
        gspecs.append((dict(task=source, seed=seed), mspec))
        variants = [Variant("zero-shot"), Variant("fine-tuned", delta=dspec), Variant("graft", dspec, mspec, sparsity)]
        for target in [source] + [t for t in targets if t != source]:
            for v in variants:
                probs, labels = lab.predict(target, v, prompt_task=source)
                kept[source, target, seed, v.name] = (probs, labels)
                rows.append(dict(source=source, target=target, seed=seed, variant=v.name,
                                 in_distribution=target == source, **_scores(probs, labels)))
    return OOD(pd.DataFrame(rows), kept, fine_tune_regime(lab, dspecs), graft_regime(lab, gspecs))


def c3_intervals(result: OOD, **kw) -> tuple:
    """(overall, per target pair) intervals of graft − fine-tuned accuracy out of distribution,
    for :func:`verdicts.c3_ood`; overall pools every OOD target of a source and seed."""
    pairs = sorted({(s, t) for s, t, _, v in result.probs if s != t and v == "graft"})
    seeds = sorted({seed for _, _, seed, _ in result.probs})
    def group(s, t, seed):
        return (result.probs[s, t, seed, "graft"][0], result.probs[s, t, seed, "fine-tuned"][0],
                result.probs[s, t, seed, "graft"][1])
    per = {f"{s}→{t}": vd.accuracy_gap([group(s, t, seed) for seed in seeds], **kw) for s, t in pairs}
    if not pairs:
        return None, per
    pooled = []
    for src in sorted({s for s, _ in pairs}):
        for seed in seeds:
            pooled.append(_pooled([group(s, t, seed) for s, t in pairs if s == src]))
    return vd.accuracy_gap(pooled, **kw), per


# ---------------------------------------------------------------------------- 04: multi-task
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


def _cosine(a: dict, b: dict) -> float:
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = sum(float(a[n].double().pow(2).sum()) for n in a) ** 0.5
    nb = sum(float(b[n].double().pow(2).sum()) for n in b) ** 0.5
    return dot / (na * nb)


def multitask(tasks: list[str], seed: int, sparsity: float, setting: Setting,
              compare_bases: bool = False) -> MultiTask:
    """One model fine-tuned on all ``tasks`` at once; a region per task; how they overlap.

    Regions are localized from ``setting.graft.base``. With ``compare_bases``, the regions from
    the other base patch are localized too, for their overlap (``alt_overlap``): with one δ
    shared by all tasks, the official top-movement base patch is the same for every task.
    """
    from .tasks import get_task

    lab = setting.lab()
    mt_spec = lab.delta_spec(tasks, setting.k, seed, setting.finetune, mode="multitask")
    regions = {t: lab.mask_spec(mt_spec, "graft", sparsity, task=t, cfg=setting.graft) for t in tasks}
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
    single = {t: lab.delta_spec(t, setting.k, seed, setting.finetune) for t in tasks}
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
                             similarity=_cosine(lab.delta(single[a]), lab.delta(single[b])),
                             overlap=(overlap.loc[a, b] + overlap.loc[b, a]) / 2, jaccard=jac.loc[a, b]))
    out = MultiTask(masks, overlap, jac, rnd, cross.astype(float), pd.DataFrame(acc_rows), pd.DataFrame(sim_rows))
    out.regime = fine_tune_regime(lab, [(dict(model="multi-task", task=", ".join(tasks)), mt_spec)]
                                  + [(dict(model="single-task", task=t), single[t]) for t in tasks])
    out.grafts = graft_regime(lab, [(dict(task=t), spec) for t, spec in regions.items()])
    if compare_bases:  # the same regions localized from the other base patch: overlaps only (no evaluations)
        out.alt_base = "movement" if setting.graft.base == "gradient" else "gradient"
        alt_cfg = dataclasses.replace(setting.graft, base=out.alt_base)
        alt = {t: lab.mask(lab.mask_spec(mt_spec, "graft", sparsity, task=t, cfg=alt_cfg)) for t in tasks}
        out.alt_overlap = mt.overlap_matrix(alt, "asymmetric")
    return out


# ---------------------------------------------------------------------------- 05: continual learning
CONTINUAL_METHODS = ("sequential", "graft (task known)", "stitched")


@dataclass
class Continual:
    matrices: dict            # method -> accuracy matrix R (after stage t, on task j), mean over seeds
    summary: pd.DataFrame     # method, average_accuracy, backward_transfer, forgetting (means over seeds)
    regions: pd.DataFrame     # seed, stage, task, region size, sparsity
    per_seed: pd.DataFrame = None  # seed, method, average_accuracy, backward_transfer, forgetting
    probs: dict = field(default_factory=dict)  # (seed, method, stage t, task j) -> (probs, labels)
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
    per_seed_R, kept, regions, dspecs, gspecs = {m: [] for m in methods}, {}, [], [], []
    for seed in seeds:
        stages = [lab.delta_spec(sequence, setting.k, seed, setting.finetune, mode="sequential", stage=t)
                  for t in range(T)]
        mspecs = []
        for t, task in enumerate(sequence):
            # the stage's own update θ_t − θ_{t−1}, localized on top of θ_{t−1} (stage 0: the single-task graft)
            own = {"of": stages[t], "minus": stages[t - 1], "k": setting.k, "seed": seed} if t else stages[0]
            mspecs.append(lab.mask_spec(own, "graft", sparsity, task=task, cfg=setting.graft,
                                        base=stages[t - 1] if t else None))
            dspecs.append((dict(seed=seed, stage=t + 1, task=task), stages[t]))
            gspecs.append((dict(seed=seed, stage=t + 1, task=task), mspecs[-1]))
        R = {m: pd.DataFrame(np.nan, index=idx, columns=cols) for m in CONTINUAL_METHODS}

        def record(method, t, j, task, variant):
            pred = lab.predict(task, variant)
            kept[seed, method, t, j] = pred
            R[method].iloc[t, j] = mt.accuracy(*pred)

        for t in range(T):
            stitched = _stitched_variant(lab, stages, mspecs, t, sparsity)
            for j, task in enumerate(sequence):
                record("sequential", t, j, task, Variant("sequential", delta=stages[t]))
                record("stitched", t, j, task, stitched)
                if j <= t:
                    record("graft (task known)", t, j, task,
                           Variant("graft", mspecs[j]["delta"], mspecs[j], sparsity))
        if with_multitask:
            multi = lab.delta_spec(sequence, setting.k, seed, setting.finetune, mode="multitask")
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


def c5_intervals(result: Continual, method: str = "graft (task known)", **kw) -> tuple:
    """(BWT gap, final average accuracy gap) of ``method`` − sequential, over seeds and test
    examples, for :func:`verdicts.c5_continual`; (None, None) for a one-task sequence."""
    T = len(next(iter(result.matrices.values())).columns)
    seeds = sorted({k[0] for k in result.probs})
    if T < 2:
        return None, None
    p = lambda seed, m, t, j: result.probs[seed, m, t, j][0]
    bwt, final = [], []
    for seed in seeds:
        # BWT = mean over j < T of R[T, j] − R[j, j]; test sets of equal size, so pooling is the mean
        bwt.append(_pooled([(p(seed, method, T - 1, j), p(seed, method, j, j), p(seed, "sequential", T - 1, j),
                             p(seed, "sequential", j, j), result.probs[seed, "sequential", j, j][1])
                            for j in range(T - 1)]))
        final.append(_pooled([(p(seed, method, T - 1, j), p(seed, "sequential", T - 1, j),
                               result.probs[seed, "sequential", j, j][1]) for j in range(T)]))
    return (vd.accuracy_interval(bwt, lambda a, b, c, d: (a - b) - (c - d), **kw),
            vd.accuracy_gap(final, **kw))


def _stitched_variant(lab, stages, mspecs, t: int, sparsity: float) -> Variant:
    """All regions of stages 0..t stitched into θ_pre (the stitched delta is zero off the union);
    after the first stage there is one region, and stitching it is grafting it."""
    if t == 0:
        return Variant("stitched", mspecs[0]["delta"], mspecs[0], sparsity)
    return Variant("stitched", delta={"stitch": mspecs[:t + 1]}, sparsity=sparsity)
