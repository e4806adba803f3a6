"""Single-task grafting on the embedded model: zero-shot, fine-tuned, localized, top-movement, random.

Fine-tunes with the :class:`FinetuneConfig` defaults (SGD), then, for each sparsity, localizes with
every graft learning rate of a grid and keeps the lr whose kept mask scores best on dev (ties:
better train + dev, then the smaller lr). The graft lr only means something relative to the scale
of ∇θL ⊙ δ: with b = 10, σ'(S − b) ≈ 4.5e-5 … 1.2e-4 at the start, so an entry flips only where
lr·|g·δ|·σ' reaches ~10. The search table shows that scale. Every variant is then scored on the
test set; prints markdown tables, never asserts.

    python benchmarks/graft_demo.py [--task mr] [--k 16] [--seed 42] [--sparsity 1e-4 1e-3]
        [--lrs 1e7 1e8 1e9 1e10] [--epochs 10] [--test-size 1000] [--out DIR] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path


def markdown(df, digits: int = 4) -> str:
    """A pandas frame as a markdown table (no tabulate needed)."""
    def cell(v) -> str:
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="mr")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=42, help="data seed")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--sparsity", type=float, nargs="+", default=[1e-4, 1e-3])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e7, 1e8, 1e9, 1e10])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--random-seeds", type=int, default=3, help="random masks to average")
    p.add_argument("--out", type=Path, help="folder for δ, masks and tables; a rerun resumes from what is there")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice); pass 1 on a shared machine")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")

    import numpy as np
    import pandas as pd
    import torch
    from safetensors.torch import load_file, save_file

    from skillgraft import grafting, masks, models
    from skillgraft.finetune import FinetuneConfig, finetune
    from skillgraft.localization import GraftConfig, LocalizeResult, localize
    from skillgraft.models import load_lm
    from skillgraft.tasks import get_task, load_splits

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    lm = load_lm(args.model)
    task = get_task(args.task)
    splits = load_splits(task, k=args.k, seed=args.seed, test_size=args.test_size)
    clf = task.classifier(lm, max_length=args.max_length)
    model = lm.model
    ft_cfg = FinetuneConfig()
    delta_file = args.out / "delta.safetensors" if args.out else None
    if delta_file is not None and delta_file.is_file():
        delta = load_file(str(delta_file))
        delta = {n: delta[n] for n in models.graftable_parameters(model)}
    else:
        res = finetune(clf, splits.train, splits.dev, ft_cfg)
        delta = res.delta
        print(f"fine-tuning: best dev {res.best_dev_acc:.3f} at step {res.best_step}")
        if delta_file is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            save_file({n: d.contiguous() for n, d in delta.items()}, str(delta_file))
            res.history.to_csv(args.out / "finetune_history.csv", index=False)

    def acc(ds) -> float:
        return clf.accuracy(ds, batch_size=32)

    zero_shot = acc(splits.test)
    with grafting.apply_delta(model, delta):
        fine_tuned = acc(splits.test)
    n_graft = models.num_graftable(model)
    results = [{"variant": "zero-shot", "sparsity": 0.0, "count": 0, "test_acc": zero_shot},
               {"variant": "fine-tuned", "sparsity": 1.0, "count": n_graft, "test_acc": fine_tuned}]
    search = []
    for sparsity in args.sparsity:
        runs = []
        for lr in args.lrs:
            cfg = GraftConfig(sparsity=sparsity, lr=lr, epochs=args.epochs)
            stem = f"localize_s{sparsity:g}_lr{lr:g}_e{args.epochs}"
            if args.out and (args.out / f"{stem}.csv").is_file():  # resume: this run is done
                mask = masks.Mask.load(args.out / f"{stem}.safetensors", model)
                r = LocalizeResult(mask, masks.top_movement(delta, sparsity), pd.read_csv(args.out / f"{stem}.csv"),
                                   mask.meta["epoch"], cfg)
            else:
                r = localize(clf, delta, splits.train, splits.dev, cfg, progress=False)
                if args.out:
                    r.mask.save(args.out / f"{stem}.safetensors")
                    r.history.to_csv(args.out / f"{stem}.csv", index=False)
            h, kept = r.history, r.history.set_index("epoch").loc[r.best_epoch]
            first = h[h["epoch"] == 1].iloc[0] if (h["epoch"] == 1).any() else kept
            search.append({"sparsity": sparsity, "lr": lr, "kept_epoch": r.best_epoch, "count": r.mask.count,
                           "added": int(kept["added"]), "removed": int(kept["removed"]),
                           "train_acc": kept["train_acc"], "dev_acc": kept["dev_acc"],
                           "mean|g·δ|": first["gd_abs_mean"], "max|g·δ|": first["gd_abs_max"],
                           "max step on S (epoch 1)": first["step_abs_max"],
                           "s/epoch": float(h["seconds_step"].median() + h["seconds_eval"].median())})
            runs.append((kept["dev_acc"], kept["train_acc"] + kept["dev_acc"], -lr, r))
        best = max(runs, key=lambda t: t[:3])[3]
        with grafting.grafted(model, delta, best.base):
            results.append({"variant": "top-movement", "sparsity": sparsity, "count": best.base.count,
                            "test_acc": acc(splits.test)})
        with grafting.grafted(model, delta, best.mask):
            results.append({"variant": f"localized (graft lr {best.config.lr:g}, epoch {best.best_epoch})",
                            "sparsity": sparsity, "count": best.mask.count, "test_acc": acc(splits.test)})
        rand = []
        for seed in range(args.random_seeds):
            with grafting.grafted(model, delta, masks.random_mask(delta, sparsity, seed=seed)):
                rand.append(acc(splits.test))
        results.append({"variant": f"random (mean of {len(rand)} seeds, sd {np.std(rand):.3f})",
                        "sparsity": sparsity, "count": round(sparsity * n_graft), "test_acc": float(np.mean(rand))})

    table = pd.DataFrame(results)
    table["recovery"] = table["test_acc"] / fine_tuned
    gap = fine_tuned - zero_shot
    table["normalized recovery"] = (table["test_acc"] - zero_shot) / gap if abs(gap) > 1e-12 else float("nan")
    search = pd.DataFrame(search)
    print(f"\n## Grafting on {args.model}, task {args.task} (k = {args.k}, data seed {args.seed}; "
          f"train {len(splits.train)}, dev {len(splits.dev)}, test {len(splits.test)}; N = {n_graft:,} graftable)\n")
    print(f"fine-tuning: {json.dumps(asdict(ft_cfg))}\n")
    print("### Graft lr search (kept mask of each run; |g·δ| and the step at epoch 1)\n")
    print(markdown(search, 3))
    print("\n### Test accuracy\n")
    print(markdown(table, 4))
    print(f"\none test example = {1 / len(splits.test):.4f} accuracy; total time {time.time() - start:.0f} s")
    if args.out:
        table.to_csv(args.out / "test_accuracy.csv", index=False)
        search.to_csv(args.out / "lr_search.csv", index=False)


if __name__ == "__main__":
    main()
