"""No pooled metric is computed over predictions concatenated across tasks: each chapter's pooled estimate is the
mean of its per-task estimates (each a mean over seeds), on hand-made data where concatenating would differ."""
from types import SimpleNamespace

import numpy as np
import pytest

from skillgraft import metrics
from skillgraft.chapters import calibration as c02
from skillgraft.chapters import continual as c05
from skillgraft.chapters import ood as c03
from skillgraft.chapters import single_task as c01
from test_intervals import right_on as _right_on, typed  # the hand-made predictions of the interval tests


def right_on(share: float, n: int, confidence: float = 0.9):
    return _right_on(share, confidence, n)


def test_c2_pools_per_task_eces_not_one_ece_over_concatenated_predictions():
    # the graft is over-confident on task a (confidence 0.85 at accuracy 0.75) and under-confident on b (0.85 at
    # 0.95): per task each ECE is 0.10, but concatenated in one bin their errors cancel to 0
    probs = {}
    for seed in (13, 21):
        for task, acc in (("a", 0.75), ("b", 0.95)):
            probs[task, seed, "zero-shot"] = right_on(0.5, 100)
            probs[task, seed, "fine-tuned"] = right_on(acc, 100, 0.99)
            probs[task, seed, "graft"] = right_on(acc, 100, 0.85)
    cal = SimpleNamespace(probs=typed(c02, probs))
    red, gap = c02.intervals(cal, tasks=["a", "b"], n_boot=50)
    per_task = np.mean([metrics.ece(*probs[t, 13, "fine-tuned"]) - metrics.ece(*probs[t, 13, "graft"]) for t in "ab"])
    joined = lambda variant: tuple(map(np.concatenate, zip(probs["a", 13, variant], probs["b", 13, variant])))
    concatenated = metrics.ece(*joined("fine-tuned")) - metrics.ece(*joined("graft"))
    assert gap.estimate == pytest.approx(per_task) and per_task == pytest.approx(0.14 - 0.10)
    assert concatenated == pytest.approx(0.14)                         # what one ECE over both tasks would say
    assert red.estimate == pytest.approx(0.04 / 0.14)


def test_c1_pooled_recovery_is_the_mean_of_task_recoveries():
    # task a: 1000 test examples, recovery 0.5; task b: 10 examples, recovery 1.0; concatenated ≈ 0.5
    probs = {}
    for task, n, graft in (("a", 1000, 0.4), ("b", 10, 0.8)):
        for seed in (13, 21):
            probs[task, seed, None, np.nan, "zero-shot"] = right_on(0.2, n)
            probs[task, seed, None, np.nan, "fine-tuned"] = right_on(0.8, n)
            for variant in ("graft", "top-movement", "random"):
                probs[task, seed, "grow", np.nan, variant] = right_on(graft if variant != "random" else 0.2, n)
    result = SimpleNamespace(probs=typed(c01, probs))
    pooled = c01.pooled_intervals(result, "grow", 1e-4, ["a", "b"], n_boot=50)
    assert pooled["recovery"].estimate == pytest.approx(0.75)          # (0.5 + 1.0) / 2, not ≈ 0.505
    assert pooled["normalized"].estimate == pytest.approx((0.2 + 0.6) / 2 / 0.6)


def test_c3_pooled_gap_is_the_mean_over_sources_of_their_mean_over_targets():
    probs = {}
    for seed in (13, 21):
        for source, target, n, (z, f, g) in (("mr", "imdb-sent", 400, (0.5, 0.7, 0.6)),
                                             ("mr", "yelp-sent", 20, (0.5, 0.7, 0.9)),
                                             ("sms", "spamassassin", 100, (0.5, 0.6, 0.6))):
            for variant, share in (("zero-shot", z), ("fine-tuned", f), ("graft", g)):
                probs[source, target, seed, variant] = right_on(share, n)
    result = SimpleNamespace(probs=typed(c03, probs))
    overall, per = c03.intervals(result, ["mr", "sms"], n_boot=50)
    assert overall.estimate == pytest.approx(((-0.1 + 0.2) / 2 + 0.0) / 2)   # not weighted by 400 vs 20 examples
    assert per["mr→yelp-sent"].estimate == pytest.approx(0.2)


def test_c5_pooled_gap_is_the_mean_over_sequences():
    def stages(forgot: float, n: int):
        probs = {}
        for seed in (13, 21):
            for method, after in (("sequential", 0.9 - forgot), ("graft (task known)", 0.9)):
                probs[seed, method, 0, 0] = right_on(0.9, n)
                probs[seed, method, 1, 0] = right_on(after, n)
                probs[seed, method, 1, 1] = right_on(0.8, n)
        return probs

    import pandas as pd
    make = lambda forgot, n: SimpleNamespace(matrices={"sequential": pd.DataFrame(np.eye(2), columns=["x", "y"])},
                                             probs=typed(c05, stages(forgot, n)))
    bwt, final = c05.pooled_intervals([make(0.4, 500), make(0.2, 10)], n_boot=50)
    assert final.estimate == pytest.approx((0.2 + 0.1) / 2) and bwt.estimate == pytest.approx(0.3)
