"""The official trainer's selection and clipping rules against the chapters' and the earlier ones.

    python benchmarks/trainer_rules.py                      # mr, seeds 13 21 42 (the method page's table)
    python benchmarks/trainer_rules.py --tasks mr sms --seeds 13

Three rules on the chapters' fine-tuning regime (notebook 01's defaults), per task and seed:

- official: ties between dev checks go to the later check (``objective >= best``) and the
  gradient norm is clipped at 1.0 (the transformers Trainer's ``max_grad_norm``);
- chapters: ties to the later check, no clipping (the chapters' default);
- before: ties to the first check, no clipping (this compendium's earlier rule).

For each fine-tune: the kept step and passes, the kept model's whole-train-set loss and accuracy,
whether it fits the train set (the chapters' gate: accuracy 1, loss <= 0.01), and the test
accuracy, ECE and mean confidence of the fine-tuned model. Writes a markdown table to stdout
(and to ``--out``). The chapters' rule shares notebook 01's fine-tunes; the other two are computed
(or read from the local store / published results) like any recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from skillgraft import metrics
from skillgraft.chapters.common import Setting
from skillgraft.lab import Variant
from skillgraft.parameters import notebook_parameters

RULES = {"official": {"ties": "later", "max_grad_norm": 1.0},
         "chapters": {"ties": "later", "max_grad_norm": None},
         "before": {"ties": "first", "max_grad_norm": None}}
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_single_task_grafting.ipynb"


def rows(tasks: list[str], seeds: list[int]) -> list[dict]:
    params = notebook_parameters(NOTEBOOK)
    setting = Setting.from_params(**params)
    lab = setting.lab()
    out = []
    for task in tasks:
        for seed in seeds:
            for rule, change in RULES.items():
                cfg = dataclasses.replace(setting.finetune, **change)
                recipe = lab.fine_tune(task, setting.k, seed, cfg)
                meta = lab.meta(recipe)
                probs, labels = lab.predict(task, Variant("fine-tuned", delta=recipe))
                out.append({"task": task, "seed": seed, "rule": rule, "kept step": meta["best_step"],
                            "passes": meta["passes"], "train loss": meta["train_loss"],
                            "train acc": meta["train_acc"], "fits": bool(meta["fit"]),
                            "test acc": metrics.accuracy(probs, labels), "test ECE": metrics.ece(probs, labels),
                            "confidence": float(np.max(probs, axis=1).mean())})
    return out


def table(found: list[dict]) -> str:
    cols = list(found[0])
    fmt = {"passes": "{:.1f}", "train loss": "{:.4f}", "train acc": "{:.3f}", "test acc": "{:.3f}",
           "test ECE": "{:.3f}", "confidence": "{:.3f}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in found:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    means = []
    for rule in RULES:
        mine = [r for r in found if r["rule"] == rule]
        means.append(f"| {rule} | {sum(r['fits'] for r in mine)} of {len(mine)} | "
                     f"{np.mean([r['passes'] for r in mine]):.1f} | {np.mean([r['test ECE'] for r in mine]):.3f} | "
                     f"{np.mean([r['confidence'] for r in mine]):.3f} |")
    return "\n".join(lines + ["", "| rule | fits | mean passes | mean test ECE | mean confidence |",
                              "|---|---|---|---|---|"] + means) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["mr"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    text = table(rows(args.tasks, args.seeds))
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Command: `python benchmarks/trainer_rules.py {' '.join(argv or sys.argv[1:])}`\n\n{text}")


if __name__ == "__main__":
    main()
