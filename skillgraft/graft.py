"""Masks and grafting: graftable parameters, the graft mask, baselines, apply/revert, stitching.

Vocabulary (Localize-and-Stitch): the *base patch* γ_base is the top-movement mask; the
*sigmoid bias* b keeps the relaxed graft near γ_base at the start (localization, in
:mod:`skillgraft.localization`); *stitching* merges several task grafts into one model.

A delta is ``dict[str, Tensor]`` (θ_ft − θ_pre over the graftable parameters) and a
:class:`Mask` one bool tensor per graftable parameter, both keyed by parameter name. The
model holds θ_pre between operations: grafts are applied in place and reverted
bit-exactly from a sparse undo log (the overwritten entries only), never from a copy.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from .models import arch_spec

__all__ = ["graftable_parameters", "num_graftable", "snapshot", "compute_delta", "Mask", "top_movement",
           "random_mask", "grafted", "apply_delta", "Stitched", "stitch", "only_graftable_trainable",
           "GraftConfig", "LocalizeResult", "localize"]

Delta = dict[str, Tensor]


# ---------------------------------------------------------------------------- graftable parameters
def graftable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters inside the transformer blocks (weights, biases, norms), in model order."""
    pattern = re.compile(arch_spec(model).blocks)
    return {n: p for n, p in model.named_parameters() if pattern.search(n)}


def num_graftable(model: nn.Module) -> int:
    """N, the number of graftable entries: the denominator of every sparsity."""
    return sum(p.numel() for p in graftable_parameters(model).values())


def snapshot(model: nn.Module) -> Delta:
    """A detached copy of the graftable parameters (one copy of the blocks: use sparingly)."""
    return {n: p.detach().clone() for n, p in graftable_parameters(model).items()}


def compute_delta(pre: Mapping[str, Tensor], ft: Mapping[str, Tensor]) -> Delta:
    """δ = ft − pre, name by name."""
    _check_names(_shapes(ft), _shapes(pre), "fine-tuned weights vs pre-trained weights")
    return {n: (ft[n] - pre[n]).detach() for n in pre}


def _shapes(tensors: Mapping[str, Tensor]) -> dict[str, tuple]:
    return {n: tuple(t.shape) for n, t in tensors.items()}


def _check_names(got: Mapping[str, tuple], want: Mapping[str, tuple], what: str, subset: bool = False) -> None:
    """Raise a ValueError saying which names are missing/unexpected or which shapes differ."""
    extra, missing = [n for n in got if n not in want], [] if subset else [n for n in want if n not in got]
    if extra or missing:
        parts = [f"{len(v)} {k} name(s) (e.g. {v[:3]})" for k, v in (("missing", missing), ("unexpected", extra)) if v]
        raise ValueError(f"{what}: parameter names do not match: {'; '.join(parts)}. Made for another model?")
    for n in (n for n in want if n in got):  # in the reference's order
        if tuple(got[n]) != tuple(want[n]):
            raise ValueError(f"{what}: shape mismatch for {n!r}: {tuple(got[n])} here, {tuple(want[n])} expected")


# ---------------------------------------------------------------------------- masks
_MODULE_KINDS = (  # first match wins, on the lower-cased name; covers llama/mistral/qwen2, gpt2, bert/roberta
    ("norm", ("norm", "ln_")),                   # input_layernorm, ln_1, LayerNorm
    ("attention", ("attn", "attention")),        # self_attn.q_proj, attn.c_attn, attention.self.query
    ("mlp", ("mlp", "intermediate", "output")),  # mlp.gate_proj, mlp.c_fc, intermediate.dense, output.dense
)


def _module_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in _MODULE_KINDS if any(k in low for k in keys)), "other")


class Mask:
    """A binary graft γ: one bool tensor per graftable parameter, plus JSON-able ``meta``."""

    def __init__(self, masks: Mapping[str, Tensor], meta: Mapping | None = None):
        bad = [n for n, m in masks.items() if not isinstance(m, Tensor) or m.dtype != torch.bool]
        if bad:
            raise ValueError(f"mask tensors must be torch.bool; not so for {bad[:3]}")
        self.masks: dict[str, Tensor] = dict(masks)
        self.meta: dict = dict(meta or {})

    @classmethod
    def full(cls, like: Mapping[str, Tensor], value: bool, meta: Mapping | None = None) -> "Mask":
        return cls({n: torch.full(t.shape, bool(value), device=t.device) for n, t in like.items()}, meta)

    def __getitem__(self, name: str) -> Tensor:
        return self.masks[name]

    def items(self):
        return self.masks.items()

    @property
    def count(self) -> int:
        """|γ|: the number of grafted entries."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def total(self) -> int:
        """N: the number of graftable entries the mask covers."""
        return sum(m.numel() for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        """|γ| / N over the graftable parameters only."""
        return self.count / max(self.total, 1)

    def equal(self, other: "Mask") -> bool:
        """Same names and the same entries (``meta`` aside)."""
        return set(self.masks) == set(other.masks) and all(torch.equal(m, other[n]) for n, m in self.items())

    def _combine(self, other: "Mask", op: Callable[[Tensor, Tensor], Tensor], what: str) -> "Mask":
        _check_names(_shapes(other.masks), _shapes(self.masks), f"{what} of two masks")
        return Mask({n: op(m, other[n]) for n, m in self.items()}, {"op": what})

    def union(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_or, "union")

    def intersection(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_and, "intersection")

    def overlap(self, other: "Mask") -> float:
        """Asymmetric overlap |self ∩ other| / |other| (0 when ``other`` is empty)."""
        return self.intersection(other).count / max(other.count, 1)

    def jaccard(self, other: "Mask") -> float:
        """|self ∩ other| / |self ∪ other| (0 when both are empty)."""
        return self.intersection(other).count / max(self.union(other).count, 1)

    def by_layer_module(self) -> pd.DataFrame:
        """Where the graft sits: one row per (layer, module kind) with its count and share of |γ|."""
        rows = []
        for n, m in self.items():
            layer = re.search(r"\.(\d+)\.", n)
            rows.append((int(layer.group(1)) if layer else -1, _module_kind(n), m.numel(), int(m.sum())))
        df = pd.DataFrame(rows, columns=["layer", "module", "params", "count"])
        df = df.groupby(["layer", "module"], as_index=False)[["params", "count"]].sum()
        df["share"] = df["count"] / max(self.count, 1)     # fraction of the graft in this group
        df["density"] = df["count"] / df["params"]         # fraction of this group that is grafted
        return df.sort_values(["layer", "module"]).reset_index(drop=True)

    def positions(self) -> dict[str, Tensor]:
        """The grafted entries as sorted flat positions per parameter (int64, CPU): a compact form."""
        return {n: m.reshape(-1).nonzero().squeeze(1).cpu() for n, m in self.items()}

    @classmethod
    def from_positions(cls, positions: Mapping[str, Tensor], like: Mapping[str, Tensor],
                       meta: Mapping | None = None) -> "Mask":
        """The inverse of :meth:`positions`, with shapes and devices taken from ``like`` (e.g. the
        graftable parameters); names must match."""
        _check_names({n: torch.Size([0]) for n in positions}, {n: torch.Size([0]) for n in like}, "mask positions")
        out = {}
        for n, t in like.items():
            pos = positions[n].long()
            if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= t.numel()):
                raise ValueError(f"mask positions of {n} fall outside its {t.numel()} entries")
            m = torch.zeros(t.numel(), dtype=torch.bool)
            m[pos] = True
            out[n] = m.view(t.shape).to(t.device)
        return cls(out, meta)

    def __repr__(self) -> str:
        return f"Mask(count={self.count}, total={self.total}, sparsity={self.sparsity:.3g}, meta={self.meta})"

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors, bool as uint8) and ``path.with_suffix('.json')`` (counts, meta)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix == ".json":
            raise ValueError(f"{path}: name the tensors file e.g. mask.safetensors; the .json beside it is metadata")
        info = {"format": "skillgraft.mask/1", "count": self.count, "total": self.total, "sparsity": self.sparsity,
                "meta": self.meta}
        text = json.dumps(info, sort_keys=True, indent=2, default=str)
        tensors = {n: m.to(torch.uint8).contiguous().cpu() for n, m in self.items()}
        _atomic(path, lambda tmp: save_file(tensors, str(tmp)))
        _atomic(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Mask":
        """Read a saved mask; with ``model``, check names and shapes against its graftable parameters."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no mask file at {path}")
        raw = load_file(str(path))
        if any(t.dtype != torch.uint8 or (t.numel() and int(t.max()) > 1) for t in raw.values()):
            raise ValueError(f"{path} is not a mask: expected uint8 tensors of 0/1")
        meta_file = path.with_suffix(".json")
        meta = json.loads(meta_file.read_text(encoding="utf-8")).get("meta", {}) if meta_file.is_file() else {}
        if model is not None:
            params = graftable_parameters(model)
            _check_names(_shapes(raw), _shapes(params), f"mask {path.name} vs model "
                         f"{getattr(model.config, 'model_type', type(model).__name__)}")
            return cls({n: raw[n].bool().to(p.device) for n, p in params.items()}, meta)
        return cls({n: t.bool() for n, t in raw.items()}, meta)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------- baselines
def _count_for(sparsity: float, total: int) -> int:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1] of the graftable parameters, got {sparsity!r}")
    return round(sparsity * total)


@torch.no_grad()
def _kth_largest(scores: Callable[[], Iterator[tuple[str, Tensor]]], k: int, sample: int = 1 << 20) -> Tensor:
    """The k-th largest of all scores, without sorting them: a strided sample gives a bound
    t with (checked) at least k scores ≥ t, and only those candidates are ranked."""
    sizes = [s.numel() for _, s in scores()]
    total = sum(sizes)
    stride = max(1, total // sample)
    picked = torch.cat([s.reshape(-1)[::stride].float().cpu() for _, s in scores()])
    rank = 2 * k * picked.numel() // total + 16                # expect about 2k scores above the bound
    while True:
        bound = picked.topk(rank).values[-1] if rank < picked.numel() else None
        cands = [s.reshape(-1) if bound is None else s.reshape(-1)[s.reshape(-1) >= bound.to(s.dtype)]
                 for _, s in scores()]
        if bound is None or sum(c.numel() for c in cands) >= k:
            return torch.cat([c.to(cands[0].dtype) for c in cands]).topk(k).values[-1]
        rank *= 4                                               # too few above the bound: lower it


def _top_k(scores: Callable[[], Iterator[tuple[str, Tensor]]], k: int) -> dict[str, Tensor]:
    """The k highest scores over all tensors; ties go to earlier parameters, then earlier positions.

    ``scores()`` yields (name, scores) in a fixed order and is called a few times, so that
    no tensor of the size of the whole model is ever built (candidates: about 2k in all).
    """
    if k == 0:
        return {n: torch.zeros(s.shape, dtype=torch.bool, device=s.device) for n, s in scores()}
    threshold = _kth_largest(scores, k)
    ties_wanted = k - sum(int((s > threshold).sum()) for _, s in scores())
    out = {}
    for n, s in scores():
        m = s > threshold
        if ties_wanted > 0:
            ties = (s.reshape(-1) == threshold).nonzero().squeeze(1)[:ties_wanted]
            m.view(-1)[ties] = True
            ties_wanted -= ties.numel()
        out[n] = m
    return out


def top_movement(delta: Mapping[str, Tensor], sparsity: float) -> Mask:
    """The base patch: the round(sparsity·N) entries of largest |δ| over all graftable parameters."""
    if not all(torch.isfinite(d).all() for d in delta.values()):
        raise ValueError("delta holds NaN or infinite values; the fine-tuning run diverged")
    k = _count_for(sparsity, sum(d.numel() for d in delta.values()))
    masks = _top_k(lambda: ((n, d.abs()) for n, d in delta.items()), k)
    return Mask(masks, {"method": "top_movement", "sparsity": sparsity})


def _sample_without_replacement(n: int, k: int, gen: torch.Generator) -> Tensor:
    """k distinct integers drawn uniformly from [0, n), in draw order (int64, CPU).

    For k ≪ n: the first k distinct values of a stream of uniform draws, which is a uniformly
    random k-subset, at a cost of O(k) instead of a permutation of all n; else a permutation.
    """
    if k > n // 8:
        return torch.randperm(n, generator=gen)[:k]
    draws = torch.empty(0, dtype=torch.long)
    while True:
        more = torch.randint(n, (int(1.1 * k) + 16 - min(draws.numel(), k),), generator=gen, dtype=torch.long)
        draws = torch.cat([draws, more])
        uniq, inverse = torch.unique(draws, return_inverse=True)
        first = torch.full((uniq.numel(),), draws.numel(), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(draws.numel()), reduce="amin")
        if uniq.numel() >= k:
            return draws[first.sort().values[:k]]


def random_mask(delta: Mapping[str, Tensor], sparsity: float, seed: int = 0) -> Mask:
    """Exactly round(sparsity·N) entries drawn uniformly at random (seeded) over the graftable parameters.

    Positions are drawn over the parameters laid end to end in ``delta``'s order, so the
    mask depends only on the seed, the sparsity and the parameters' names, order and sizes.
    """
    sizes = [d.numel() for d in delta.values()]
    k = _count_for(sparsity, sum(sizes))
    picks = _sample_without_replacement(sum(sizes), k, torch.Generator().manual_seed(seed)).sort().values
    out, start = {}, 0
    for (n, d), size in zip(delta.items(), sizes):
        lo, hi = torch.searchsorted(picks, torch.tensor([start, start + size])).tolist()
        m = torch.zeros(d.numel(), dtype=torch.bool)
        m[picks[lo:hi] - start] = True
        out[n], start = m.view(d.shape).to(d.device), start + size
    return Mask(out, {"method": "random", "sparsity": sparsity, "seed": seed})


# ---------------------------------------------------------------------------- in-place grafts, exact revert
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64,  # same-width integers, to compare bits
             torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _add_exact(p: Tensor, x: Tensor, scratch: tuple[Tensor, Tensor] | None = None) -> tuple | None:
    """p += x in place; return the undo log: None if p − x gives p back bit-exactly (the common case),
    else (positions, old values), or (None, copy of p) where over a third would be lost (x as large as p).
    ``scratch``: two flat buffers of at least p.numel() entries, to avoid allocations.
    """
    flat, xf = p.data.view(-1), x.reshape(-1).to(p.dtype)
    new, back = scratch if scratch is not None else (torch.empty_like(flat), torch.empty_like(flat))
    new, back = torch.add(flat, xf, out=new[:flat.numel()]), back[:flat.numel()]
    bits = _INT_VIEW[p.dtype]
    log_ = None
    if not torch.equal(torch.sub(new, xf, out=back).view(bits), flat.view(bits)):  # rounding, sign of zero
        lost = torch.ne(back.view(bits), flat.view(bits)).nonzero().squeeze(1)
        log_ = (None, flat.clone()) if 3 * lost.numel() > flat.numel() else (lost, flat[lost].clone())
    flat.copy_(new)
    return log_


def _sub_exact(p: Tensor, x: Tensor, log_: tuple[Tensor | None, Tensor] | None) -> None:
    """Undo :func:`_add_exact` bit-exactly, given the same ``x``."""
    flat = p.data.view(-1)
    if log_ is not None and log_[0] is None:  # the dense fallback: a copy of this parameter
        flat.copy_(log_[1])
        return
    flat.sub_(x.reshape(-1).to(p.dtype))
    if log_ is not None:
        flat[log_[0]] = log_[1]


@contextmanager
def _added(params: Mapping[str, nn.Parameter], increment: Callable[[str], Tensor]) -> Iterator[None]:
    """θ_n += increment(n) for every n, reverted bit-exactly on exit (also on exception).

    ``increment`` is called twice per name and must return the same tensor both times.
    """
    undo = {}
    try:
        with torch.no_grad():
            for n, p in params.items():
                undo[n] = _add_exact(p, increment(n))
        yield
    finally:
        with torch.no_grad():
            for n, log_ in undo.items():
                _sub_exact(params[n], increment(n), log_)


@contextmanager
def grafted(model: nn.Module, delta: Mapping[str, Tensor], mask: Mask) -> Iterator[nn.Module]:
    """θ ← θ_pre + γ⊙δ in place, on the masked entries only; restored bit-exactly on exit.

    Holds only the overwritten values (positions + old values: 12 bytes per grafted entry).
    """
    params = graftable_parameters(model)
    _check_names(_shapes(delta), _shapes(params), "delta", subset=True)
    _check_names(_shapes(mask.masks), _shapes(delta), "mask vs delta", subset=True)
    saved = {}
    try:
        with torch.no_grad():
            for n, m in mask.items():
                flat = params[n].data.view(-1)
                index = m.reshape(-1).nonzero().squeeze(1)
                old = flat[index].clone()
                flat[index] = old + delta[n].reshape(-1)[index].to(flat.dtype)
                saved[n] = (index, old)
        yield model
    finally:
        with torch.no_grad():
            for n, (index, old) in saved.items():
                params[n].data.view(-1)[index] = old


@contextmanager
def apply_delta(model: nn.Module, delta: Mapping[str, Tensor], scale: float = 1.0) -> Iterator[nn.Module]:
    """θ ← θ_pre + scale·δ on every graftable entry (e.g. the fine-tuned model), reverted bit-exactly.

    The undo log keeps only the entries where θ − scale·δ would not round back to θ_pre: few
    for fine-tuning deltas (a parameter is copied whole only where δ is as large as it).
    """
    params = graftable_parameters(model)
    _check_names(_shapes(delta), _shapes(params), "delta", subset=True)
    with _added({n: params[n] for n in delta}, lambda n: delta[n] if scale == 1.0 else scale * delta[n]):
        yield model


class Stitched(NamedTuple):
    mask: Mask    # the union of the task masks
    delta: Delta  # Σ_i γ_i⊙δ_i, divided entrywise by the number of tasks that graft the entry


@torch.no_grad()
def stitch(masks: Mapping[str, Mask], deltas: Mapping[str, Mapping[str, Tensor]]) -> Stitched:
    """Merge several task grafts into one (Localize-and-Stitch): overlaps are averaged."""
    if not masks or set(masks) != set(deltas):
        raise ValueError(f"stitch needs one mask and one delta per task; masks for {sorted(masks)}, "
                         f"deltas for {sorted(deltas)}")
    tasks = list(masks)
    first = masks[tasks[0]]
    for t in tasks:
        _check_names(_shapes(masks[t].masks), _shapes(first.masks), f"mask of task {t!r}")
        _check_names(_shapes(first.masks), _shapes(deltas[t]), f"delta of task {t!r}", subset=True)
    union, merged = {}, {}
    for n in first.masks:
        count = sum(masks[t][n].to(torch.int32) for t in tasks)                       # tasks per entry
        total = sum(torch.where(masks[t][n], deltas[t][n], 0.0) for t in tasks)
        union[n] = count > 0
        merged[n] = total / count.clamp(min=1).to(total.dtype)
    return Stitched(Mask(union, {"method": "stitch", "tasks": tasks}), merged)


@contextmanager
def only_graftable_trainable(model: nn.Module, train_mode: bool = False) -> Iterator[dict[str, nn.Parameter]]:
    """Gradients for the graftable parameters only; eval mode unless ``train_mode`` (dropout).

    Restores ``requires_grad``, the train/eval mode and empty ``.grad`` on exit.
    """
    params = graftable_parameters(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in params)
            p.grad = None
        model.train(train_mode)
        yield params
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)


def __getattr__(name: str):
    """The localization algorithm lives in :mod:`skillgraft.localization`; its names are re-exported here."""
    if name in ("GraftConfig", "LocalizeResult", "localize"):
        from . import localization
        return getattr(localization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
