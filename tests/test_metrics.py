"""Tests for skillgraft.metrics: hand-computed values, exact and sampled calibration, Monte Carlo baselines."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from skillgraft import metrics as M
from skillgraft.masks import Mask


# ----------------------------------------------------------------------------- calibration
def test_accuracy_hand():
    probs = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]]
    assert M.accuracy(probs, [0, 1, 1, 0]) == pytest.approx(0.5)


def test_ece_hand_value_and_right_closed_bins():
    # confidences 0.9 (pred 0, correct), 0.6 (pred 0, wrong), 0.7 (pred 1, correct), 0.55 (pred 1, wrong)
    # bins are (i/10, (i+1)/10]: 0.9 -> bin 8, 0.6 and 0.55 -> bin 5, 0.7 -> bin 6
    # bin 5: conf (0.6 + 0.55)/2 = 0.575, acc 0 -> gap 0.575, weight 2/4
    # bin 6: conf 0.7, acc 1 -> gap 0.3, weight 1/4
    # bin 8: conf 0.9, acc 1 -> gap 0.1, weight 1/4
    # ECE = 0.5*0.575 + 0.25*0.3 + 0.25*0.1 = 0.2875 + 0.075 + 0.025 = 0.3875
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    assert M.ece(probs, labels) == pytest.approx(0.3875)
    bins = M.reliability_bins(probs, labels)
    assert list(bins.loc[bins["count"] > 0, "bin"]) == [5, 6, 8]
    assert bins.loc[5, "confidence"] == pytest.approx(0.575)
    assert bins.loc[5, "gap"] == pytest.approx(-0.575)


def test_ece_exactly_calibrated_construction_is_zero():
    # bin (0.7, 0.8]: 10 examples at confidence 0.8 with 8 correct -> acc 0.8 = conf 0.8
    # bin (0.5, 0.6]: 5 examples at confidence 0.6 with 3 correct -> acc 0.6 = conf 0.6
    # bin (0.9, 1.0]: 4 examples at confidence 1.0, all correct
    probs = np.array([[0.2, 0.8]] * 10 + [[0.6, 0.4]] * 5 + [[0.0, 1.0]] * 4)
    labels = np.array([1] * 8 + [0] * 2 + [0] * 3 + [1] * 2 + [1] * 4)
    assert M.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_sampled_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    n, c = 50_000, 3
    probs = rng.dirichlet(np.ones(c) * 0.7, size=n)                      # (N, C)
    labels = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)  # y ~ Categorical(p)
    labels = np.minimum(labels, c - 1)
    assert M.ece(probs, labels) < 0.01
    # the same predictor made overconfident is visibly miscalibrated
    sharp = M.softmax(np.log(probs + 1e-12), temperature=0.3)
    assert M.ece(sharp, labels) > 0.05


def test_reliability_bins_schema_counts_and_empty_bins():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1], size=137)
    labels = rng.integers(0, 2, size=137)
    bins = M.reliability_bins(probs, labels, n_bins=10)
    assert list(bins.columns) == ["bin", "lower", "upper", "count", "confidence", "accuracy", "gap"]
    assert len(bins) == 10 and bins["count"].sum() == 137
    # binary confidences are >= 0.5, so bins 0..4 are empty but kept
    assert (bins.loc[:4, "count"] == 0).all() and bins.loc[:4, "confidence"].isna().all()
    assert bins["upper"].iloc[-1] == pytest.approx(1.0)


def test_confidence_zero_and_one_are_binned():
    # zero-confidence rows cannot occur in valid probabilities, so test the edges directly
    idx = M._bin_index(np.array([0.0, 0.1, 0.1000001, 1.0]), 10)
    assert list(idx) == [0, 0, 1, 9]


def test_brier_and_nll_hand_values():
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1])
    # brier: (0.1^2 + 0.1^2) = 0.02 and (0.6^2 + 0.6^2) = 0.72 -> mean 0.37
    assert M.brier(probs, labels) == pytest.approx(0.37)
    # nll: (-ln 0.9 - ln 0.4) / 2 = (0.1053605 + 0.9162907) / 2
    assert M.nll(probs, labels) == pytest.approx((-math.log(0.9) - math.log(0.4)) / 2)
    # a zero probability on the label is clipped at 1e-12, not infinite
    assert M.nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))


def test_calibration_summary_keys():
    out = M.calibration_summary([[0.9, 0.1], [0.2, 0.8]], [0, 1])
    assert set(out) == {"accuracy", "ece", "brier", "nll"} and out["accuracy"] == 1.0


@pytest.mark.parametrize("bad, match", [
    (np.array([[2.0, -1.0]]), "non-negative"),
    (np.array([[0.5, 0.6]]), "sum to 1"),
    (np.array([0.5, 0.5]), r"\(N, C\)"),
])
def test_bad_probs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        M.ece(bad, np.zeros(len(bad), int))


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="labels must lie in"):
        M.accuracy([[0.5, 0.5]], [2])
    with pytest.raises(ValueError, match="shape"):
        M.accuracy([[0.5, 0.5]], [0, 1])


@pytest.mark.parametrize("t_star", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_star):
    rng = np.random.default_rng(2)
    z = rng.normal(scale=3.0, size=(20_000, 4))  # logits (N, C)
    p = M.softmax(z, temperature=t_star)
    labels = (rng.random(len(z))[:, None] > p.cumsum(axis=1)).sum(axis=1).clip(max=3)
    t_hat = M.fit_temperature(z, labels)
    assert abs(t_hat - t_star) / t_star < 0.10
    # the fitted temperature lowers the NLL against T = 1
    assert M.nll(M.softmax(z, t_hat), labels) < M.nll(M.softmax(z), labels)


def test_softmax_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        M.softmax(np.zeros((2, 2)), temperature=0.0)


# ----------------------------------------------------------------------------- overlap
@pytest.fixture
def masks():
    # parameter "w" has 6 entries, "b" has 2 → 8 positions in all
    a = {"w": torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool), "b": torch.tensor([True, False])}  # |a| = 3
    b = {"w": np.array([[1, 0, 1], [1, 0, 0]], dtype=bool), "b": np.array([True, True])}             # |b| = 5
    c = Mask({"w": torch.zeros(2, 3, dtype=torch.bool), "b": torch.tensor([False, True])})        # |c| = 1
    return {"a": a, "b": b, "c": c}


def test_a_mask_and_its_dense_tensors_overlap_alike(masks):
    as_mask = M.as_mask(masks["b"])
    assert as_mask.count == 5 and M.overlap(masks["a"], as_mask) == M.overlap(masks["a"], masks["b"])
    assert M.overlap(masks["a"], as_mask.to_dense()) == M.overlap(masks["a"], masks["b"])


def test_overlap_and_jaccard_hand_values(masks):
    a, b, c = masks["a"], masks["b"], masks["c"]
    # a ∩ b = {w[0,0], b[0]} -> 2 entries
    assert M.overlap(a, b) == pytest.approx(2 / 5)   # |a∩b| / |b|
    assert M.overlap(b, a) == pytest.approx(2 / 3)   # asymmetric: |a∩b| / |a|
    assert M.jaccard(a, b) == pytest.approx(2 / 6)   # |a∪b| = 3 + 5 - 2
    assert M.jaccard(b, a) == M.jaccard(a, b)
    # c = {b[1]}: disjoint from a, inside b
    assert M.overlap(a, c) == 0.0 and M.overlap(b, c) == 1.0 and M.overlap(c, b) == pytest.approx(1 / 5)


def test_missing_names_count_as_false_and_shapes_must_agree(masks):
    only_b = {"b": np.array([True, False])}
    assert M.overlap(masks["a"], only_b) == 1.0
    assert M.overlap(only_b, masks["a"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="entries"):
        M.overlap(masks["a"], {"b": np.ones(3, bool)})
    with pytest.raises(ValueError, match="boolean or 0/1"):
        M.overlap(masks["a"], {"b": np.array([0.5, 1.0])})
    with pytest.raises(TypeError, match="a Mask or a dict"):
        M.overlap(masks["a"], [1, 0])


def test_overlap_matrix_hand_values(masks):
    m = M.overlap_matrix(masks)
    assert list(m.index) == list(m.columns) == ["a", "b", "c"]
    assert np.allclose(np.diag(m), 1.0)
    assert m.loc["a", "b"] == pytest.approx(2 / 5) and m.loc["b", "a"] == pytest.approx(2 / 3)
    assert m.loc["b", "c"] == 1.0 and m.loc["c", "b"] == pytest.approx(1 / 5)
    j = M.overlap_matrix(masks, kind="jaccard")
    assert np.allclose(j.to_numpy(), j.to_numpy().T) and j.loc["a", "b"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="asymmetric"):
        M.overlap_matrix(masks, kind="cosine")


def test_random_overlap_matches_monte_carlo():
    N, n_i, n_j = 1000, 50, 200
    expected = M.random_overlap(n_i, n_j, N)
    assert expected.asymmetric == pytest.approx(n_i / N)
    rng = np.random.default_rng(3)
    b = np.zeros(N, bool)
    b[:n_j] = True  # by symmetry one mask can be fixed
    asym, jac = [], []
    for _ in range(4000):
        a = np.zeros(N, bool)
        a[rng.choice(N, n_i, replace=False)] = True
        inter = np.sum(a & b)
        asym.append(inter / n_j)
        jac.append(inter / np.sum(a | b))
    assert np.mean(asym) == pytest.approx(expected.asymmetric, abs=0.002)
    assert np.mean(jac) == pytest.approx(expected.jaccard, abs=0.002)


def test_random_overlap_matrix_and_errors():
    m = M.random_overlap_matrix({"x": 10, "y": 40}, N=100)
    assert m.loc["x", "y"] == pytest.approx(0.1) and m.loc["y", "x"] == pytest.approx(0.4)
    assert m.loc["x", "x"] == 1.0
    j = M.random_overlap_matrix({"x": 10, "y": 40}, N=100, kind="jaccard")
    assert j.loc["x", "y"] == pytest.approx(j.loc["y", "x"]) and 0 < j.loc["x", "y"] < 0.1
    with pytest.raises(ValueError, match="n_i, n_j <= N"):
        M.random_overlap(10, 200, 100)


# ----------------------------------------------------------------------------- continual learning
R_HAND = pd.DataFrame([[0.90, 0.50, 0.40],
                       [0.95, 0.80, 0.50],
                       [0.60, 0.75, 0.85]])


def test_continual_scores_hand_values():
    # BWT: ((0.60 - 0.90) + (0.75 - 0.80)) / 2 = (-0.30 - 0.05) / 2
    assert M.backward_transfer(R_HAND) == pytest.approx(-0.175)
    # forgetting: task 0 peaks at stage 1 (0.95 - 0.60 = 0.35), task 1 at stage 1 (0.80 - 0.75 = 0.05)
    assert M.forgetting(R_HAND) == pytest.approx(0.20)
    # arrays work too, and unseen tasks above the diagonal may be NaN
    R = R_HAND.to_numpy().copy()
    R[0, 1:] = np.nan
    R[1, 2] = np.nan
    assert M.forgetting(R) == pytest.approx(0.20) and M.backward_transfer(R) == pytest.approx(-0.175)


def test_continual_scores_reject_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        M.backward_transfer(np.ones((2, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        M.backward_transfer(np.ones((1, 1)))
    with pytest.raises(ValueError, match="below the diagonal"):
        M.forgetting(np.array([[1.0, 0.0], [np.nan, 1.0]]))


# ----------------------------------------------------------------------------- rank correlation
def test_rank_correlation():
    out = M.rank_correlation([1, 2, 3, 4, 5], [2, 4, 5, 9, 20])  # monotone -> rho = 1
    assert out.rho == pytest.approx(1.0) and out.n == 5 and out.pvalue < 0.05
    assert M.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]).rho == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal length"):
        M.rank_correlation([1, 2, 3], [1, 2])
