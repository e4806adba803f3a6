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
    "trec": [Prompt("Question: {text}\nAnswer type:", (" abbreviation", " entity", " description", " person",
                                                         " location", " number")),
             Prompt("Question: {text}\nThe answer to this question is a", (" abbreviation", " thing",
                                                                           " description", " person", " place",
                                                                           " number")),
             Prompt("{text}\nQuestion: Does this ask for an abbreviation, entity, description, person, location or "
                    "number?\nAnswer:", (" abbreviation", " entity", " description", " person", " location",
                                         " number"))],
    "subj": [Prompt("Sentence: {text}\nIs this sentence objective or subjective? Answer:",
                    (" objective", " subjective")),
             Prompt("Sentence: {text}\nIs this a fact or an opinion? Answer:", (" fact", " opinion")),
             Prompt("Sentence: {text}\nThis sentence is", (" objective", " subjective"))],
    "sms": [Prompt("Message: {text}\nIs this message spam? Answer:", (" no", " yes")),
            Prompt("Message: {text}\nCategory:", (" ham", " spam")),
            Prompt("Message: {text}\nThis message is", (" normal", " spam"))],
    "spamassassin": [Prompt("E-mail: {text}\nIs this e-mail spam? Answer:", (" no", " yes")),
                     Prompt("E-mail: {text}\nCategory:", (" ham", " spam")),
                     Prompt("E-mail: {text}\nThis e-mail is", (" normal", " spam"))],
    "boolq": [Prompt("{passage}\nQuestion: {question}?\nAnswer:", (" no", " yes")),
              Prompt("Passage: {passage}\nQuestion: {question}? Yes or no?\nAnswer:", (" no", " yes")),
              Prompt("{passage}\nQuestion: {question}?\nTrue or false?\nAnswer:", (" false", " true"))],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", action="store_true", help="score candidate templates on dev data")
    ap.add_argument("--tasks", nargs="*", default=tasks.list_tasks("offline"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, nargs="*", default=[None],
                    help="tokens per prompt (default: the task's; several: each one, as BoolQ's was chosen)")
    args = ap.parse_args()
    from skillgraft.prompt import PromptClassifier
    lm = load_lm("smollm2-135m")
    if args.candidates:
        print("| task | template | label words | max length | dev acc (n) | s |\n|---|---|---|---|---|---|")
        for name in args.tasks:
            dev = tasks.load_splits(name, k=0, seed=0, dev_size=200).dev
            for prompt in CANDIDATES[name]:
                for length in args.max_length:
                    n = length or tasks.get_task(name).length(64)
                    t0 = time.time()
                    acc = PromptClassifier(lm, prompt, max_length=n).accuracy(dev, batch_size=args.batch_size)
                    print(f"| {name} | `{prompt.template!r}` | {'/'.join(w.strip() for w in prompt.label_words)} "
                          f"| {n} | {acc:.3f} ({len(dev)}) | {time.time() - t0:.0f} |", flush=True)
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
