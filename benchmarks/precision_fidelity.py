"""fp32 against bf16 autocast on the chapters' own settings: speed, and whether results move.

For one task and two data seeds, chapter 01's defaults are run twice, with fine-tuning and
localization in fp32 and in bf16 (forward and backward under autocast; weights, δ, S and
probabilities in fp32), each in a store of its own so nothing is shared: the fine-tuned
model, the graft of the chapters' start and the zero-shot model are scored on the test set
(predictions are made in fp32 in both runs, as in the chapters; bf16 predictions moved the
zero-shot accuracy by 2 points when they were tried). bf16 is faithful
here if, for every model and metric, the mean difference from fp32 is within the
seed-to-seed spread (max − min over seeds) of the fp32 run. Also timed, as ratios within
this run: one fine-tuning step and one 200-example prediction.

    python benchmarks/precision_fidelity.py [--task mr] [--seeds 13 21] [--out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skillgraft import cli
from skillgraft.chapters import common as ex
from skillgraft.store import Store
from skillgraft.lab import Lab, Variant

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(lab: Lab, task: str, batch_size: int, repeats: int = 4) -> float:
    """Median seconds of one fine-tuning step (forward, backward, SGD) on ``batch_size`` train examples."""
    from skillgraft.grafting import only_graftable_trainable, snapshot

    clf, model = lab.classifier(task), lab.lm.model
    batch = clf.encode(lab.splits(task, 16, 13).train[:batch_size])
    times = []
    with only_graftable_trainable(model) as params:
        origin = snapshot(model)
        opt = torch.optim.SGD(list(params.values()), lr=1e-3)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            loss = clf.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(origin[n])
    return float(np.median(times[1:]))


def predict_seconds(lab: Lab, task: str) -> float:
    data = lab.splits(task, 16, 13).test
    start = time.perf_counter()
    lab.classifier(task).predict_proba(data, batch_size=16)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mr")
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21])
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    params = cli.notebook_parameters(ROOT / "notebooks" / "01_single_task_grafting.ipynb")
    base = ex.Setting.from_params(**params)
    rows, speed = [], {}
    for precision in ("fp32", "bf16"):
        setting = dataclasses.replace(base, precision=precision)
        with tempfile.TemporaryDirectory() as tmp:
            lab = Lab(setting.model, setting.device, setting.max_length, setting.test_size, store=Store(tmp),
                      precision=precision)
            speed[precision] = {"step_b8": step_seconds(lab, args.task, 8),
                                "predict_200": predict_seconds(lab, args.task)}
            for seed in args.seeds:
                start = time.perf_counter()
                dspec = lab.fine_tune(args.task, setting.k, seed, setting.finetune)
                gspec = lab.graft(dspec, args.task, params["claim_sparsity"], setting.graft)
                for variant in (Variant("zero-shot"), Variant("fine-tuned", delta=dspec),
                                Variant("graft", delta=dspec, mask=gspec)):
                    probs, labels = lab.predict(args.task, variant)
                    rows.append(dict(precision=precision, seed=seed, model=variant.name,
                                     **ex.scores(probs, labels)))
                meta = lab.meta(dspec)
                rows[-1].update(train_loss=meta["train_loss"], graft_size=lab.mask_count(gspec),
                                seconds=time.perf_counter() - start)
        del lab
    df = pd.DataFrame(rows)
    lines = [f"precision fidelity: task {args.task}, seeds {args.seeds}, chapter 01 defaults "
             f"(test size {base.test_size})", ""]
    lines.append(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    lines.append("")
    faithful = True
    for model in ("zero-shot", "fine-tuned", "graft"):
        for metric in ("accuracy", "ece"):
            sub = df[df.model == model].pivot(index="seed", columns="precision", values=metric)
            diff = float((sub["bf16"] - sub["fp32"]).mean())
            spread = float(sub["fp32"].max() - sub["fp32"].min())
            ok = abs(diff) <= spread or abs(diff) < 1e-9
            faithful &= ok
            lines.append(f"{model:10s} {metric:8s}: bf16 − fp32 {diff:+.4f} (mean over seeds); fp32 seed spread "
                         f"{spread:.4f}; {'within' if ok else 'OUTSIDE'}")
    lines.append(f"bf16 faithful on this task and these seeds: {faithful}")
    lines.append("")
    for what in ("step_b8", "predict_200"):
        f32, b16 = speed["fp32"][what], speed["bf16"][what]
        lines.append(f"{what}: fp32 {f32:.2f} s, bf16 {b16:.2f} s, fp32 / bf16 = {f32 / b16:.2f}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
