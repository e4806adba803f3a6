"""Zero-shot accuracy of the embedded model on every offline task, and the template search.

    python benchmarks/zero_shot.py              # sizes, classes, zero-shot TEST accuracy (registry templates)
    python benchmarks/zero_shot.py --candidates # DEV accuracy of candidate causal templates (how they were chosen)

Prints markdown tables. Template choice uses a dev sample only (200 examples drawn by
seed 0 from outside the fixed test split).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from skillgraft import tasks
from skillgraft.models import load_lm
from skillgraft.prompt import Prompt


# A first round also tried "{text}\nQuestion: Is this positive or negative?\nAnswer:" (dev .525 amazon-sent,
# .545 cr) and "Review: {text}\nOverall, it was" -> terrible/great (.500, .500): near chance, so replaced.
def _sentiment(noun: str) -> list[Prompt]:
    return [Prompt(noun + ": {text}\nSentiment:", (" negative", " positive")),
            Prompt(noun + ": {text}\nSentiment:", (" bad", " good")),
            Prompt(noun + ": {text}\nThis " + noun.lower() + " is", (" negative", " positive"))]


CANDIDATES: dict[str, list[Prompt]] = {
    **{name: _sentiment("Review") for name in ("mr", "cr", "imdb-sent", "yelp-sent", "amazon-sent")},
    "nyt": _sentiment("Sentence"),
    "tweets": _sentiment("Tweet"),
    "tweets3": [Prompt("Tweet: {text}\nSentiment:", (" negative", " neutral", " positive")),
                Prompt("{text}\nQuestion: Is this tweet negative, neutral or positive?\nAnswer:",
                       (" negative", " neutral", " positive")),
                Prompt("Tweet: {text}\nThe tone of this tweet is", (" negative", " neutral", " positive"))],
    "bbc": [Prompt("Article: {text}\nTopic:", (" business", " entertainment", " politics", " sport", " tech")),
            Prompt("Article: {text}\nTopic:", (" business", " entertainment", " politics", " sports", " technology")),
            Prompt("{text}\nQuestion: Is this news about business, entertainment, politics, sport or technology?"
                   "\nAnswer:", (" business", " entertainment", " politics", " sport", " technology"))],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", action="store_true", help="score candidate templates on dev data")
    ap.add_argument("--tasks", nargs="*", default=tasks.list_tasks("offline"))
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    from skillgraft.prompt import PromptClassifier
    lm = load_lm("smollm2-135m")
    if args.candidates:
        print("| task | template | label words | dev acc (n) |\n|---|---|---|---|")
        for name in args.tasks:
            dev = tasks.load_splits(name, k=0, seed=0, dev_size=200).dev
            for prompt in CANDIDATES[name]:
                acc = PromptClassifier(lm, prompt).accuracy(dev, batch_size=args.batch_size)
                print(f"| {name} | `{prompt.template!r}` | {'/'.join(w.strip() for w in prompt.label_words)} "
                      f"| {acc:.3f} ({len(dev)}) |", flush=True)
        return
    print("| task | classes | pool (per class) | test (per class) | template | zero-shot test acc | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task = tasks.get_task(name)
        pool, _ = tasks.load_pool(task)
        splits = tasks.load_splits(task, k=16, seed=42)
        clf = task.classifier(lm)
        t0 = time.time()
        acc = clf.accuracy(splits.test, batch_size=args.batch_size)
        per = lambda labels: " / ".join(str(n) for n in np.bincount(labels, minlength=len(task.class_names)))
        print(f"| {name} | {', '.join(task.class_names)} | {len(pool)} ({per(pool['label'])}) "
              f"| {len(splits.test)} ({per(splits.test['label'])}) | `{clf.prompt.template!r}` "
              f"| {acc:.3f} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
