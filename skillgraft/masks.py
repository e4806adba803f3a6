"""The graft mask γ: one type, its baselines, its one file format.

A :class:`Mask` is a set of grafted entries: per graftable parameter, the sorted flat
positions of its grafted entries (int64) and the parameter's shape. Grafts are sparse
(|γ| ≪ N), so this is also the compact form: a mask costs 8 bytes per grafted entry, in
memory, in the store and in a mask file. Dense bool tensors are built only on request
(:meth:`Mask.dense`). Localization, grafting, stitching and the overlap metrics all use
this one type.

Baselines of a delta δ: :func:`top_movement` (the base patch: largest |δ|) and
:func:`random_mask` (uniform, seeded), both of an exact size round(sparsity·N).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Iterator, Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from .files import atomic
from .models import check_names, graftable_parameters

__all__ = ["Mask", "FORMAT", "count_for", "top_k", "top_movement", "random_mask"]

FORMAT = "skillgraft.mask/2"  # a safetensors file: one int64 positions tensor per parameter; shapes and meta in its header

_MODULE_KINDS = (  # first match wins, on the lower-cased name; covers llama/mistral/qwen2, gpt2, bert/roberta
    ("norm", ("norm", "ln_")),                   # input_layernorm, ln_1, LayerNorm
    ("attention", ("attn", "attention")),        # self_attn.q_proj, attn.c_attn, attention.self.query
    ("mlp", ("mlp", "intermediate", "output")),  # mlp.gate_proj, mlp.c_fc, intermediate.dense, output.dense
)


def _module_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in _MODULE_KINDS if any(k in low for k in keys)), "other")


class Mask:
    """A binary graft γ over named parameters, as sorted flat positions, plus JSON-able ``meta``.

    ``Mask({name: bool tensor})`` builds one from dense tensors; :meth:`from_positions` from
    positions and the parameters' shapes (or the parameters themselves, for their device).
    """

    __slots__ = ("index", "shapes", "meta")

    def __init__(self, masks: Mapping[str, Tensor], meta: Mapping | None = None):
        bad = [n for n, m in masks.items() if not isinstance(m, Tensor) or m.dtype != torch.bool]
        if bad:
            raise ValueError(f"mask tensors must be torch.bool; not so for {bad[:3]}")
        self.index = {n: m.reshape(-1).nonzero().squeeze(1) for n, m in masks.items()}
        self.shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self.meta = dict(meta or {})

    @classmethod
    def _of(cls, index: dict[str, Tensor], shapes: Mapping[str, tuple], meta: Mapping | None = None) -> "Mask":
        """From sorted, distinct, in-range positions (not checked: the algorithms' own output)."""
        mask = cls.__new__(cls)
        mask.index, mask.shapes, mask.meta = index, dict(shapes), dict(meta or {})
        return mask

    @classmethod
    def from_positions(cls, positions: Mapping[str, Tensor], like: Mapping, meta: Mapping | None = None) -> "Mask":
        """Positions per name (any integer dtype); ``like`` maps the same names to the parameters
        (shapes and device taken from them) or to shapes. Positions are checked and sorted."""
        shapes = {n: tuple(t.shape) if isinstance(t, Tensor) else tuple(t) for n, t in like.items()}
        check_names({n: () for n in positions}, {n: () for n in shapes}, "mask positions")
        index = {}
        for n, shape in shapes.items():
            pos = torch.as_tensor(positions[n]).long().reshape(-1)
            size = math.prod(shape)
            if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= size):
                raise ValueError(f"mask positions of {n} fall outside its {size} entries")
            pos = pos.unique(sorted=True)
            device = like[n].device if isinstance(like[n], Tensor) else pos.device
            index[n] = pos.to(device)
        return cls._of(index, shapes, meta)

    @classmethod
    def full(cls, like: Mapping[str, Tensor], value: bool, meta: Mapping | None = None) -> "Mask":
        return cls({n: torch.full(t.shape, bool(value), device=t.device) for n, t in like.items()}, meta)

    def with_meta(self, meta: Mapping | None) -> "Mask":
        return Mask._of(self.index, self.shapes, meta)

    # ------------------------------------------------------------------ dense views
    def dense(self, name: str) -> Tensor:
        """The bool tensor of parameter ``name`` (built on request)."""
        index = self.index[name]
        out = torch.zeros(math.prod(self.shapes[name]), dtype=torch.bool, device=index.device)
        out[index] = True
        return out.view(self.shapes[name])

    def __getitem__(self, name: str) -> Tensor:
        return self.dense(name)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        """(name, dense bool tensor), one parameter at a time."""
        return ((n, self.dense(n)) for n in self.index)

    def to_dense(self) -> dict[str, Tensor]:
        return dict(self.items())

    # ------------------------------------------------------------------ sizes and comparisons
    @property
    def count(self) -> int:
        """|γ|: the number of grafted entries."""
        return sum(i.numel() for i in self.index.values())

    @property
    def total(self) -> int:
        """N: the number of entries the mask covers."""
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def sparsity(self) -> float:
        """|γ| / N over the graftable parameters only."""
        return self.count / max(self.total, 1)

    def equal(self, other: "Mask") -> bool:
        """Same names and the same entries (``meta`` aside)."""
        return (self.shapes == other.shapes and self.count == other.count
                and all(torch.equal(i, other.index[n].to(i.device)) for n, i in self.index.items()))

    def _shared(self, other: "Mask", what: str) -> None:
        for n in set(self.shapes) & set(other.shapes):
            if math.prod(self.shapes[n]) != math.prod(other.shapes[n]):
                raise ValueError(f"{what}: parameter {n!r} has {math.prod(self.shapes[n])} entries in one mask, "
                                 f"{math.prod(other.shapes[n])} in the other")

    def intersection_count(self, other: "Mask") -> int:
        """|self ∩ other|; a name missing from a mask counts as all False there."""
        self._shared(other, "intersection of two masks")
        return sum(int(torch.isin(i, other.index[n].to(i.device)).sum()) for n, i in self.index.items()
                   if n in other.index)

    def added(self, base: "Mask") -> int:
        """Entries here that are not in ``base``."""
        return self.count - self.intersection_count(base)

    def _combine(self, other: "Mask", op: Callable[[Tensor, Tensor], Tensor], what: str) -> "Mask":
        check_names(other.shapes, self.shapes, f"{what} of two masks")
        return Mask({n: op(self.dense(n), other.dense(n).to(self.index[n].device)) for n in self.index}, {"op": what})

    def union(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_or, "union")

    def intersection(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_and, "intersection")

    def overlap(self, other: "Mask") -> float:
        """Asymmetric overlap |self ∩ other| / |other|: the share of ``other`` that ``self`` also
        holds (NaN when ``other`` is empty)."""
        return self.intersection_count(other) / other.count if other.count else float("nan")

    def jaccard(self, other: "Mask") -> float:
        """|self ∩ other| / |self ∪ other| (NaN when both are empty)."""
        inter = self.intersection_count(other)
        union = self.count + other.count - inter
        return inter / union if union else float("nan")

    def by_layer_module(self) -> pd.DataFrame:
        """Where the graft sits: one row per (layer, module kind) with its count and share of |γ|."""
        rows = []
        for n, i in self.index.items():
            layer = re.search(r"\.(\d+)\.", n)
            rows.append((int(layer.group(1)) if layer else -1, _module_kind(n), math.prod(self.shapes[n]), i.numel()))
        df = pd.DataFrame(rows, columns=["layer", "module", "params", "count"])
        df = df.groupby(["layer", "module"], as_index=False)[["params", "count"]].sum()
        df["share"] = df["count"] / max(self.count, 1)     # fraction of the graft in this group
        df["density"] = df["count"] / df["params"]         # fraction of this group that is grafted
        return df.sort_values(["layer", "module"]).reset_index(drop=True)

    def positions(self) -> dict[str, Tensor]:
        """The grafted entries as sorted flat positions per parameter (int64, CPU)."""
        return {n: i.cpu() for n, i in self.index.items()}

    def __repr__(self) -> str:
        return f"Mask(count={self.count}, total={self.total}, sparsity={self.sparsity:.3g}, meta={self.meta})"

    # ------------------------------------------------------------------ the file format
    def save(self, path: str | Path) -> Path:
        """Write the mask to ``path``: a safetensors file of positions, with the shapes, the
        counts and ``meta`` in its header (:data:`FORMAT`). Atomic: a reader never sees half a file."""
        from safetensors.torch import save_file

        path = Path(path)
        header = {"format": FORMAT, "shapes": json.dumps(self.shapes), "count": str(self.count),
                  "total": str(self.total), "meta": json.dumps(self.meta, sort_keys=True, default=str)}
        with atomic(path) as tmp:
            save_file({n: i.contiguous() for n, i in self.positions().items()}, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Mask":
        """Read a mask file; with ``model``, check names and shapes against its graftable parameters
        (and place the positions on its device)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no mask file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                positions = {n: f.get_tensor(n) for n in f.keys()}
        except Exception as err:  # safetensors raises its own error type for a truncated or foreign file
            raise ValueError(f"{path} is not a readable mask file (truncated or not safetensors): {err}") from err
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a skillgraft mask file: its header says format "
                             f"{header.get('format')!r}, expected {FORMAT!r} (written by Mask.save)")
        shapes = {n: tuple(s) for n, s in json.loads(header["shapes"]).items()}
        meta = json.loads(header.get("meta", "{}"))
        if model is None:
            return cls.from_positions(positions, shapes, meta)
        params = graftable_parameters(model)
        check_names(shapes, {n: tuple(p.shape) for n, p in params.items()},
                    f"mask {path.name} vs model {getattr(model.config, 'model_type', type(model).__name__)}")
        return cls.from_positions(positions, params, meta)


# ---------------------------------------------------------------------------- baselines
def count_for(sparsity: float, total: int) -> int:
    """round(sparsity · total), for a sparsity in [0, 1]."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
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


def top_k(scores: Callable[[], Iterator[tuple[str, Tensor]]], k: int, meta: Mapping | None = None) -> Mask:
    """The mask of the k highest scores over all tensors; ties go to earlier parameters, then
    earlier positions.

    ``scores()`` yields (name, scores) in a fixed order and is called a few times, so that
    no tensor of the size of the whole model is ever built (candidates: about 2k in all).
    """
    shapes = {n: tuple(s.shape) for n, s in scores()}
    if k == 0:
        return Mask._of({n: torch.zeros(0, dtype=torch.long, device=s.device) for n, s in scores()}, shapes, meta)
    threshold = _kth_largest(scores, k)
    ties_wanted = k - sum(int((s > threshold).sum()) for _, s in scores())
    index = {}
    for n, s in scores():
        flat = s.reshape(-1)
        above = (flat > threshold).nonzero().squeeze(1)
        if ties_wanted > 0:
            ties = (flat == threshold).nonzero().squeeze(1)[:ties_wanted]
            ties_wanted -= ties.numel()
            above = torch.cat([above, ties]).sort().values
        index[n] = above
    return Mask._of(index, shapes, meta)


def top_movement(delta: Mapping[str, Tensor], sparsity: float) -> Mask:
    """The base patch: the round(sparsity·N) entries of largest |δ| over all graftable parameters."""
    if not all(torch.isfinite(d).all() for d in delta.values()):
        raise ValueError("delta holds NaN or infinite values; the fine-tuning run diverged")
    k = count_for(sparsity, sum(d.numel() for d in delta.values()))
    return top_k(lambda: ((n, d.abs()) for n, d in delta.items()), k, {"method": "top_movement", "sparsity": sparsity})


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
    k = count_for(sparsity, sum(sizes))
    picks = _sample_without_replacement(sum(sizes), k, torch.Generator().manual_seed(seed)).sort().values
    index, start = {}, 0
    for (n, d), size in zip(delta.items(), sizes):
        lo, hi = torch.searchsorted(picks, torch.tensor([start, start + size])).tolist()
        index[n], start = (picks[lo:hi] - start).to(d.device), start + size
    return Mask._of(index, {n: tuple(d.shape) for n, d in delta.items()},
                    {"method": "random", "sparsity": sparsity, "seed": seed})
