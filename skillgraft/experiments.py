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
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    graft: GraftConfig = field(default_factory=lambda: GraftConfig(sparsity=1e-4))

    def lab(self):
        return get_lab(self.model, self.device, self.max_length, self.test_size)

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


def _scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    return mt.calibration_summary(probs, labels, n_bins)


# ---------------------------------------------------------------------------- 01: single task
@dataclass
class SingleTask:
    results: pd.DataFrame    # task, seed, variant, sparsity, mask_size, accuracy, ece, brier, nll
    locations: pd.DataFrame  # task, seed, sparsity, layer, module, count, share (of the graft mask)
    histories: pd.DataFrame  # task, seed, sparsity, epoch, ... (localization, per epoch)
    finetuning: pd.DataFrame # task, seed, step, train_loss, dev_acc


def _single_variants(lab, setting: Setting, task: str, seed: int, sparsities):
    """(variant, delta spec) pairs of one task and seed: fine-tuned, and every mask kind per sparsity."""
    dspec = lab.delta_spec(task, setting.k, seed, setting.finetune)
    yield Variant("fine-tuned", delta=dspec)
    for s, how in itertools.product(sparsities, MASK_VARIANTS):
        mspec = lab.mask_spec(dspec, how, s, task=task, cfg=setting.graft, seed=seed)
        yield Variant(how, delta=dspec, mask=mspec, sparsity=s)


def single_task(tasks: list[str], seeds: list[int], sparsities: list[float], setting: Setting) -> SingleTask:
    """Zero-shot, fine-tuned, grafted and baseline-masked models on each task's test set."""
    lab = setting.lab()
    rows, locs, hists, fts = [], [], [], []
    for task in tasks:
        zs = _scores(*lab.predict(task, Variant("zero-shot")))
        for seed in seeds:
            rows.append(dict(task=task, seed=seed, variant="zero-shot", sparsity=np.nan, mask_size=0, **zs))
            for v in _single_variants(lab, setting, task, seed, sparsities):
                probs, labels = lab.predict(task, v)
                size = lab.mask_count(v.mask) if v.mask else np.nan
                rows.append(dict(task=task, seed=seed, variant=v.name, sparsity=v.sparsity, mask_size=size,
                                 **_scores(probs, labels)))
                if v.name == "graft":
                    tag = dict(task=task, seed=seed, sparsity=v.sparsity)
                    locs.append(pd.DataFrame(lab.mask_location(v.mask)).assign(**tag))
                    hists.append(_records(lab.mask_history(v.mask)).assign(**tag))
                if v.name == "fine-tuned":
                    meta = lab.delta_meta(v.delta)
                    fts.append(_records(meta["history"]).assign(task=task, seed=seed))
    return SingleTask(pd.DataFrame(rows), pd.concat(locs, ignore_index=True), pd.concat(hists, ignore_index=True),
                      pd.concat(fts, ignore_index=True))


def recovery_table(results: pd.DataFrame, min_gain: float = 0.01) -> pd.DataFrame:
    """Mean accuracy over seeds per task × variant × sparsity, with recovery = acc / fine-tuned
    and normalized recovery = (acc − zero-shot) / (fine-tuned − zero-shot), both from the
    seed means. The normalized recovery is NaN where fine-tuning gained less than
    ``min_gain`` over zero-shot: there is then no gain to recover."""
    ref = (results[results.variant.isin(["fine-tuned", "zero-shot"])]
           .groupby(["task", "variant"])["accuracy"].mean().unstack())
    out = (results[results.variant.isin(MASK_VARIANTS)]
           .groupby(["task", "variant", "sparsity"], as_index=False)[["accuracy", "mask_size"]].mean())
    out["fine_tuned"] = ref["fine-tuned"].reindex(out.task).values
    out["zero_shot"] = ref["zero-shot"].reindex(out.task).values
    gain = out.fine_tuned - out.zero_shot
    out["recovery"] = out.accuracy / out.fine_tuned
    out["normalized_recovery"] = ((out.accuracy - out.zero_shot) / gain).where(gain >= min_gain)
    return out[["task", "variant", "sparsity", "accuracy", "fine_tuned", "zero_shot", "recovery",
                "normalized_recovery", "mask_size"]]


def sparsity_to_reach(results: pd.DataFrame, share: float = 0.95, variant: str = "graft") -> pd.DataFrame:
    """Per task: the smallest sparsity at which the mean ``variant`` accuracy reaches ``share`` × fine-tuned."""
    table = recovery_table(results)
    rows = []
    for task, grp in table[table.variant == variant].groupby("task"):
        ok = grp[grp.accuracy >= share * grp.fine_tuned].sort_values("sparsity")
        rows.append(dict(task=task, share=share, sparsity=ok.sparsity.iloc[0] if len(ok) else np.nan))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- 02: calibration
@dataclass
class Calibration:
    results: pd.DataFrame      # task, seed, variant, accuracy, ece, brier, nll, temperature
    reliability: pd.DataFrame  # task, variant, bin, lower, upper, count, confidence, accuracy, gap (seeds pooled)


def calibration(tasks: list[str], seeds: list[int], sparsity: float, setting: Setting, n_bins: int = 10) -> Calibration:
    """Zero-shot, fine-tuned (plain and temperature-scaled on dev) and grafted models;
    ECE and reliability bins with ``n_bins`` equal-width confidence bins."""
    lab = setting.lab()
    rows, pooled = [], {}
    for task, seed in itertools.product(tasks, seeds):
        dspec = lab.delta_spec(task, setting.k, seed, setting.finetune)
        mspec = lab.mask_spec(dspec, "graft", sparsity, task=task, cfg=setting.graft)
        variants = [Variant("zero-shot"), Variant("fine-tuned", delta=dspec), Variant("graft", dspec, mspec, sparsity)]
        for v in variants:
            probs, labels = lab.predict(task, v)
            rows.append(dict(task=task, seed=seed, variant=v.name, temperature=1.0, **_scores(probs, labels, n_bins)))
            pooled.setdefault((task, v.name), []).append((probs, labels))
        # temperature scaling of the fine-tuned model, fitted on its dev predictions
        dev_probs, dev_labels = lab.predict(task, variants[1], split="dev", k=setting.k, seed=seed)
        temp = mt.fit_temperature(np.log(np.clip(dev_probs, 1e-12, None)), dev_labels)
        probs, labels = pooled[(task, "fine-tuned")][-1]
        scaled = mt.softmax(np.log(np.clip(probs, 1e-12, None)), temperature=temp)
        rows.append(dict(task=task, seed=seed, variant="fine-tuned+TS", temperature=temp, **_scores(scaled, labels, n_bins)))
        pooled.setdefault((task, "fine-tuned+TS"), []).append((scaled, labels))
    bins = []
    for (task, variant), parts in pooled.items():
        probs = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        bins.append(mt.reliability_bins(probs, labels, n_bins).assign(task=task, variant=variant,
                                                                       ece=mt.ece(probs, labels, n_bins)))
    return Calibration(pd.DataFrame(rows), pd.concat(bins, ignore_index=True))


# ---------------------------------------------------------------------------- 03: out of distribution
def ood(sources: list[str], targets: list[str], seeds: list[int], sparsity: float, setting: Setting) -> pd.DataFrame:
    """Fine-tune and graft on each source; evaluate on the source's test set and every target's.

    Targets are scored with the *source's* prompt, the one the model was tuned with (all
    sentiment sets share the class order negative, positive). One row per source ×
    target × seed × variant, with accuracy, ECE, Brier, NLL and ``in_distribution``.
    """
    lab = setting.lab()
    rows = []
    for source, seed in itertools.product(sources, seeds):
        dspec = lab.delta_spec(source, setting.k, seed, setting.finetune)
        mspec = lab.mask_spec(dspec, "graft", sparsity, task=source, cfg=setting.graft)
        variants = [Variant("zero-shot"), Variant("fine-tuned", delta=dspec), Variant("graft", dspec, mspec, sparsity)]
        for target in [source] + [t for t in targets if t != source]:
            for v in variants:
                probs, labels = lab.predict(target, v, prompt_task=source)
                rows.append(dict(source=source, target=target, seed=seed, variant=v.name,
                                 in_distribution=target == source, **_scores(probs, labels)))
    return pd.DataFrame(rows)


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
    masks = {t: lab.mask(lab.mask_spec(mt_spec, "graft", sparsity, task=t, cfg=setting.graft)) for t in tasks}
    overlap, jac = mt.overlap_matrix(masks, "asymmetric"), mt.overlap_matrix(masks, "jaccard")
    total = next(iter(masks.values())).total
    sizes = {t: m.count for t, m in masks.items()}
    rnd = mt.random_overlap_matrix(sizes, total, "asymmetric")
    cross = pd.DataFrame(index=pd.Index(tasks, name="region of"), columns=pd.Index(tasks, name="evaluated on"),
                         dtype=float)
    acc_rows = []
    for i in tasks:
        mspec = lab.mask_spec(mt_spec, "graft", sparsity, task=i, cfg=setting.graft)
        for j in tasks:
            cross.loc[i, j] = mt.accuracy(*lab.predict(j, Variant("graft", mt_spec, mspec, sparsity)))
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
    if compare_bases:  # the same regions localized from the other base patch: overlaps only (no evaluations)
        out.alt_base = "movement" if setting.graft.base == "gradient" else "gradient"
        alt_cfg = dataclasses.replace(setting.graft, base=out.alt_base)
        alt = {t: lab.mask(lab.mask_spec(mt_spec, "graft", sparsity, task=t, cfg=alt_cfg)) for t in tasks}
        out.alt_overlap = mt.overlap_matrix(alt, "asymmetric")
    return out


# ---------------------------------------------------------------------------- 05: continual learning
@dataclass
class Continual:
    matrices: dict            # method -> accuracy matrix R (after stage t, on task j)
    summary: pd.DataFrame     # method, average_accuracy, backward_transfer, forgetting
    regions: pd.DataFrame     # stage, task, region size, sparsity


def continual(sequence: list[str], seed: int, sparsity: float, setting: Setting) -> Continual:
    """Learn ``sequence`` one task after another; compare ways to keep earlier skills.

    - sequential: plain fine-tuning, stage after stage (θ_t);
    - graft (task known): stage t's region is localized on θ_t vs θ_{t−1} with task t's
      data; task j is answered by θ_pre + γ_j ⊙ (θ_j − θ_{j−1}), the graft of its own stage;
    - stitched (task unknown): all regions learned so far merged into one model,
      overlaps averaged (Localize-and-Stitch);
    - multitask: one model fine-tuned on all tasks at once, the reference upper bound.
    """
    lab = setting.lab()
    T = len(sequence)
    stages = [lab.delta_spec(sequence, setting.k, seed, setting.finetune, mode="sequential", stage=t) for t in range(T)]
    mspecs = []
    for t, task in enumerate(sequence):
        # the stage's own update θ_t − θ_{t−1}, localized on top of θ_{t−1} (stage 0: the single-task graft)
        own = {"of": stages[t], "minus": stages[t - 1], "k": setting.k, "seed": seed} if t else stages[0]
        mspecs.append(lab.mask_spec(own, "graft", sparsity, task=task, cfg=setting.graft,
                                    base=stages[t - 1] if t else None))
    idx = pd.Index(range(1, T + 1), name="after stage")
    cols = pd.Index(sequence, name="task")
    R = {m: pd.DataFrame(np.nan, index=idx, columns=cols) for m in ("sequential", "graft (task known)", "stitched")}
    for t in range(T):
        stitched = _stitched_variant(lab, stages, mspecs, t, sparsity)
        for j, task in enumerate(sequence):
            R["sequential"].iloc[t, j] = mt.accuracy(*lab.predict(task, Variant("sequential", delta=stages[t])))
            R["stitched"].iloc[t, j] = mt.accuracy(*lab.predict(task, stitched))
            if j <= t:
                R["graft (task known)"].iloc[t, j] = mt.accuracy(*lab.predict(task, Variant("graft", mspecs[j]["delta"], mspecs[j], sparsity)))
    multi = lab.delta_spec(sequence, setting.k, seed, setting.finetune, mode="multitask")
    R["multitask"] = pd.DataFrame([[mt.accuracy(*lab.predict(task, Variant("multitask", delta=multi))) for task in sequence]],
                                  index=pd.Index([T], name="after stage"), columns=cols)
    summary = pd.DataFrame([dict(method=m, average_accuracy=float(r.iloc[-1].mean()),  # mean of the final row
                                 backward_transfer=mt.backward_transfer(r) if len(r) > 1 else np.nan,
                                 forgetting=mt.forgetting(r) if len(r) > 1 else np.nan) for m, r in R.items()])
    counts = [lab.mask_count(m) for m in mspecs]
    total = num_graftable(lab.lm.model)
    regions = pd.DataFrame([dict(stage=t + 1, task=task, region_size=n, sparsity=n / total)
                            for t, (task, n) in enumerate(zip(sequence, counts))])
    return Continual(R, summary, regions)


def _stitched_variant(lab, stages, mspecs, t: int, sparsity: float) -> Variant:
    """All regions of stages 0..t stitched into θ_pre (the stitched delta is zero off the union);
    after the first stage there is one region, and stitching it is grafting it."""
    if t == 0:
        return Variant("stitched", mspecs[0]["delta"], mspecs[0], sparsity)
    return Variant("stitched", delta={"stitch": mspecs[:t + 1]}, sparsity=sparsity)
