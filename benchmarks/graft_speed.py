"""Speed and memory of localization on the embedded model; prints a markdown report, never asserts.

Speed: the gradient part of one localization epoch (θ = θ_pre + frac⊙δ in place, forward and
backward over the train batches, one step on S, back to θ_pre) against fine-tuning steps over
the same examples (forward, backward, SGD step), same batch size and number of batches. The
two are interleaved in one run, so that other load on the machine hits both alike. The scoring
part of an epoch (train and dev accuracy of the rounded graft) is reported on its own line.
Targets: ratio ≤ 1.2.

Memory: a fresh child process loads the model and δ, resets its resident-set high-water mark
(Linux ``/proc/self/clear_refs``), runs ``localize`` and reads ``VmHWM``. Reported as a
multiple of the fp32 model size, absolute and above the interpreter's own footprint
(python + torch + transformers imported, no model). Target: ≤ 3.5×.

    python benchmarks/graft_speed.py [--task mr] [--k 16] [--batch-size 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status_kb(key: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def setup(args):
    from skillgraft.models import load_lm
    from skillgraft.tasks import get_task, load_splits

    lm = load_lm(args.model)
    task = get_task(args.task)
    splits = load_splits(task, k=args.k, seed=args.seed, test_size=0)
    return lm, task.classifier(lm, max_length=args.max_length), splits


def memory_child(args) -> None:
    """Run in a fresh process: peak RSS of ``localize`` (or of a fine-tuning pass) with model and δ resident."""
    import torch
    import transformers  # noqa: F401  (the interpreter's footprint includes torch and transformers)
    from safetensors.torch import load_file

    from skillgraft.finetune import FinetuneConfig, finetune
    from skillgraft.graft import GraftConfig, localize

    runtime = status_kb("VmRSS")
    lm, clf, splits = setup(args)
    delta = load_file(args.memory_child)
    with torch.no_grad():  # fault in the memory-mapped weights and δ, so "before" counts them
        float(sum(t.sum() for t in [*lm.model.parameters(), *delta.values()]))
    model_bytes = sum(p.numel() * 4 for p in lm.model.parameters())
    graft_bytes = sum(d.numel() * 4 for d in delta.values())
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    if args.memory_what == "localize":
        cfg = GraftConfig(sparsity=args.sparsity, lr=args.graft_lr, epochs=args.memory_epochs,
                          batch_size=args.batch_size)
        localize(clf, delta, splits.train, splits.dev, cfg, progress=False)
    else:
        n_batches = -(-len(splits.train) // args.batch_size)
        cfg = FinetuneConfig(steps=args.memory_epochs * n_batches, batch_size=args.batch_size, eval_every=n_batches,
                             fit_loss=None)
        finetune(clf, splits.train, splits.dev, cfg, progress=False)
    print(json.dumps({"runtime_kb": runtime, "before_kb": before, "peak_kb": status_kb("VmHWM"),
                      "model_bytes": model_bytes, "graft_bytes": graft_bytes}))


def child(args, path: Path, what: str, env: dict | None = None) -> dict:
    same = {k: v for k, v in vars(args).items() if v is not None and k not in ("memory_child", "memory_what")}
    cmd = [sys.executable, __file__, "--memory-child", str(path), "--memory-what", what] + [
        f"--{k.replace('_', '-')}={v}" for k, v in same.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="mr")
    p.add_argument("--k", type=int, default=16, help="train examples per class (the train set is k·C examples)")
    p.add_argument("--seed", type=int, default=42, help="data seed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="interleaved (fine-tuning pass, localization epoch) pairs")
    p.add_argument("--sparsity", type=float, default=1e-4)
    p.add_argument("--graft-lr", type=float, default=1e7)
    p.add_argument("--memory-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice); pass 1 on a shared machine")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: path of δ for the memory child
    p.add_argument("--memory-what", default="localize", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from skillgraft.finetune import FinetuneConfig, finetune
    from skillgraft.graft import GraftConfig, localize

    lm, clf, splits = setup(args)
    n_batches = -(-len(splits.train) // args.batch_size)
    ft_cfg = FinetuneConfig(steps=n_batches, batch_size=args.batch_size, eval_every=n_batches, fit_loss=None)
    gr_cfg = GraftConfig(sparsity=args.sparsity, lr=args.graft_lr, epochs=1, batch_size=args.batch_size,
                         include_base=False)
    delta = finetune(clf, splits.train, splits.dev, ft_cfg, progress=False).delta  # δ for the timing runs
    ft_times, step_times, eval_times = [], [], []
    for r in range(args.repeats):  # interleaved: both see the same machine load
        print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        ft = finetune(clf, splits.train, splits.dev, ft_cfg, progress=False)
        ft_times.append(float(ft.history["seconds"].sum()))
        gr = localize(clf, delta, splits.train, splits.dev, gr_cfg, progress=False)
        step_times.append(float(gr.history["seconds_step"].iloc[0]))
        eval_times.append(float(gr.history["seconds_eval"].iloc[0]))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "delta.safetensors"
        save_file({n: d.contiguous() for n, d in ft.delta.items()}, str(path))
        del delta, ft, gr
        print("memory: child processes", file=sys.stderr, flush=True)
        mem = child(args, path, "localize")
        mem_fixed = child(args, path, "localize", {"MALLOC_MMAP_THRESHOLD_": "131072"})
        mem_ft = child(args, path, "finetune")
    size, kb = mem["model_bytes"], 1024

    def rss(kib: int) -> str:
        return f"{kib * kb / 1e6:.0f} MB ({kib * kb / size:.2f}×)"

    ratios = [s / f for s, f in zip(step_times, ft_times)]
    ft_t, st_t, ev_t = np.median(ft_times), np.median(step_times), np.median(eval_times)
    design = 1 + 3 * mem["graft_bytes"] / size
    rows = [
        ("train set", f"{len(splits.train)} examples = {n_batches} batches of ≤ {args.batch_size}", ""),
        (f"fine-tuning, one pass over the batches (median of {args.repeats})", f"{ft_t:.2f} s", ""),
        ("localization epoch, gradient part (relax, fwd+bwd, step on S, round)", f"{st_t:.2f} s", ""),
        ("**ratio** epoch gradient part / fine-tuning pass (median of per-repeat ratios)",
         f"**{np.median(ratios):.2f}**", "≤ 1.2"),
        ("localization epoch, scoring part (train + dev accuracy of the graft)", f"{ev_t:.2f} s", ""),
        ("ratio whole epoch / fine-tuning pass", f"{(st_t + ev_t) / ft_t:.2f}", ""),
        ("fp32 model size (all parameters)", f"{size / 1e6:.0f} MB", ""),
        ("interpreter footprint (python, torch, transformers; no model)", rss(mem["runtime_kb"]), ""),
        ("resident before localize (model + δ + interpreter)", rss(mem["before_kb"]), ""),
        ("**peak resident during localize**", f"**{rss(mem['peak_kb'])}**", "≤ 3.5×"),
        ("… above the interpreter footprint", f"{(mem['peak_kb'] - mem['runtime_kb']) * kb / size:.2f}×", ""),
        ("… with MALLOC_MMAP_THRESHOLD_=131072 (no glibc heap fragmentation)", rss(mem_fixed["peak_kb"]), ""),
        ("… same, above the interpreter footprint",
         f"{(mem_fixed['peak_kb'] - mem_fixed['runtime_kb']) * kb / size:.2f}×", ""),
        ("state by design: model + δ + S + gradients (no θ_pre copy)", f"{design:.2f}×", ""),
        ("for reference: peak during fine-tuning passes, same process layout", rss(mem_ft["peak_kb"]), ""),
    ]
    print(f"## Localization speed and memory: {args.model}, task {args.task}, k = {args.k}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads\n")
    print("| quantity | value | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nper repeat (s): fine-tuning {[round(t, 2) for t in ft_times]}, "
          f"localization gradient part {[round(t, 2) for t in step_times]}, scoring {[round(t, 2) for t in eval_times]}")
    print(f"run at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
