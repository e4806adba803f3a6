"""What the published results cost to compute: each step's wall time, by chain and by task.

Every step a lab computes leaves its wall time beside the local store (:meth:`Lab._record_cost`),
and publishing keeps it in the manifest entry (``seconds``), so the cost of the book's evidence
outlives the machine that computed it. A step is charged to its *chain*: the fine-tune it was made
from (a graft, its baselines and every prediction with them), or "zero-shot" for the predictions
of the pre-trained model. A step computed before costs were recorded has no time: the report
counts those apart (a fine-tune's own history gives a lower bound: the sum of its step times).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .published import Published

__all__ = ["chain_name", "entry_costs", "chain_costs", "page_cost", "report"]

KINDS = {"delta": "fine-tune", "mask": "masks", "probs": "predictions"}


def _root(name: str, layer: Published, memo: dict) -> str | None:
    """The fine-tune ``name`` was made from (itself for a fine-tune), as ``delta/key``; None: zero-shot."""
    if name in memo:
        return memo[name]
    memo[name] = None
    if name.startswith("delta/"):
        memo[name] = name
        return name
    body = layer.body(name)
    for parent in (body or {}).get("record", {}).get("inputs", []):
        found = _root(parent, layer, memo)
        if found is not None:
            memo[name] = found
            break
    return memo[name]


_WHAT = {"single": "fine-tuning", "multitask": "multi-task fine-tuning", "sequential": "sequential fine-tuning"}


def chain_name(spec: dict) -> str:
    """A fine-tune as the report names its chain, from its published spec: what, tasks and seed, and
    whatever of its trainer differs from the chapters' (optimizer, clipping, ties)."""
    mode = spec.get("mode", "single")
    join = {"multitask": " + ", "sequential": " → "}.get(mode, ", ")
    ft = spec.get("finetune", {})
    extras = []
    if ft.get("optimizer", "sgd") != "sgd":
        extras.append(str(ft["optimizer"]))
    if ft.get("max_grad_norm") is not None:
        extras.append(f"clipped at {ft['max_grad_norm']}")
    if ft.get("ties", "later") != "later":
        extras.append(f"ties to the {ft['ties']} check")
    name = f"{_WHAT.get(mode, mode)} {join.join(spec.get('tasks', []))}, seed {spec.get('seed')}"
    return f"{name} ({', '.join(extras)})" if extras else name


def entry_costs(root: str | Path) -> pd.DataFrame:
    """One row per published entry: name, kind, label, seconds (NaN where not recorded), lower (a
    fine-tune's summed step times where its own time was not recorded), chain, tasks, mode, page (whether a
    book page uses it)."""
    layer = Published(root)
    memo, rows, claimed = {}, [], layer.claimed()
    for name, info in sorted(layer.entries.items()):
        chain = _root(name, layer, memo)
        spec = ((layer.body(chain) or {}).get("record", {}).get("spec", {})) if chain else {}
        lower = math.nan
        if name.startswith("delta/") and "seconds" not in info:
            history = (layer.body(name) or {}).get("record", {}).get("data", {}).get("history", [])
            lower = sum(float(r.get("seconds") or 0) for r in history) if history else math.nan
        rows.append({"name": name, "kind": KINDS.get(name.split("/", 1)[0], name.split("/", 1)[0]),
                     "label": info.get("label", name), "seconds": float(info.get("seconds", math.nan)),
                     "lower": lower, "chain": chain_name(spec) if chain else "zero-shot",
                     "tasks": " + ".join(spec.get("tasks", [])) if chain else "",
                     "mode": spec.get("mode", "") if chain else "", "page": name in claimed})
    return pd.DataFrame(rows, columns=["name", "kind", "label", "seconds", "lower", "chain", "tasks", "mode", "page"])


def chain_costs(entries: pd.DataFrame) -> pd.DataFrame:
    """Per chain: minutes of its fine-tune, masks and predictions, in all, and steps without a time."""
    if entries.empty:
        return pd.DataFrame(columns=["chain", "fine-tune", "masks", "predictions", "total", "steps", "untimed"])
    timed = entries.assign(minutes=entries.seconds / 60)
    table = timed.pivot_table(index="chain", columns="kind", values="minutes", aggfunc="sum", fill_value=0.0)
    total = table.sum(axis=1)  # every kind (a graft's location too), though only the three main ones are shown
    table = table.reindex(columns=list(KINDS.values()), fill_value=0.0)
    table["total"] = total
    table["steps"] = entries.groupby("chain").size()
    table["untimed"] = entries.assign(untimed=entries.seconds.isna()).groupby("chain").untimed.sum()
    return table.reset_index().sort_values("total", ascending=False).reset_index(drop=True)


def page_cost(root: str | Path, page: str) -> dict | None:
    """What a book page's defaults cost computed from nothing, from the published steps it resolves: the summed
    seconds, the steps and how many have no recorded time, and per chain (a fine-tune with its grafts and
    predictions) the median and the largest, with the largest's name; None if the page is not published."""
    layer = Published(root)
    page_entries = set(layer.manifest.get("chapters", {}).get(page, {}).get("entries", []))
    if not page_entries:
        return None
    entries = entry_costs(root)
    mine = entries[entries.name.isin(page_entries)]
    chains = mine[mine.chain != "zero-shot"].groupby("chain").seconds.sum(min_count=1).dropna()
    return {"seconds": float(mine.seconds.sum()), "steps": len(mine), "untimed": int(mine.seconds.isna().sum()),
            "chain_median": float(chains.median()) if len(chains) else math.nan,
            "chain_max": float(chains.max()) if len(chains) else math.nan,
            "largest": str(chains.idxmax()) if len(chains) else ""}


def report(root: str | Path) -> str:
    """Markdown: per chain, then in all (where the time goes, by kind)."""
    entries = entry_costs(root)
    chains = chain_costs(entries)
    lines = ["| chain | fine-tune (min) | masks (min) | predictions (min) | total (min) | steps | untimed |",
             "|---|---|---|---|---|---|---|"]
    for r in chains.itertuples(index=False):
        cells = ["—" if r.untimed == r.steps else f"{v:.1f}" for v in (r[1], r[2], r[3], r.total)]
        lines.append(f"| {r.chain} | {' | '.join(cells)} | {r.steps} | {r.untimed} |")
    timed = entries.seconds.notna()
    by_kind = entries[timed].groupby("kind").seconds.sum() / 60
    total = by_kind.sum()
    parts = ", ".join(f"{kind} {minutes:.0f} min ({minutes / total:.0%})" for kind, minutes in by_kind.items()) \
        if total else "nothing timed"
    lines += ["", f"In all: {len(entries)} published steps, {int(timed.sum())} of them timed, "
                  f"{total / 60:.2f} h of wall time ({parts})."]
    pages = entries[entries.page.astype(bool)]
    lines.append(f"The book's pages resolve {len(pages)} of these steps: computing them from nothing (`make reproduce`) "
                 f"takes {pages.seconds.sum() / 3600:.2f} h of wall time at these costs"
                 + (f", {int(pages.seconds.isna().sum())} steps untimed." if pages.seconds.isna().any() else "."))
    untimed = entries[~timed & entries.lower.notna()]
    if len(untimed):
        lines.append(f"Fine-tunes without a recorded time: {len(untimed)}, at least "
                     f"{untimed.lower.sum() / 60:.0f} min by their own step times.")
    return "\n".join(lines) + "\n"
