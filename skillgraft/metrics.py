"""Scores used by the book: accuracy and calibration, region overlap, continual learning.

All functions are pure: numpy arrays (or CPU tensors) in, floats, small dataclasses or
tidy DataFrames out. ``probs`` is always an (N, C) array of class probabilities and
``labels`` an (N,) array of integer class ids.

Where the paper leaves a definition open (ECE binning, the forgetting score) the
docstring states the choice made here, so that the book can quote it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import optimize, special, stats

from .masks import Mask

__all__ = [
    "accuracy", "ece", "ece_top", "top_class", "reliability_bins", "brier", "nll", "softmax", "fit_temperature",
    "calibration_summary", 
    "overlap", "jaccard", "overlap_matrix", "RandomOverlap", "random_overlap", "random_overlap_matrix",
    "backward_transfer", "forgetting",
    "RankCorrelation", "rank_correlation",
]

log = logging.getLogger(__name__)

_PROB_TOL = 1e-3       # rows of `probs` must sum to 1 within this tolerance
_NLL_FLOOR = 1e-12     # probabilities are clipped here before the log
_LOG_T_BOUNDS = (-5.0, 5.0)  # temperature search range: T in [e^-5, e^5] ≈ [0.0067, 148]
OVERLAP_KINDS = ("asymmetric", "jaccard")


# ----------------------------------------------------------------------------- inputs
def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``probs`` (N, C) float and ``labels`` (N,) int as numpy arrays."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probs must be a non-empty (N, C) array with C >= 2 classes; got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape (N,) = ({probs.shape[0]},); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"labels must be integer class ids; got dtype {labels.dtype}")
        labels = labels.astype(int)
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]; got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative (pass probabilities, not logits)")
    worst = np.abs(probs.sum(axis=1) - 1).max()
    if worst > _PROB_TOL:
        raise ValueError(f"each row of probs must sum to 1 (pass probabilities, not logits); worst row is off by {worst:.3g}")
    return probs, labels


def _check_bins(n_bins: int) -> int:
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    return int(n_bins)


# ----------------------------------------------------------------------------- accuracy and calibration
def accuracy(probs, labels) -> float:
    """Fraction of examples whose arg-max class is the label."""
    probs, labels = _check(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin i holds confidences in (i/n, (i+1)/n]; bin 0 also holds 0 exactly."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(probs, labels, n_bins: int = 10) -> pd.DataFrame:
    """Per-bin confidence and accuracy of the top-class prediction.

    Bins are ``n_bins`` equal-width intervals of the confidence (the largest class
    probability): bin i is (i/n, (i+1)/n], and bin 0 also holds confidence 0. Returns one
    row per bin, empty bins included, with columns ``bin, lower, upper, count,
    confidence`` (mean confidence in the bin), ``accuracy`` and ``gap`` (accuracy −
    confidence); confidence, accuracy and gap are NaN for an empty bin. Counts sum to N.
    """
    conf, correct = top_class(probs, labels)
    return _bins(conf, correct, _check_bins(n_bins))


def top_class(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Each example's confidence (its largest class probability) and whether that class is its label
    (1.0 or 0.0): all that accuracy, ECE and the reliability bins read of a prediction, so that the
    predictions of tasks with other numbers of classes can be pooled."""
    probs, labels = _check(probs, labels)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)


def _bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> pd.DataFrame:
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({
        "bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
        "confidence": mean_conf, "accuracy": mean_acc, "gap": mean_acc - mean_conf,
    })


def ece(probs, labels, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|, where the confidence of an example is
    its largest class probability, B_b are the examples whose confidence lies in
    (b/n, (b+1)/n] (bin 0 also holds 0), acc is the fraction of B_b predicted correctly
    and conf its mean confidence. The paper does not state its binning; 10 equal-width
    bins over the top-class probability is the choice of this compendium.
    """
    conf, correct = top_class(probs, labels)
    return ece_top(conf, correct, n_bins)


def ece_top(confidence, correct, n_bins: int = 10) -> float:
    """:func:`ece` from each example's top-class confidence and correctness (:func:`top_class`)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.ndim != 1 or confidence.shape != correct.shape or not len(confidence):
        raise ValueError(f"confidence and correct must be non-empty (N,) arrays of one length; got shapes "
                         f"{confidence.shape} and {correct.shape}")
    bins = _bins(confidence, correct, _check_bins(n_bins))
    full = bins[bins["count"] > 0]
    return float(np.sum(full["count"] / bins["count"].sum() * np.abs(full["gap"])))


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over examples of Σ_c (p_c − y_c)², y one-hot."""
    probs, labels = _check(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]  # (N, C)
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs, labels) -> float:
    """Mean negative log-likelihood −log p_y, with p_y clipped at 1e-12."""
    probs, labels = _check(probs, labels)
    p_y = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(p_y, _NLL_FLOOR, None))))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (N, C) → (N, C); temperature > 0."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    logits = np.asarray(logits, dtype=float)
    if logits.ndim != 2:
        raise ValueError(f"logits must be an (N, C) array; got shape {logits.shape}")
    return special.softmax(logits / temperature, axis=1)


def fit_temperature(logits, labels) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimizing the NLL of softmax(logits / T).

    Fit on held-out (dev) logits, then apply with :func:`softmax`. The search runs over
    log T in [-5, 5] with bounded Brent (``scipy.optimize.minimize_scalar``); a result on
    the boundary is logged as a warning.
    """
    logits = np.asarray(logits, dtype=float)
    if logits.ndim != 2 or not np.all(np.isfinite(logits)):
        raise ValueError(f"logits must be a finite (N, C) array; got shape {logits.shape}")
    _, labels = _check(np.full(logits.shape, 1.0 / logits.shape[1]), labels)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        logp = special.log_softmax(logits / np.exp(log_t), axis=1)  # (N, C)
        return float(-np.mean(logp[rows, labels]))

    res = optimize.minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    if min(abs(res.x - b) for b in _LOG_T_BOUNDS) < 1e-3:
        log.warning("fitted temperature %.4g is at the edge of the search range", np.exp(res.x))
    return float(np.exp(res.x))


def calibration_summary(probs, labels, n_bins: int = 10) -> dict[str, float]:
    """``{"accuracy", "ece", "brier", "nll"}`` of one set of predictions."""
    return {"accuracy": accuracy(probs, labels), "ece": ece(probs, labels, n_bins),
            "brier": brier(probs, labels), "nll": nll(probs, labels)}


# ----------------------------------------------------------------------------- region overlap
def as_mask(mask, what: str = "mask") -> Mask:
    """A :class:`~skillgraft.masks.Mask`, or a dict {name: bool (or 0/1) tensor or array} as one."""
    if isinstance(mask, Mask):
        return mask
    if not isinstance(mask, Mapping):
        raise TypeError(f"{what} must be a Mask or a dict {{name: bool tensor}}; got {type(mask).__name__}")
    dense = {}
    for n, v in mask.items():
        t = torch.as_tensor(np.asarray(v.detach().cpu() if hasattr(v, "detach") else v))
        if t.dtype != torch.bool:
            if not bool(((t == 0) | (t == 1)).all()):
                raise ValueError(f"{what} entry {n!r} must be boolean or 0/1; found other values")
            t = t.bool()
        dense[n] = t
    return Mask(dense)


def _pair_score(a: Mask, b: Mask, kind: str) -> float:
    return a.overlap(b) if kind == "asymmetric" else a.jaccard(b)


def _check_kind(kind: str) -> str:
    if kind not in OVERLAP_KINDS:
        raise ValueError(f"kind must be one of {OVERLAP_KINDS}; got {kind!r}")
    return kind


def overlap(a, b) -> float:
    """|a ∩ b| / |b|: the share of region b that region a also holds (asymmetric; NaN if b is empty).

    Masks are :class:`~skillgraft.masks.Mask` or dicts {name: bool tensor/array}; a name
    missing from one counts as all False there.
    """
    return as_mask(a).overlap(as_mask(b))


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| (symmetric; NaN if both are empty)."""
    return as_mask(a).jaccard(as_mask(b))


def overlap_matrix(masks: Mapping[str, object], kind: str = "asymmetric") -> pd.DataFrame:
    """Pairwise overlap of named masks: row i, column j holds |γ_i ∩ γ_j| / |γ_j| (asymmetric)
    or the Jaccard index (``kind="jaccard"``). The diagonal is 1 for non-empty masks."""
    _check_kind(kind)
    if not masks:
        raise ValueError("masks is empty; pass a dict {name: mask}")
    given = {name: as_mask(m, f"mask {name!r}") for name, m in masks.items()}
    names = list(given)
    values = [[_pair_score(given[i], given[j], kind) for j in names] for i in names]
    return pd.DataFrame(values, index=pd.Index(names, name="mask i"), columns=pd.Index(names, name="mask j"))


@dataclass(frozen=True)
class RandomOverlap:
    """Expected overlap of two independent uniform random masks (the chance baseline)."""

    asymmetric: float  # E|a ∩ b| / |b| = n_i / N
    jaccard: float     # E[K / (n_i + n_j − K)], K ~ Hypergeometric(N, n_i, n_j)


def random_overlap(n_i: int, n_j: int, N: int) -> RandomOverlap:
    """Chance overlap of a random mask of size ``n_i`` with one of size ``n_j``, both out of ``N``.

    The intersection K is hypergeometric with mean n_i·n_j / N, so the expected asymmetric
    overlap E[K] / n_j is n_i / N; the expected Jaccard index is summed exactly over K.
    """
    for label, v in (("n_i", n_i), ("n_j", n_j), ("N", N)):
        if int(v) != v or v < 0:
            raise ValueError(f"{label} must be a non-negative integer; got {v!r}")
    if N < 1 or n_i > N or n_j > N:
        raise ValueError(f"need 1 <= N and 0 <= n_i, n_j <= N; got n_i={n_i}, n_j={n_j}, N={N}")
    n_i, n_j, N = int(n_i), int(n_j), int(N)
    asym = n_i / N if n_j else float("nan")
    if n_i + n_j == 0:
        return RandomOverlap(asym, float("nan"))
    k = np.arange(max(0, n_i + n_j - N), min(n_i, n_j) + 1)
    pmf = stats.hypergeom.pmf(k, N, n_i, n_j)
    return RandomOverlap(asym, float(np.sum(pmf * k / (n_i + n_j - k))))


def random_overlap_matrix(sizes: Mapping[str, int], N: int, kind: str = "asymmetric") -> pd.DataFrame:
    """:func:`overlap_matrix` expected under independent random masks of the given sizes.

    Off the diagonal, entry (i, j) is the chance overlap of γ_i with γ_j; the diagonal is
    1 (a mask with itself), as in :func:`overlap_matrix`, so both can share a colour scale.
    """
    _check_kind(kind)
    names = list(sizes)
    values = [[1.0 if i == j else getattr(random_overlap(sizes[i], sizes[j], N), kind) for j in names] for i in names]
    return pd.DataFrame(values, index=pd.Index(names, name="mask i"), columns=pd.Index(names, name="mask j"))


# ----------------------------------------------------------------------------- continual learning
def _accuracy_matrix(R, min_tasks: int = 1) -> np.ndarray:
    R = np.asarray(R.to_numpy() if isinstance(R, pd.DataFrame) else R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"R must be a square T×T accuracy matrix (R[t, j] = accuracy on task j after stage t); got shape {R.shape}")
    if R.shape[0] < min_tasks:
        raise ValueError(f"R needs at least {min_tasks} tasks for this score; got T = {R.shape[0]}")
    if not np.all(np.isfinite(np.tril(R))):
        raise ValueError("R must be finite on and below the diagonal (entries above it, tasks not yet seen, may be NaN)")
    return R


def backward_transfer(R) -> float:
    """BWT = 1/(T−1) Σ_{j<T−1} (R[T−1, j] − R[j, j]) (Lopez-Paz & Ranzato 2017), 0-indexed.

    How learning later tasks changed accuracy on earlier ones, measured from just after
    each was learned; negative values mean forgetting.
    """
    R = _accuracy_matrix(R, min_tasks=2)
    T = R.shape[0]
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forgetting(R) -> float:
    """Average forgetting (Chaudhry et al. 2018), 0-indexed:
    (1/(T−1)) Σ_{j<T−1} [max_{t<T−1} R[t, j] − R[T−1, j]].

    The drop on each earlier task from its best accuracy at any stage before the last
    (stages before task j was learned included, as in Chaudhry et al.) to its final
    accuracy; positive values mean forgetting. NaNs above the diagonal are ignored.
    """
    R = _accuracy_matrix(R, min_tasks=2)
    T = R.shape[0]
    return float(np.mean([np.nanmax(R[: T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))


# ----------------------------------------------------------------------------- rank correlation
@dataclass(frozen=True)
class RankCorrelation:
    """Spearman rank correlation of two paired samples."""

    rho: float
    pvalue: float  # two-sided, from scipy.stats.spearmanr
    n: int         # number of pairs


def rank_correlation(x, y) -> RankCorrelation:
    """Spearman's rho between ``x`` and ``y`` (e.g. task similarity vs region overlap)."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be paired samples of equal length >= 2; got lengths {x.size} and {y.size}")
    res = stats.spearmanr(x, y)
    return RankCorrelation(float(res.statistic), float(res.pvalue), int(x.size))
