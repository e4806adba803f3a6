"""Every chapter's ``intervals()`` on small hand-made results whose estimates can be checked by
hand: predictions that are right on a known share of the test examples."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from skillgraft import metrics
from skillgraft.chapters import calibration as c02
from skillgraft.chapters import continual as c05
from skillgraft.chapters import ood as c03
from skillgraft.chapters import single_task as c01

N = 40


def right_on(share: float, confidence: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities, ``confidence`` on the label for the first ``share`` of N examples,
    on the other class for the rest; labels all 0."""
    correct = np.arange(N) < round(share * N)
    p0 = np.where(correct, confidence, 1 - confidence)
    return np.stack([p0, 1 - p0], axis=1), np.zeros(N, dtype=int)


def test_single_task_intervals_gain_recovery_share_kept_and_random():
    probs = {}
    for seed in (13, 21):
        probs["mr", seed, None, np.nan, "zero-shot"] = right_on(0.5)
        probs["mr", seed, None, np.nan, "fine-tuned"] = right_on(1.0)
        probs["mr", seed, "grow", np.nan, "graft"] = right_on(0.9)
        probs["mr", seed, "grow", np.nan, "random"] = right_on(0.5)
        probs["mr", seed, "grow", np.nan, "top-movement"] = right_on(0.9)
        probs["mr", seed, "refine", 1e-4, "graft"] = right_on(0.6)  # another start: not read for "grow"
        probs["mr", seed, "refine", 1e-4, "random"] = right_on(0.5)
    got = c01.intervals(SimpleNamespace(probs=probs), "grow", 1e-4, n_boot=200)["mr"]
    assert got["gain"].estimate == pytest.approx(0.5)
    assert got["recovery"].estimate == pytest.approx(0.9)
    assert got["normalized"].estimate == pytest.approx(0.8)         # (0.9 − 0.5) / (1.0 − 0.5)
    assert got["vs_random"].estimate == pytest.approx(0.4)
    assert all(i.low <= i.estimate <= i.high for i in got.values())
    refine = c01.intervals(SimpleNamespace(probs=probs), "refine", 1e-4, n_boot=200)["mr"]
    assert refine["recovery"].estimate == pytest.approx(0.6)
    assert c01.intervals(SimpleNamespace(probs=probs), "refine", 1e-5, n_boot=50) == {}


def test_calibration_intervals_pool_tasks_and_seeds():
    probs = {}
    for task in ("mr", "sms"):
        for seed in (13, 21):
            probs[task, seed, "graft"] = right_on(0.9, confidence=0.9)         # calibrated: ECE 0
            probs[task, seed, "fine-tuned"] = right_on(0.8, confidence=0.99)   # over-confident
            probs[task, seed, "fine-tuned+TS"] = right_on(0.8, confidence=0.95)
    reduction, gap = c02.intervals(SimpleNamespace(probs=probs), n_boot=200)
    ft_ece = metrics.ece(*right_on(0.8, confidence=0.99))
    assert ft_ece == pytest.approx(0.19) and metrics.ece(*right_on(0.9)) == pytest.approx(0.0, abs=1e-9)
    assert gap.estimate == pytest.approx(ft_ece) and reduction.estimate == pytest.approx(1.0)
    assert gap.low > 0
    ts, _ = c02.intervals(SimpleNamespace(probs=probs), against="fine-tuned+TS", n_boot=200)
    assert ts.estimate == pytest.approx(1.0)
    assert c02.intervals(SimpleNamespace(probs={}), n_boot=50) == (None, None)


def test_ood_intervals_per_pair_and_pooled_per_source():
    probs = {}
    for seed in (13, 21):
        for target, (g, f) in {"mr": (0.9, 0.9), "imdb-sent": (0.8, 0.6), "yelp-sent": (0.7, 0.7)}.items():
            probs["mr", target, seed, "graft"] = right_on(g)
            probs["mr", target, seed, "fine-tuned"] = right_on(f)
    overall, per = c03.intervals(SimpleNamespace(probs=probs), n_boot=200)
    assert set(per) == {"mr→imdb-sent", "mr→yelp-sent"}                   # in-distribution left out
    assert per["mr→imdb-sent"].estimate == pytest.approx(0.2) and per["mr→imdb-sent"].low > 0
    assert per["mr→yelp-sent"].estimate == pytest.approx(0.0)
    assert overall.estimate == pytest.approx(0.1)                          # the two targets pooled
    only_in = {k: v for k, v in probs.items() if k[1] == "mr"}
    assert c03.intervals(SimpleNamespace(probs=only_in), n_boot=50) == (None, {})


def test_continual_intervals_backward_transfer_and_final_accuracy():
    R = pd.DataFrame(np.eye(2), columns=["mr", "sms"])
    probs = {}
    for seed in (13, 21):
        for method, after in (("sequential", 0.5), ("graft (task known)", 0.9)):
            probs[seed, method, 0, 0] = right_on(0.9)        # mr just learned
            probs[seed, method, 1, 0] = right_on(after)       # mr after sms
            probs[seed, method, 1, 1] = right_on(0.8)        # sms
    bwt, final = c05.intervals(SimpleNamespace(matrices={"sequential": R}, probs=probs), n_boot=200)
    assert bwt.estimate == pytest.approx(0.4)     # graft: 0.9 − 0.9; sequential: 0.5 − 0.9
    assert final.estimate == pytest.approx(0.2)   # mean of (0.9, 0.8) − mean of (0.5, 0.8)
    assert bwt.low > 0
    one = SimpleNamespace(matrices={"sequential": R[["mr"]]}, probs=probs)
    assert c05.intervals(one) == (None, None)


def test_calibration_reduction_by_task_matches_the_pooled_estimate_on_one_task():
    probs = {}
    for seed in (13, 21):
        probs["mr", seed, "graft"] = right_on(0.9, confidence=0.9)
        probs["mr", seed, "fine-tuned"] = right_on(0.8, confidence=0.99)
    cal = SimpleNamespace(probs=probs)
    by_task = c02.reduction_by_task(cal)
    reduction, _ = c02.intervals(cal, n_boot=50)
    assert list(by_task.index) == ["mr"] and by_task["mr"] == pytest.approx(reduction.estimate) == pytest.approx(1.0)


def test_compare_starts_picks_the_start_with_the_higher_train_plus_dev_accuracy():
    grafts = pd.DataFrame(dict(seed=[13, 13, 21], start=["grow", "refine", "grow"]))
    hist = pd.DataFrame(dict(seed=[13, 13, 13, 21], start=["grow", "refine", "refine", "grow"],
                             kept=[True, True, False, True], count=[10, 100, 50, 12], added=[5, 3, 1, 4],
                             removed=[0, 9, 2, 0], train_acc=[1.0, 0.9, 0.5, 0.0], dev_acc=[0.8, 0.8, 0.5, 0.0]))
    by_start, best = c01.compare_starts(SimpleNamespace(grafts=grafts, histories=hist))
    assert best == "grow" and by_start.loc["refine", "selection"] == pytest.approx(1.7)
    assert by_start.loc["grow", "count"] == 10          # seed 21 ran one start only: left out
    _, none = c01.compare_starts(SimpleNamespace(grafts=grafts[grafts.seed == 21], histories=hist[hist.seed == 21]))
    assert none is None


def test_mean_overlap_is_the_off_diagonal_mean():
    from skillgraft.chapters import multitask as c04
    m = pd.DataFrame([[1.0, 0.2, 0.4], [0.6, 1.0, 0.0], [0.0, 0.8, 1.0]])
    assert c04.mean_overlap(m) == pytest.approx(2.0 / 6)
    assert c04.mean_overlap(pd.DataFrame([[1.0]])) is None
