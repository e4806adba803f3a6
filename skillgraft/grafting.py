"""Grafting: deltas as values, applied to a model in place and reverted bit-exactly; stitching.

A delta is ``dict[str, Tensor]`` (θ_ft − θ_pre over the graftable parameters), keyed by
parameter name like a :class:`~skillgraft.masks.Mask`. The model holds θ_pre between
operations: a graft θ_pre + γ⊙δ or a whole delta is applied in place and reverted
bit-exactly from a sparse undo log (the overwritten entries only), never from a copy.
*Stitching* (Localize-and-Stitch) merges several task grafts into one model.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from .masks import Mask
from .models import check_names, graftable_parameters, shapes

__all__ = ["Delta", "snapshot", "compute_delta", "difference", "grafted", "apply_delta", "Stitched", "stitch",
           "only_graftable_trainable"]

Delta = dict[str, Tensor]


def snapshot(model: nn.Module) -> Delta:
    """A detached copy of the graftable parameters (one copy of the blocks: use sparingly)."""
    return {n: p.detach().clone() for n, p in graftable_parameters(model).items()}


def compute_delta(pre: Mapping[str, Tensor], ft: Mapping[str, Tensor]) -> Delta:
    """δ = ft − pre, name by name."""
    check_names(shapes(ft), shapes(pre), "fine-tuned weights vs pre-trained weights")
    return {n: (ft[n] - pre[n]).detach() for n in pre}


def difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Delta:
    """δ_a − δ_b, name by name (e.g. one stage's own update in continual learning)."""
    check_names(shapes(b), shapes(a), "difference of two deltas")
    return {n: v - b[n] for n, v in a.items()}


# ---------------------------------------------------------------------------- in-place grafts, exact revert
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64,  # same-width integers, to compare bits
             torch.float16: torch.int16, torch.bfloat16: torch.int16}


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Cosine similarity of two deltas over all their entries (in float64)."""
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = sum(float(a[n].double().pow(2).sum()) for n in a) ** 0.5
    nb = sum(float(b[n].double().pow(2).sum()) for n in b) ** 0.5
    return dot / (na * nb)


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
    check_names(shapes(delta), shapes(params), "delta", subset=True)
    check_names(mask.shapes, shapes(delta), "mask vs delta", subset=True)
    saved = {}
    try:
        with torch.no_grad():
            for n, index in mask.index.items():
                flat = params[n].data.view(-1)
                index = index.to(flat.device)
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
    check_names(shapes(delta), shapes(params), "delta", subset=True)
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
        check_names(masks[t].shapes, first.shapes, f"mask of task {t!r}")
        check_names(first.shapes, shapes(deltas[t]), f"delta of task {t!r}", subset=True)
    union, merged = {}, {}
    for n in first.shapes:
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
