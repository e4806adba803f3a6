"""Localization by grafting: the paper's algorithm (official ``graft_trainer.py``), step by step.

γ_base is the top-movement base patch; S (one real score per graftable entry, S ~ U[0, 1))
parametrizes the relaxed graft frac = γ_base + (1 − 2γ_base)·σ(S − b). One epoch is one
hand-written gradient step on S over the whole train set; after each, round(frac) is
grafted and scored, and the mask with the best train + dev accuracy is kept.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Mapping

import pandas as pd
import torch
from torch import Tensor

from tqdm.auto import tqdm

from . import progress as _progress
from .grafting import Delta, _add_exact, _sub_exact, grafted, only_graftable_trainable
from .masks import Mask, count_for, top_k, top_movement
from .models import check_names, graftable_parameters, shapes

__all__ = ["SELECT", "BASES", "STARTS", "GROW_SPARSITY", "GraftConfig", "gradient_base", "LocalizeResult", "init_scores", "relaxed_frac", "localize"]

log = logging.getLogger(__name__)
SELECT = ("train+dev", "dev", "last")  # what keeps a mask
BASES = ("movement", "gradient")         # how the base patch γ_base is chosen
STARTS = ("refine", "grow")              # refine a base patch of the target size, or grow one of GROW_SPARSITY
GROW_SPARSITY = 1e-7                     # the shipped graft script's base patch: ~10 entries of a 100M model


@dataclass
class GraftConfig:
    """Localization by grafting, as the official ``graft_trainer.py``; saved beside its mask."""

    sparsity: float = 1e-4        # fraction of the N graftable entries in the base patch γ_base (top movement)
    sigmoid_bias: float = 10.0    # b in σ(S − b): large, so frac starts ≈ γ_base (official 10; L&S 5)
    lr: float = 1e7               # step on S (official 1e7); ∇θL⊙δ is tiny: pick on dev, lr·|g·δ|·σ' ~ O(1)
    epochs: int = 10              # hand-written steps on S, each over the whole train set (official 10)
    l1: float = 0.0               # L1 penalty on the relaxed graft size Σ frac (Localize-and-Stitch 10); official: 0
    batch_size: int = 8           # examples per forward/backward; gradients are averaged over the batches
    eval_batch_size: int = 16     # examples per forward when scoring train and dev accuracy
    seed: int = 0                 # seeds S ~ U[0, 1)
    select: str = "train+dev"     # which accuracy keeps a mask: "train+dev" (official), "dev", "last"
    include_base: bool = True     # the base patch (epoch 0) competes in the selection (official: it does not)
    keep_scores: bool = False     # return the final S: one fp32 per graftable entry, a model-sized tensor
    base: str = "movement"        # γ_base: "movement" = top |δ| (official); "gradient" = top −∇θL⊙δ on the train set
    start: str = "refine"         # "refine": γ_base at ``sparsity``; "grow": γ_base at GROW_SPARSITY (shipped script)
    score_all: bool = False       # score every epoch's mask in full; else stop scoring one that cannot be kept

    @property
    def base_sparsity(self) -> float:
        """The size of γ_base: ``sparsity`` when refining, GROW_SPARSITY when growing (the final
        size of a grown graft is an outcome of lr × epochs, not a parameter)."""
        return self.sparsity if self.start == "refine" else GROW_SPARSITY

    def __post_init__(self):
        count_for(self.sparsity, 1)
        for name in ("sigmoid_bias", "lr", "l1"):
            value, low = getattr(self, name), -math.inf if name == "sigmoid_bias" else 0.0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
                raise ValueError(f"{name} must be a finite number{'' if low < 0 else ' ≥ 0'}, got {value!r}")
        for name, low in (("epochs", 0), ("batch_size", 1), ("eval_batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {self.base!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        for name in ("include_base", "keep_scores", "score_all"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


@dataclass
class LocalizeResult:
    mask: Mask                   # round(frac) of the kept epoch
    base: Mask                   # γ_base at config.sparsity (top movement, or top gradient score)
    history: pd.DataFrame        # one row per epoch (0 = the base patch): count, accuracies, loss, |g·δ| scale
    best_epoch: int              # the epoch whose mask was kept
    config: GraftConfig
    scores: Delta | None = None  # the final S, when config.keep_scores


class _Workspace:
    """Flat scratch buffers as large as the largest parameter: per-parameter temporaries without allocations."""

    def __init__(self, params: Mapping[str, Tensor]):
        self.size = max(p.numel() for p in params.values())
        self.device, self.buffers = next(iter(params.values())).device, {}

    def __call__(self, slot: int, numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
        if (slot, dtype) not in self.buffers:
            self.buffers[slot, dtype] = torch.empty(self.size, dtype=dtype, device=self.device)
        return self.buffers[slot, dtype][:numel]


def init_scores(like: Mapping[str, Tensor], seed: int) -> Delta:
    """S ~ U[0, 1), fp32, drawn parameter by parameter in order from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(t.shape, generator=gen).to(t.device) for n, t in like.items()}


def relaxed_frac(scores: Tensor, base: Tensor, bias: float) -> Tensor:
    """frac = γ + (1 − 2γ)·σ(S − b), for a bool base patch γ (the reference form)."""
    sig = torch.sigmoid(scores - bias)
    return torch.where(base, 1.0 - sig, sig)


def _frac_into(z: Tensor, base: Tensor, out: Tensor) -> Tensor:
    """The same frac from z = S − b and the base patch's flat positions, written into ``out``."""
    torch.sigmoid(z.view(-1), out=out)
    out[base] = 1.0 - out[base]  # bit-identical to γ + (1 − 2γ)·σ: σ off the patch, 1 − σ on it
    return out


def _relax(params, delta, z, base: Mask, ws: _Workspace, undo: dict) -> None:
    """θ ← θ_pre + frac⊙δ in place; ``undo`` collects what an exact revert needs (usually nothing)."""
    for n, p in params.items():
        frac = _frac_into(z[n], base.index[n], ws(0, p.numel()))
        x = torch.mul(frac, delta[n].reshape(-1), out=ws(1, p.numel(), p.dtype))
        undo[n] = _add_exact(p, x, (ws(2, p.numel(), p.dtype), ws(3, p.numel(), p.dtype)))


def _abs_max(t: Tensor) -> float:
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))


@torch.no_grad()
def _unrelax(params, delta, z, base: Mask, ws: _Workspace, undo: dict, cfg: GraftConfig | None = None,
             n_batches: int = 1) -> dict[str, float]:
    """θ back to θ_pre bit-exactly; with ``cfg``, also the step on S, sharing σ(S − b) with the revert:

    S ← S − σ'(S − b)·(1 − 2γ)·(lr·g + l1), g = mean over batches of ∇θL ⊙ δ (δ is constant
    within the epoch, so the summed ``.grad`` times δ is that mean times n_batches). Frees ``.grad``.
    """
    gd_sum, gd_max, step_max = 0.0, 0.0, 0.0
    for n, log_ in undo.items():
        p, b, zf = params[n], base.index[n], z[n].view(-1)
        frac = _frac_into(zf, b, ws(0, p.numel()))
        _sub_exact(p, torch.mul(frac, delta[n].reshape(-1), out=ws(1, p.numel(), p.dtype)), log_)
        if cfg is None:
            continue
        g = p.grad.view(-1) if p.grad is not None else torch.zeros_like(zf)
        p.grad = None
        g = g.mul_(delta[n].reshape(-1)).float()                           # n_batches · g
        gd_sum, gd_max = gd_sum + float(torch.linalg.vector_norm(g, 1)), max(gd_max, _abs_max(g))
        sig = torch.sigmoid(zf, out=frac)                               # σ(S − b), on and off the patch
        deriv = sig.mul_(torch.neg(sig, out=ws(4, p.numel())).add_(1.0))  # σ'(S − b) = σ·(1 − σ)
        g.mul_(deriv).mul_(cfg.lr / n_batches)                          # lr · g · σ'
        if cfg.l1:
            g.add_(deriv, alpha=cfg.l1)                                 # σ' · (lr·g + l1)
        g[b] = -g[b]                                                    # · (1 − 2γ)
        zf.sub_(g)
        step_max = max(step_max, _abs_max(g))
    total = sum(t.numel() for t in z.values())
    return {"gd_abs_mean": gd_sum / n_batches / total, "gd_abs_max": gd_max / n_batches, "step_abs_max": step_max}


def _rounded(z: Mapping[str, Tensor], base: Mask) -> Mask:
    """round(frac) as positions, from sign tests on z = S − b plus exact checks on the few candidates."""
    index = {}
    for n, zn in z.items():
        zf, b = zn.view(-1), base.index[n]
        keep = b[1.0 - torch.sigmoid(zf[b]) > 0.5]                     # patch entries that stay (round half to even)
        if float(zf.max()) > 0:                                         # off the patch, σ(z) > ½ needs z > 0
            cand = (zf > 0).nonzero().squeeze(1)
            cand = cand[~torch.isin(cand, b)]
            keep = torch.cat([keep, cand[torch.sigmoid(zf[cand]) > 0.5]]).sort().values
        index[n] = keep
    return Mask._of(index, base.shapes)


def _epoch(clf, params, delta, z, base: Mask, batches, ws: _Workspace, cfg: GraftConfig) -> dict[str, float]:
    """One step on S: relax, sum ∇θL over the train batches, revert exactly and step (also reverts on error)."""
    undo: dict = {}
    try:
        _relax(params, delta, z, base, ws, undo)
        total = 0.0
        for batch in batches:
            loss = clf.loss(batch)
            loss.backward()
            total += float(loss.detach())
    except BaseException:
        _unrelax(params, delta, z, base, ws, undo)
        raise
    return {"loss": total / len(batches), **_unrelax(params, delta, z, base, ws, undo, cfg, len(batches))}


def _bounded_accuracy(clf, data, batch_size: int, hopeless) -> float:
    """Accuracy of ``data`` batch by batch, in the length order and batches of a whole-set
    ``clf.accuracy`` (so every prediction is the one it makes); NaN as soon as
    ``hopeless(best accuracy still reachable)`` says the rest cannot matter."""
    order, n, correct = clf.length_order(data), len(data), 0
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        correct += round(clf.accuracy(data.select(idx), batch_size=batch_size) * len(idx))
        if s + len(idx) < n and hopeless((correct + n - s - len(idx)) / n):
            return math.nan
    return correct / n


def _scores(clf, train, dev, cfg: GraftConfig, best: float | None) -> tuple[float, float]:
    """Train and dev accuracy of the grafted model, or NaN for what the selection cannot use.

    With ``best`` (the kept mask's selection key), scoring stops once this mask provably cannot
    beat it: dev first, given up when even a perfect train accuracy could not lift the sum
    above ``best``; then train, given up when it cannot. Float addition is monotone, so a
    bound ≤ ``best`` means the exact sum is too: the kept mask is the one full scoring keeps.
    """
    bs = cfg.eval_batch_size
    if best is None or cfg.select == "last":
        return clf.accuracy(train, batch_size=bs), clf.accuracy(dev, batch_size=bs)
    if cfg.select == "dev":
        return math.nan, _bounded_accuracy(clf, dev, bs, lambda reach: reach <= best)
    dv = _bounded_accuracy(clf, dev, bs, lambda reach: 1.0 + reach <= best)
    if math.isnan(dv) or 1.0 + dv <= best:
        return math.nan, dv
    return _bounded_accuracy(clf, train, bs, lambda reach: reach + dv <= best), dv


def gradient_base(clf, params, delta: Mapping[str, Tensor], batches, sparsity: float) -> Mask:
    """The entries whose grafting lowers the task loss most, to first order: top −∇θL(θ)⊙δ.

    ∇θL is summed over ``batches`` at the model's current weights (θ_pre, or the previous
    stage's model): L(θ + e_i·δ_i) − L(θ) ≈ ∇_iL·δ_i, so a large −∇_iL·δ_i marks an entry
    that helps *this* task. With one δ shared by several tasks (a multi-task model), top
    movement gives every task the same base patch; this score differs between tasks.
    """
    for batch in batches:
        clf.loss(batch).backward()
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return top_k(lambda: ((n, -(g * delta[n])) for n, g in grads.items()),
                 count_for(sparsity, sum(d.numel() for d in delta.values())), {"method": "gradient", "sparsity": sparsity})


def localize(clf, delta: Mapping[str, Tensor], train, dev, cfg: GraftConfig | None = None,
             progress: bool = True) -> LocalizeResult:
    """Find the graft γ by the paper's algorithm (official ``graft_trainer.py``; PAPER.md "Localization").

    ``clf`` is a :class:`skillgraft.prompt.PromptClassifier` over θ_pre (``lm.model``,
    ``encode``, ``loss``, ``accuracy``, ``length_order``, ``casting``); ``delta`` is θ_ft − θ_pre over all graftable
    parameters; ``train``/``dev`` are ``datasets.Dataset``. Each epoch: θ = θ_pre + frac⊙δ
    in place, g = mean over the train batches of ∇θL ⊙ δ, one step on S, then round(frac) is
    grafted and scored on train and dev; the best (first on ties) is kept. Scoring a mask stops
    as soon as it provably cannot beat the kept one (its accuracies are then NaN in the
    history; ``score_all`` scores every mask in full): the same mask is kept either way.

    Runs in eval mode (no dropout; the official trainer is in eval mode from its first
    evaluation on). Memory beyond the model and δ: S and the gradients (one fp32 per
    graftable entry each), masks as sparse positions, scratch buffers of one parameter's
    size; the model returns to θ_pre bit-exactly, also on error.
    """
    cfg = cfg or GraftConfig()
    model = clf.lm.model
    params = graftable_parameters(model)
    check_names(shapes(delta), shapes(params), "delta")
    if len(train) == 0 or len(dev) == 0:
        raise ValueError(f"localize needs non-empty train and dev sets, got {len(train)} and {len(dev)} examples")
    # batches of similar length (less padding): the gradient is a mean over the whole train set
    order = clf.length_order(train)
    batches = [clf.encode(train[order[i:i + cfg.batch_size]]) for i in range(0, len(train), cfg.batch_size)]
    if cfg.base == "gradient":
        with only_graftable_trainable(model):
            base = gradient_base(clf, params, delta, batches, cfg.base_sparsity)
    else:
        base = top_movement(delta, cfg.base_sparsity)
    z = {n: s.sub_(cfg.sigmoid_bias) for n, s in init_scores(delta, cfg.seed).items()}  # z = S − b
    ws = _Workspace(params)
    rows: list[dict] = []
    best: tuple[float, int, Mask] | None = None

    # every mask scored, with its accuracies (NaN: not needed). A NaN stays right for a mask seen
    # again: it could not beat the kept mask then, and the kept mask's key only grows.
    scored: list[tuple[Mask, float, float]] = []

    def score(epoch: int, graft: Mask, stats: dict) -> None:
        nonlocal best
        start = time.perf_counter()
        known = next((s for s in scored if s[0].equal(graft)), None)
        if known is not None:  # this rounded mask was scored before: its scores are known
            tr, dv = known[1:]
        else:
            with grafted(model, delta, graft), clf.casting():  # fixed weights: each is cast once
                tr, dv = _scores(clf, train, dev, cfg, None if best is None or cfg.score_all else best[0])
            scored.append((graft, tr, dv))
        added = graft.added(base)
        total = graft.total
        rows.append({"epoch": epoch, "count": graft.count, "sparsity": graft.count / total, "added": added,
                     "removed": base.count - (graft.count - added), "train_acc": tr, "dev_acc": dv, **stats,
                     "seconds_eval": time.perf_counter() - start})
        log.info("localize epoch %d: %s", epoch, {k: round(v, 6) for k, v in rows[-1].items()})
        key = {"train+dev": tr + dv, "dev": dv, "last": epoch}[cfg.select]
        if best is None or key > best[0]:  # NaN (not scored: it could not win) is never > best
            best = (key, epoch, graft)

    with only_graftable_trainable(model):
        if cfg.include_base:
            score(0, base, dict.fromkeys(("loss", "gd_abs_mean", "gd_abs_max", "step_abs_max", "seconds_step"),
                                         float("nan")))
        for epoch in tqdm(range(1, cfg.epochs + 1), desc="localize", disable=not progress):
            start = time.perf_counter()
            stats = _epoch(clf, params, delta, z, base, batches, ws, cfg)
            rounded = _rounded(z, base)
            score(epoch, rounded, {**stats, "seconds_step": time.perf_counter() - start})
            _progress.step(epoch, cfg.epochs, "steps on S")
    _, best_epoch, kept = best if best is not None else (0.0, 0, base)
    meta = {"method": "localize", "epoch": best_epoch, **asdict(cfg)}
    return LocalizeResult(mask=kept.with_meta(meta), base=base,
                          history=pd.DataFrame(rows), best_epoch=best_epoch, config=cfg,
                          scores={n: t.add_(cfg.sigmoid_bias) for n, t in z.items()} if cfg.keep_scores else None)
