"""Speed and memory of the chapters' steps on the embedded model, as ratios within one run;
the report ``make bench`` prints. Reported, never asserted (these machines are noisy).

1. Fine-tuning step (forward, backward, SGD) over the train batches, fp32 against bf16.
2. Localization epoch against fine-tuning steps over the same examples (same batches), in
   each precision: the gradient part (θ = θ_pre + frac⊙δ in place, forward and backward
   over the train set, the step on S, θ_pre back), its scoring in full (train and dev
   accuracy of the rounded graft), and the epoch as the chapters run it: a whole
   localization at the chapters' settings (grow, 10 steps, lr 1e8), where scoring stops once
   a mask cannot beat the kept one, divided by its steps. Each repeat interleaves the two,
   so other load on the machine hits both alike.
3. Prediction throughput (test examples a second), fp32 against bf16.
4. Peak resident memory of a localization and of fine-tuning, in fresh child processes
   (``/proc/self/clear_refs``, then ``VmHWM``), as multiples of the fp32 model, and what is
   resident when localization's first step starts (interpreter, model, δ, S).
5. Attention: a bf16 fine-tuning pass with the model's eager attention against SDPA's fused
   kernel (``skillgraft.models.ATTENTION``), interleaved with the rest.
6. A busy machine: 8 bf16 fine-tuning steps in fresh child processes, alone and beside one
   CPU-bound process, with torch's threads spinning (OpenMP's default) or waiting passively
   (``OMP_WAIT_POLICY=PASSIVE``, what ``skillgraft run`` picks on a busy machine), and
   whether the four deltas are bit-identical.
7. The design the memory target would need, measured, never the default: per-layer activation
   recompute in localization (each layer keeps only its input for the backward and runs
   again there; ``torch.utils.checkpoint``): its gradient part, its peak, and whether its
   step on S is the same.
8. The fidelity of bf16 against fp32 (``benchmarks/precision_fidelity.py``, about half an
   hour: ``make fidelity``), read from its committed output.

    python benchmarks/graft_speed.py [--task mr] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CHAPTER_GRAFT = dict(start="grow", lr=1e8, epochs=10)  # the chapters' localization (notebooks' parameters)


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
    splits = load_splits(task, k=args.k, seed=args.seed, test_size=args.test_size)
    clfs = {p: task.classifier(lm, max_length=args.max_length, precision=p) for p in ("fp32", "bf16")}
    return lm, clfs, splits


@contextlib.contextmanager
def recomputed(model):
    """Per-layer activation recompute: each transformer layer saves only its inputs for the
    backward and runs its forward again there (non-reentrant ``checkpoint``, which replays
    autocast as it was)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    n = model.config.num_hidden_layers
    layers = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n)
    for layer in layers:
        layer.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's own again


def memory_child(args) -> None:
    """In a fresh process: peak RSS of ``localize`` (or of fine-tuning) with model and δ resident."""
    import torch
    import transformers  # noqa: F401  (the interpreter's footprint includes torch and transformers)
    from safetensors.torch import load_file

    from skillgraft.finetune import FinetuneConfig, finetune
    from skillgraft.localization import GraftConfig, localize

    runtime = status_kb("VmRSS")
    lm, clfs, splits = setup(args)
    clf = clfs[args.memory_precision]
    delta = load_file(args.memory_child)
    with torch.no_grad():  # fault in the memory-mapped weights and δ, so "before" counts them
        float(sum(t.sum() for t in [*lm.model.parameters(), *delta.values()]))
    model_bytes = sum(p.numel() * 4 for p in lm.model.parameters())
    graft_bytes = sum(d.numel() * 4 for d in delta.values())
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    first_step = []
    if args.memory_what.startswith("localize"):
        from skillgraft import localization

        epoch = localization._epoch

        def first_step_resident(*a, **k):  # what is resident when the first step starts: model, δ, S, scratch
            if not first_step:
                first_step.append(status_kb("VmRSS"))
            return epoch(*a, **k)
        localization._epoch = first_step_resident
        with recomputed(lm.model) if args.memory_what == "localize-recompute" else contextlib.nullcontext():
            localize(clf, delta, splits.train, splits.dev, GraftConfig(**{**CHAPTER_GRAFT, "epochs": 2}),
                     progress=False)
    else:
        n_batches = -(-len(splits.train) // args.batch_size)
        finetune(clf, splits.train, splits.dev, FinetuneConfig(steps=2 * n_batches, eval_every=n_batches,
                                                              fit_loss=None), progress=False)
    print(json.dumps({"runtime_kb": runtime, "before_kb": before, "peak_kb": status_kb("VmHWM"),
                      "first_step_kb": first_step[0] if first_step else None,
                      "model_bytes": model_bytes, "graft_bytes": graft_bytes}))


def busy_child(args) -> None:
    """In a fresh process (its OpenMP wait policy fixed at start): 8 bf16 fine-tuning steps, timed."""
    import hashlib

    from skillgraft.finetune import FinetuneConfig, finetune

    lm, clfs, splits = setup(args)
    cfg = FinetuneConfig(steps=8, eval_every=4, fit_loss=None)
    finetune(clfs["bf16"], splits.train, splits.dev, FinetuneConfig(steps=2, eval_every=2, fit_loss=None),
             progress=False)  # warm up
    start = time.perf_counter()
    delta = finetune(clfs["bf16"], splits.train, splits.dev, cfg, progress=False).delta
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(b"".join(d.numpy().tobytes() for d in delta.values())).hexdigest()
    print(json.dumps({"seconds": seconds, "delta": digest}))


def busy(args) -> dict:
    """(alone | beside one CPU-bound process) × (spinning | passive waiting): seconds, delta hash."""
    import os

    cmd = child_command(args, "--busy-child")
    out = {}
    for load in ("alone", "beside"):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "beside" else None
        try:
            for policy in ("spin", "passive"):
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy == "passive":
                    env["OMP_WAIT_POLICY"] = "PASSIVE"
                res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                out[load, policy] = json.loads(res.stdout.strip().splitlines()[-1])
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return out


def child_command(args, *internal: str) -> list[str]:
    """This script in a fresh process with ``internal`` flags and the caller's own settings."""
    same = {k: v for k, v in vars(args).items() if v is not None and not k.startswith(("memory_", "busy_"))}
    return [sys.executable, __file__, *internal] + [f"--{k.replace('_', '-')}={v}" for k, v in same.items()]


def child(args, path: Path, what: str, precision: str) -> dict:
    cmd = child_command(args, "--memory-child", str(path), "--memory-what", what, "--memory-precision", precision)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fidelity_summary() -> list[str]:
    path = RESULTS / "precision_fidelity.txt"
    if not path.exists():
        return ["(no committed fidelity run: `make fidelity` writes benchmarks/results/precision_fidelity.txt)"]
    lines = path.read_text().splitlines()
    keep = [l for l in lines if "bf16 − fp32" in l or l.startswith("bf16 faithful") or l.startswith("precision fidelity")]
    return keep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="mr")
    p.add_argument("--k", type=int, default=16, help="train examples per class (the train set is k·C examples)")
    p.add_argument("--seed", type=int, default=13, help="data seed")
    p.add_argument("--test-size", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="the chapters' max_length")
    p.add_argument("--repeats", type=int, default=3, help="interleaved (fine-tuning pass, localization epoch) pairs")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--ft-steps", type=int, default=80, help="fine-tuning steps of the δ that is localized")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: path of δ for the memory child
    p.add_argument("--memory-what", default="localize", help=argparse.SUPPRESS)
    p.add_argument("--memory-precision", default="bf16", help=argparse.SUPPRESS)
    p.add_argument("--busy-child", action="store_true", help=argparse.SUPPRESS)  # internal: one timed fine-tune
    args = p.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    if args.busy_child:
        return busy_child(args)

    import numpy as np
    from safetensors.torch import save_file

    from skillgraft.finetune import FinetuneConfig, finetune
    from skillgraft.localization import GraftConfig, localize

    t0 = time.time()
    lm, clfs, splits = setup(args)
    from skillgraft import models
    from skillgraft.tasks import get_task

    attention, models.ATTENTION = models.ATTENTION, "sdpa"
    try:  # the same model with SDPA's fused attention, for one comparison
        sdpa = get_task(args.task).classifier(models.load_lm(args.model), max_length=args.max_length, precision="bf16")
    finally:
        models.ATTENTION = attention
    n_batches = -(-len(splits.train) // args.batch_size)
    one_pass = FinetuneConfig(steps=n_batches, batch_size=args.batch_size, eval_every=n_batches, fit_loss=None)
    one_epoch = GraftConfig(**{**CHAPTER_GRAFT, "epochs": 1}, batch_size=args.batch_size, include_base=False)
    print("δ: fine-tuning at the chapters' defaults (bf16)", file=sys.stderr, flush=True)
    delta = finetune(clfs["bf16"], splits.train, splits.dev, FinetuneConfig(steps=args.ft_steps), progress=False).delta
    t = {(k, prec): [] for k in ("ft", "grad", "score", "predict", "grad-recompute") for prec in clfs}
    same_step = {}  # precision -> the recomputed epoch's loss and step on S equal the plain one's, every repeat
    t["ft-sdpa", "bf16"] = []
    for r in range(args.repeats):  # interleaved: every quantity sees the same machine load
        print(f"repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for prec, clf in clfs.items():
            ft = finetune(clf, splits.train, splits.dev, one_pass, progress=False)
            t["ft", prec].append(float(ft.history["seconds"].sum()))
            h = localize(clf, delta, splits.train, splits.dev, one_epoch, progress=False).history
            t["grad", prec].append(float(h["seconds_step"].iloc[0]))
            t["score", prec].append(float(h["seconds_eval"].iloc[0]))
            with recomputed(clf.lm.model):
                hr = localize(clf, delta, splits.train, splits.dev, one_epoch, progress=False).history
            t["grad-recompute", prec].append(float(hr["seconds_step"].iloc[0]))
            signature = ["loss", "gd_abs_mean", "gd_abs_max", "step_abs_max", "count"]
            same_step[prec] = same_step.get(prec, True) and hr[signature].equals(h[signature])
            start = time.perf_counter()
            clf.predict_proba(splits.test, batch_size=32)
            t["predict", prec].append(time.perf_counter() - start)
        ft = finetune(sdpa, splits.train, splits.dev, one_pass, progress=False)
        t["ft-sdpa", "bf16"].append(float(ft.history["seconds"].sum()))
    chapter = {}
    for prec, clf in clfs.items():  # a whole localization as the chapters run it
        print(f"chapter localization, {prec}", file=sys.stderr, flush=True)
        ft_before = float(finetune(clf, splits.train, splits.dev, one_pass, progress=False).history["seconds"].sum())
        h = localize(clf, delta, splits.train, splits.dev, GraftConfig(**CHAPTER_GRAFT, batch_size=args.batch_size),
                     progress=False).history
        ft_after = float(finetune(clf, splits.train, splits.dev, one_pass, progress=False).history["seconds"].sum())
        steps = h[h.epoch > 0]
        per_epoch = (float(steps["seconds_step"].sum()) + float(h["seconds_eval"].sum())) / len(steps)
        chapter[prec] = (per_epoch, (ft_before + ft_after) / 2, int(h["train_acc"].isna().sum()),
                         int(h["dev_acc"].isna().sum()), len(h))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "delta.safetensors"
        save_file({n: d.contiguous() for n, d in delta.items()}, str(path))
        print("memory: child processes", file=sys.stderr, flush=True)
        mem = {(what, prec): child(args, path, what, prec) for what in ("localize", "finetune", "localize-recompute")
               for prec in clfs}
    print("busy machine: child processes", file=sys.stderr, flush=True)
    crowded = busy(args)
    med = {k: float(np.median(v)) for k, v in t.items()}
    size = mem["localize", "fp32"]["model_bytes"]
    design = 1 + 3 * mem["localize", "fp32"]["graft_bytes"] / size

    def ratio(a, b) -> str:
        return f"{a / b:.2f}"

    rows = [("train set", f"{len(splits.train)} examples = {n_batches} batches of ≤ {args.batch_size}", "", "")]
    rows.append(("fine-tuning pass (s, median)", f"{med['ft', 'fp32']:.2f}", f"{med['ft', 'bf16']:.2f}", ""))
    rows.append(("**fine-tuning step fp32 / bf16**", "", f"**{ratio(med['ft', 'fp32'], med['ft', 'bf16'])}**", ""))
    rows.append(("bf16 fine-tuning pass, SDPA attention / eager (the default)", "",
                 ratio(med["ft-sdpa", "bf16"], med["ft", "bf16"]), ""))
    for prec in clfs:
        pass_ = med["ft", prec]
        rows += [
            (f"{prec}: localization epoch, gradient part / fine-tuning pass",
             ratio(med["grad", prec], pass_), "", ""),
            (f"{prec}: its scoring in full (train + dev of the rounded graft) / fine-tuning pass",
             ratio(med["score", prec], pass_), "", ""),
            (f"{prec}: **epoch with full scoring / fine-tuning pass**",
             f"**{ratio(med['grad', prec] + med['score', prec], pass_)}**", "", "≤ 1.05"),
            (f"{prec}: **epoch as the chapters run it** (10 steps, bounded scoring) / fine-tuning pass",
             f"**{ratio(chapter[prec][0], chapter[prec][1])}**", "", "≤ 1.05"),
            (f"{prec}: … masks whose train / dev scoring stopped early (of {chapter[prec][4]} scored)",
             f"{chapter[prec][2]} / {chapter[prec][3]}", "", ""),
        ]
    n_test = len(splits.test)
    rows.append((f"prediction, {n_test} test examples (examples / s)",
                 f"{n_test / med['predict', 'fp32']:.1f}", f"{n_test / med['predict', 'bf16']:.1f}", ""))
    rows.append(("**prediction throughput bf16 / fp32**", "",
                 f"**{ratio(med['predict', 'fp32'], med['predict', 'bf16'])}**", ""))
    rows.append(("fp32 model size (all parameters)", f"{size / 1e6:.0f} MB", "", ""))
    rt = mem["localize", "fp32"]["runtime_kb"] * 1024
    rows.append(("interpreter footprint (python, torch, transformers; no model) / model", ratio(rt, size), "", ""))
    rows.append(("state by design: model + δ + S + gradients / model", f"{design:.2f}", "", ""))
    for prec in clfs:
        m = mem["localize", prec]
        rows.append((f"{prec}: resident when localization's first step starts (interpreter, model, δ, S) / model",
                     ratio(m["first_step_kb"] * 1024, size),
                     f"then + {ratio((m['peak_kb'] - m['first_step_kb']) * 1024, size)}: gradients, "
                     "activations, allocator", ""))
    for what in ("localize", "finetune"):
        for prec in clfs:
            m = mem[what, prec]
            label = "localization" if what == "localize" else "fine-tuning"
            rows.append((f"{prec}: **peak resident during {label} / model**",
                         f"**{ratio(m['peak_kb'] * 1024, size)}**", f"{ratio((m['peak_kb'] - m['runtime_kb']) * 1024, size)}"
                         " above the interpreter", "≤ 3.5" if what == "localize" else ""))
    for prec in clfs:  # the design the memory target would need, measured
        m = mem["localize-recompute", prec]
        rows += [
            (f"{prec}: with per-layer recompute (not the default): gradient part / fine-tuning pass",
             ratio(med["grad-recompute", prec], med["ft", prec]),
             f"{ratio(med['grad-recompute', prec], med['grad', prec])} × without; same step on S: {same_step[prec]}",
             ""),
            (f"{prec}: with per-layer recompute: peak resident during localization / model",
             ratio(m["peak_kb"] * 1024, size),
             f"{ratio((m['peak_kb'] - m['runtime_kb']) * 1024, size)} above the interpreter", "≤ 3.5"),
        ]
    alone = crowded["alone", "spin"]["seconds"]
    for load, policy in crowded:
        rows.append((f"8 bf16 fine-tuning steps, {load} {'' if load == 'alone' else 'one CPU-bound process '}"
                     f"({'spinning' if policy == 'spin' else 'passive'} waits), s / alone spinning",
                     f"{crowded[load, policy]['seconds']:.1f} s", ratio(crowded[load, policy]["seconds"], alone), ""))
    rows.append(("… the four deltas bit-identical", str(len({v["delta"] for v in crowded.values()}) == 1), "", ""))
    print(f"## Speed and memory: {args.model}, task {args.task}, k = {args.k}, batch {args.batch_size}, "
          f"max_length {args.max_length}, {torch.get_num_threads()} threads\n")
    print("| quantity | fp32 / value | bf16 / note | target |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nper repeat (s): " + ", ".join(f"{k[0]} {k[1]} {[round(x, 2) for x in v]}" for k, v in t.items()))
    print("\n## Fidelity of bf16 (from benchmarks/results/precision_fidelity.txt)\n")
    for line in fidelity_summary():
        print("    " + line)
    print(f"\nrun at {time.strftime('%Y-%m-%d %H:%M')}, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
