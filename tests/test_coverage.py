"""The hierarchical bootstrap of :mod:`skillgraft.verdicts` on simulated data with known variance: its 95%
interval covers the true mean where the flat task × seed scheme does not. Each of its levels (units, seeds,
shared test examples, strata, equal unit weights) behaves as the analysis plan says."""
from __future__ import annotations

import numpy as np
import pytest

from skillgraft import metrics
from skillgraft import verdicts as vd

MU = 0.5
# eight tasks, as chapters 01 and 02 pool: a plain percentile interval over 8 resampled tasks covers about 0.89;
# hierarchical's expanded percentile interval corrects it
TASKS, SEEDS, EXAMPLES = 8, 3, 30
SD_TASK, SD_SEED, SD_EXAMPLE, SD_NOISE = 1.0, 0.3, 1.0, 0.3
REPLICATIONS, N_BOOT = 200, 200


def _unit_mean(groups):
    """A unit's estimate: the mean over its drawn seeds of the mean over its test examples."""
    return sum(float(g[0].mean()) for g in groups) / len(groups)


def _simulate(rng: np.random.Generator) -> np.ndarray:
    """Scores y[r, t, s, i] = mu + task + task × seed + task × example (shared by the seeds) + noise."""
    shape = (REPLICATIONS, TASKS, SEEDS, EXAMPLES)
    task = rng.normal(0, SD_TASK, (REPLICATIONS, TASKS, 1, 1))
    seed = rng.normal(0, SD_SEED, (REPLICATIONS, TASKS, SEEDS, 1))
    example = rng.normal(0, SD_EXAMPLE, (REPLICATIONS, TASKS, 1, EXAMPLES))
    return MU + task + seed + example + rng.normal(0, SD_NOISE, shape)


def test_hierarchical_bootstrap_covers_the_truth_and_the_flat_one_under_covers():
    y = _simulate(np.random.default_rng(2024))
    covered = {"hierarchical": 0, "flat": 0}
    widths = {"hierarchical": [], "flat": []}
    for r in range(REPLICATIONS):
        units = {f"task{t}": [(y[r, t, s],) for s in range(SEEDS)] for t in range(TASKS)}
        flat = [(y[r, t, s],) for t in range(TASKS) for s in range(SEEDS)]
        intervals = {"hierarchical": vd.hierarchical(_unit_mean, units, n_boot=N_BOOT, seed=r),
                     "flat": vd.bootstrap(_unit_mean, flat, n_boot=N_BOOT, seed=r)}
        assert intervals["hierarchical"].estimate == pytest.approx(y[r].mean())
        assert intervals["flat"].estimate == pytest.approx(y[r].mean())
        for name, interval in intervals.items():
            covered[name] += interval.low <= MU <= interval.high
            widths[name].append(interval.high - interval.low)
    hierarchical, flat = covered["hierarchical"] / REPLICATIONS, covered["flat"] / REPLICATIONS
    assert 0.90 <= hierarchical <= 0.99, f"hierarchical coverage {hierarchical:.3f}"
    assert flat < 0.85, f"flat coverage {flat:.3f}"
    # the flat scheme takes the task × seed groups for independent ones: its intervals are too narrow
    assert np.median(widths["flat"]) < 0.75 * np.median(widths["hierarchical"])


def test_units_fewer_than_min_are_held_fixed():
    rng = np.random.default_rng(3)
    # three units far apart, no variation within a unit: held fixed, nothing is left to vary
    still = {f"u{k}": [(np.full(50, 100.0 * k),) for _ in range(2)] for k in range(3)}
    fixed = vd.hierarchical(_unit_mean, still, n_boot=200, seed=0)
    assert fixed.estimate == pytest.approx(100.0)
    assert fixed.low == pytest.approx(100.0) and fixed.high == pytest.approx(100.0)
    resampled = vd.hierarchical(_unit_mean, still, n_boot=200, seed=0, resample_units=True)
    assert resampled.high - resampled.low > 50
    # with noise within the units, the width held fixed is about the seeds and examples alone
    noisy = {f"u{k}": [(100.0 * k + rng.normal(0, 1, 200),) for _ in range(2)] for k in range(3)}
    fixed = vd.hierarchical(_unit_mean, noisy, n_boot=200, seed=0)
    assert 0 < fixed.high - fixed.low < 1
    assert vd.hierarchical(_unit_mean, noisy, n_boot=200, seed=0, resample_units=True).high - fixed.high > 10
    # from MIN_UNITS units on they are resampled by default
    many = {f"u{k}": [(np.full(50, 100.0 * k),)] for k in range(vd.MIN_UNITS)}
    assert vd.hierarchical(_unit_mean, many, n_boot=200, seed=0).high - 200.0 > 10
    few = dict(list(many.items())[:vd.MIN_UNITS - 1])
    interval = vd.hierarchical(_unit_mean, few, n_boot=200, seed=0)
    assert interval.low == pytest.approx(150.0) and interval.high == pytest.approx(150.0)


def test_one_example_draw_is_shared_by_the_seeds_of_a_unit():
    x = np.random.default_rng(4).normal(0, 1, 100)
    # two models of one seed on the same examples: their difference is 0 in every draw
    paired = vd.hierarchical(lambda gs: float(np.mean([g[0].mean() - g[1].mean() for g in gs])),
                             {"u": [(x, x.copy())]}, n_boot=200, seed=0)
    assert (paired.estimate, paired.low, paired.high) == (0.0, 0.0, 0.0)
    # two seeds with the same scores: one index draw serves both, so their means never differ
    spreads = []

    def spread(groups):
        means = [float(g[0].mean()) for g in groups]
        spreads.append(max(means) - min(means))
        return spreads[-1]
    seeds = {"u": [(x,), (x.copy(),)], "v": [(x[:60],), (x[:60].copy(),)]}
    interval = vd.hierarchical(spread, seeds, n_boot=200, seed=0)
    assert len(spreads) == 2 + 2 * 200 and max(spreads) == 0.0
    assert (interval.low, interval.high) == (0.0, 0.0)
    # the flat scheme draws each seed's examples apart, and the same two seeds then differ
    flat = vd.bootstrap(lambda gs: max(float(g[0].mean()) for g in gs) - min(float(g[0].mean()) for g in gs),
                        seeds["u"], n_boot=200, seed=0)
    assert flat.high > 0.05


def test_strata_keep_each_stratum_size():
    labels = np.random.default_rng(5).permutation(np.repeat([0, 1, 2], [30, 50, 20]))
    units = {"u": [(labels,), (labels.copy(),)]}

    def zero_share(groups):
        return float(np.mean([np.mean(g[0] == 0) for g in groups]))
    stratified = vd.hierarchical(zero_share, units, n_boot=300, seed=0, strata={"u": labels})
    assert (stratified.estimate, stratified.low, stratified.high) == (0.3, 0.3, 0.3)
    free = vd.hierarchical(zero_share, units, n_boot=300, seed=0)
    assert free.high - free.low > 0.05
    with pytest.raises(ValueError, match="strata"):
        vd.hierarchical(zero_share, units, n_boot=300, seed=0, strata={"u": labels[:-1]})


def test_pooled_estimate_is_the_mean_of_unit_estimates_not_concatenated():
    rng = np.random.default_rng(6)
    small, large = 5.0 + rng.normal(0, 1, 10), rng.normal(0, 1, 1000)
    interval = vd.hierarchical(_unit_mean, {"small": [(small,)], "large": [(large,)]}, n_boot=200, seed=0)
    assert interval.estimate == pytest.approx((small.mean() + large.mean()) / 2)
    assert abs(interval.estimate - np.concatenate([small, large]).mean()) > 2
    assert interval.low < interval.estimate < interval.high
    # the small unit's few examples make the interval wide, not the large one's many
    assert interval.high - interval.low > 0.3


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 32])
def test_ece_binned_matches_metrics_ece_top(n_bins):
    rng = np.random.default_rng(n_bins)
    confidence = np.concatenate([rng.random(500), np.linspace(0, 1, n_bins + 1), [0.0, 1.0]])
    correct = (rng.random(len(confidence)) < confidence ** 0.7).astype(float)
    assert vd.ece_binned(confidence, correct, n_bins) == pytest.approx(
        metrics.ece_top(confidence, correct, n_bins), rel=1e-12, abs=1e-15)
    sub = slice(0, 40)  # few examples: empty bins
    assert vd.ece_binned(confidence[sub], correct[sub], n_bins) == pytest.approx(
        metrics.ece_top(confidence[sub], correct[sub], n_bins), rel=1e-12, abs=1e-15)
