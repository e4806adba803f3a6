"""What every chapter shares: the :class:`Setting`, the regime tables and the caveats.

A chapter module (:mod:`skillgraft.chapters`) builds its models from recipes resolved by the
lab (:mod:`skillgraft.lab`), so chapters that share settings share work. Frames have one
row per task × seed × variant (× sparsity, target, ...) and one column per metric;
:mod:`skillgraft.plots` draws them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as mt
from ..finetune import FinetuneConfig
from ..lab import Variant, get_lab
from ..localization import GraftConfig

__all__ = ["Setting", "MASK_VARIANTS", "three_models", "fine_tune_regime", "graft_regime", "caveats", "scores", "records", "pooled", "scope"]

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
        """The lab this setting resolves through: the one given to :meth:`using`, else the shared
        lab of its model, device, lengths and precision."""
        given = self.__dict__.get("_lab")
        return given if given is not None else get_lab(self.model, self.device, self.max_length, self.test_size,
                                                       self.precision)

    def using(self, lab) -> "Setting":
        """A copy of this setting that resolves through ``lab`` (a planning lab, a lab with its own
        store) instead of the shared one."""
        out = dataclasses.replace(self)
        out.__dict__["_lab"] = lab
        return out

    @classmethod
    def from_params(cls, **params) -> "Setting":
        """From a notebook's flat parameters: ``ft_<field>`` go to :class:`FinetuneConfig`,
        ``graft_<field>`` to :class:`GraftConfig`, the rest to this class; others are ignored."""
        own = {f.name for f in dataclasses.fields(cls)} - {"finetune", "graft"}
        ft = {k[3:]: v for k, v in params.items() if k.startswith("ft_")}
        gr = {k[6:]: v for k, v in params.items() if k.startswith("graft_")}
        return cls(**{k: v for k, v in params.items() if k in own},
                   finetune=FinetuneConfig(**ft), graft=GraftConfig(**{"sparsity": 1e-4, **gr}))


def records(rows: list[dict]) -> pd.DataFrame:
    """A history stored as JSON records (NaN saved as "nan") back as a numeric frame."""
    return pd.DataFrame(rows).replace("nan", np.nan).infer_objects()


def pooled(parts: list[tuple]) -> tuple:
    """Tuples of arrays aligned on examples (one per target or task) joined into one such tuple."""
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(parts[0])))


def scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Accuracy, ECE, Brier, NLL and the mean confidence (highest class probability)."""
    return {**mt.calibration_summary(probs, labels, n_bins), "confidence": float(probs.max(axis=1).mean())}


def fine_tune_regime(lab, dspecs: list[tuple]) -> pd.DataFrame:
    """One row per fine-tune: the kept checkpoint's step, passes over the train set (kept and
    in all), whole-train-set loss and accuracy, and whether it fits the train set."""
    rows = []
    for tag, spec in dspecs:
        meta = lab.meta(spec)
        rows.append(dict(**tag, **{k: meta.get(k, np.nan) for k in
                                   ("best_step", "passes", "total_passes", "train_loss", "train_acc", "fit",
                                    "best_dev_acc")}))
    return pd.DataFrame(rows)


def graft_regime(lab, gspecs: list[tuple]) -> pd.DataFrame:
    """One row per graft: steps on S, the kept epoch, base and final sizes, entries that entered
    and left the base patch, and whether the kept mask equals the top-movement mask of its size
    (then the optimization added nothing there)."""
    rows = []
    for tag, spec in gspecs:
        meta = lab.meta(spec)
        kept = next(r for r in meta["history"] if r["epoch"] == meta["best_epoch"])
        top = lab.mask(lab.sized_like(spec, "top-movement"))
        rows.append(dict(**tag, steps=spec.graft.epochs, kept_epoch=meta["best_epoch"],
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


def three_models(lab, setting: Setting, task: str, seed: int, sparsity: float, dspecs: list, gspecs: list) -> list:
    """The zero-shot, fine-tuned and grafted models of ``task`` from data seed ``seed``; the
    recipes of the fine-tune and the graft are added to ``dspecs`` and ``gspecs`` (for
    :func:`fine_tune_regime` and :func:`graft_regime`)."""
    dspec = lab.fine_tune(task, setting.k, seed, setting.finetune)
    mspec = lab.graft(dspec, task, sparsity, setting.graft)
    dspecs.append((dict(task=task, seed=seed), dspec))
    gspecs.append((dict(task=task, seed=seed), mspec))
    return [Variant("zero-shot"), Variant("fine-tuned", delta=dspec), Variant("graft", dspec, mspec, sparsity)]


def evidence(tasks: list[str], seeds: list[int], test_size: int) -> str:
    """What a verdict rests on, in words: its tasks with their families, seeds and test examples."""
    from ..tasks import get_task

    tasks = list(dict.fromkeys(tasks))
    named = ", ".join(f"{t} ({get_task(t).family})" for t in tasks)
    return (f"{len(tasks)} task{'s' * (len(tasks) != 1)} in {families(tasks)}: "
            f"{named}; {len(seeds)} data seed{'s' * (len(seeds) != 1)}; {test_size} test examples per task")


def scope(tasks: list[str], seeds: list[int], units: str | None = None) -> str:
    """What a verdict rests on in a few words, for a table cell: its units (default: the tasks), their families and
    the seeds ("8 tasks in 5 families × 3 seeds"); :func:`evidence` names them."""
    tasks = list(dict.fromkeys(tasks))
    head = units or f"{len(tasks)} task{'s' * (len(tasks) != 1)}"
    return f"{head} in {families(tasks)} × {len(seeds)} seed{'s' * (len(seeds) != 1)}"


def families(tasks: list[str]) -> str:
    """How many task families ``tasks`` span, in words ("2 families", "1 family")."""
    from ..tasks import get_task

    n = len({get_task(t).family for t in tasks})
    return f"{n} famil{'ies' if n != 1 else 'y'}"


def confidence_words(rows: pd.DataFrame) -> str:
    """Mean confidence against accuracy of ``rows`` (a results frame), in words: over- or
    under-confident by how many points."""
    conf, acc = float(rows.confidence.mean()), float(rows.accuracy.mean())
    how = "over" if conf > acc else "under"
    return f"mean confidence {conf:.1%} against accuracy {acc:.1%}, {how}-confident by {100 * abs(conf - acc):.1f} points"


def difference_words(interval, better: str, worse: str) -> str:
    """``better`` when ``interval`` lies above zero, ``worse`` below, else "no difference"."""
    return better if interval.sign > 0 else worse if interval.sign < 0 else "no difference (the interval contains zero)"
