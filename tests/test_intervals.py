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
from skillgraft.chapters.predictions import Predictions

N = 40


def right_on(share: float, confidence: float = 0.9, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities, ``confidence`` on the label for the first ``share`` of ``n`` examples,
    on the other class for the rest; labels all 0."""
    correct = np.arange(n) < round(share * n)
    p0 = np.where(correct, confidence, 1 - confidence)
    return np.stack([p0, 1 - p0], axis=1), np.zeros(n, dtype=int)


def typed(chapter, probs: dict) -> Predictions:
    """Hand-made predictions keyed as (value of each of the chapter's FIELDS), named by those fields."""
    out = Predictions(*chapter.FIELDS)
    for key, prediction in probs.items():
        out.add(prediction, **dict(zip(chapter.FIELDS, key)))
    return out


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
    got = c01.intervals(SimpleNamespace(probs=typed(c01, probs)), "grow", 1e-4, n_boot=200)["mr"]
    assert got["gain"].estimate == pytest.approx(0.5)
    assert got["recovery"].estimate == pytest.approx(0.9)
    assert got["normalized"].estimate == pytest.approx(0.8)         # (0.9 − 0.5) / (1.0 − 0.5)
    assert got["vs_random"].estimate == pytest.approx(0.4)
    assert all(i.low <= i.estimate <= i.high for i in got.values())
    refine = c01.intervals(SimpleNamespace(probs=typed(c01, probs)), "refine", 1e-4, n_boot=200)["mr"]
    assert refine["recovery"].estimate == pytest.approx(0.6)
    assert c01.intervals(SimpleNamespace(probs=typed(c01, probs)), "refine", 1e-5, n_boot=50) == {}


def test_single_task_pooled_intervals_weigh_tasks_by_their_test_examples():
    probs = {}
    for task, graft in (("mr", 0.9), ("sms", 0.7)):
        for seed in (13, 21):
            probs[task, seed, None, np.nan, "zero-shot"] = right_on(0.5)
            probs[task, seed, None, np.nan, "fine-tuned"] = right_on(1.0)
            probs[task, seed, "grow", np.nan, "graft"] = right_on(graft)
            probs[task, seed, "grow", np.nan, "random"] = right_on(0.5)
    result = SimpleNamespace(probs=typed(c01, probs))
    both = c01.pooled_intervals(result, "grow", 1e-4, ["mr", "sms"], n_boot=200)
    assert both["recovery"].estimate == pytest.approx(0.8)        # (0.9 + 0.7) / 2 over equal test sets
    assert both["normalized"].estimate == pytest.approx(0.6)      # (0.8 − 0.5) / (1.0 − 0.5)
    assert c01.pooled_intervals(result, "grow", 1e-4, ["mr"], n_boot=200) == c01.intervals(result, "grow", 1e-4,
                                                                                         n_boot=200)["mr"]
    assert c01.pooled_intervals(result, "grow", 1e-4, [], n_boot=50) is None


def test_calibration_intervals_pool_tasks_and_seeds():
    probs = {}
    for task in ("mr", "sms"):
        for seed in (13, 21):
            probs[task, seed, "graft"] = right_on(0.9, confidence=0.9)         # calibrated: ECE 0
            probs[task, seed, "fine-tuned"] = right_on(0.8, confidence=0.99)   # over-confident
            probs[task, seed, "fine-tuned+TS"] = right_on(0.8, confidence=0.95)
    reduction, gap = c02.intervals(SimpleNamespace(probs=typed(c02, probs)), n_boot=200)
    ft_ece = metrics.ece(*right_on(0.8, confidence=0.99))
    assert ft_ece == pytest.approx(0.19) and metrics.ece(*right_on(0.9)) == pytest.approx(0.0, abs=1e-9)
    assert gap.estimate == pytest.approx(ft_ece) and reduction.estimate == pytest.approx(1.0)
    assert gap.low > 0
    ts, _ = c02.intervals(SimpleNamespace(probs=typed(c02, probs)), against="fine-tuned+TS", n_boot=200)
    assert ts.estimate == pytest.approx(1.0)
    assert c02.intervals(SimpleNamespace(probs=typed(c02, {})), n_boot=50) == (None, None)


def test_calibration_gains_and_the_tested_tasks_pool():
    probs = {}
    for task, (zero, tuned) in {"mr": (0.5, 0.8), "sms": (0.8, 0.8)}.items():
        for seed in (13, 21):
            probs[task, seed, "zero-shot"] = right_on(zero)
            probs[task, seed, "fine-tuned"] = right_on(tuned, confidence=0.99)
            probs[task, seed, "graft"] = right_on(0.9 if task == "mr" else 0.8, confidence=0.9)
    cal = SimpleNamespace(probs=typed(c02, probs))
    g = c02.gains(cal, n_boot=200)
    assert g["mr"].estimate == pytest.approx(0.3) and g["mr"].sign > 0 and g["sms"].estimate == 0 and g["sms"].sign == 0
    only_mr = c02.intervals(cal, tasks=["mr"], n_boot=200)
    assert only_mr[1].estimate == pytest.approx(metrics.ece(*right_on(0.8, confidence=0.99)))  # the graft's ECE is 0
    v = c02.verdict(cal, n_boot=200)
    assert "on the one tested task (mr):" in v.report() and "not tested: sms" in v.report()


def test_ood_intervals_per_pair_and_pooled_per_source():
    probs = {}
    for seed in (13, 21):
        for target, (g, f) in {"mr": (0.9, 0.9), "imdb-sent": (0.8, 0.6), "yelp-sent": (0.7, 0.7)}.items():
            probs["mr", target, seed, "graft"] = right_on(g)
            probs["mr", target, seed, "fine-tuned"] = right_on(f)
    overall, per = c03.intervals(SimpleNamespace(probs=typed(c03, probs)), n_boot=200)
    assert set(per) == {"mr→imdb-sent", "mr→yelp-sent"}                   # in-distribution left out
    assert per["mr→imdb-sent"].estimate == pytest.approx(0.2) and per["mr→imdb-sent"].low > 0
    assert per["mr→yelp-sent"].estimate == pytest.approx(0.0)
    assert overall.estimate == pytest.approx(0.1)                          # the two targets pooled
    only_in = {k: v for k, v in probs.items() if k[1] == "mr"}
    assert c03.intervals(SimpleNamespace(probs=typed(c03, only_in)), n_boot=50) == (None, {})


def test_ood_verdict_source_by_source():
    probs = {}
    for seed in (13, 21):
        for source, target, (z, f, g) in (("mr", "imdb-sent", (0.5, 0.8, 0.9)), ("sms", "spamassassin", (0.5, 0.5, 0.5))):
            for variant, share in (("zero-shot", z), ("fine-tuned", f), ("graft", g)):
                probs[source, target, seed, variant] = right_on(share)
    result = SimpleNamespace(probs=typed(c03, probs))
    assert c03.headroom(result, ["mr"], n_boot=200).estimate == pytest.approx(0.3)
    assert c03.intervals(result, ["sms"], n_boot=200)[0].estimate == pytest.approx(0.0)
    v = c03.verdict(result, n_boot=200)
    assert v.verdict == "holds" and "on the one tested source (mr):" in v.report()
    assert "not tested: sms (fine-tuning gained nothing" in v.report()


def two_stages(forgot: float) -> dict:
    """Probabilities of a two-task sequence over two seeds: the first task learned to 0.9, then after the
    second stage 0.9 − ``forgot`` for sequential fine-tuning and 0.9 for the graft; the second task 0.8."""
    probs = {}
    for seed in (13, 21):
        for method, after in (("sequential", 0.9 - forgot), ("graft (task known)", 0.9)):
            probs[seed, method, 0, 0] = right_on(0.9)
            probs[seed, method, 1, 0] = right_on(after)
            probs[seed, method, 1, 1] = right_on(0.8)
    return probs


def test_continual_pooled_over_sequences():
    def result(forgot: float):
        return SimpleNamespace(matrices={"sequential": pd.DataFrame(np.eye(2), columns=["mr", "sms"])},
                               probs=typed(c05, two_stages(forgot)))
    a, b = result(0.4), result(0.2)
    assert c05.name(a) == "mr → sms"
    bwt, _ = c05.pooled_intervals([a, b], n_boot=200)
    assert bwt.estimate == pytest.approx(0.3)                      # (0.4 + 0.2) / 2 over equal test sets
    assert c05.pooled_forgetting([a, b], n_boot=200).estimate == pytest.approx(0.3)
    assert c05.pooled_intervals([a], n_boot=200) == c05.intervals(a, n_boot=200)
    assert c05.verdict([a, b], n_boot=200).verdict == "holds"


def test_continual_intervals_backward_transfer_and_final_accuracy():
    R = pd.DataFrame(np.eye(2), columns=["mr", "sms"])
    probs = {}
    for seed in (13, 21):
        for method, after in (("sequential", 0.5), ("graft (task known)", 0.9)):
            probs[seed, method, 0, 0] = right_on(0.9)        # mr just learned
            probs[seed, method, 1, 0] = right_on(after)       # mr after sms
            probs[seed, method, 1, 1] = right_on(0.8)        # sms
    bwt, final = c05.intervals(SimpleNamespace(matrices={"sequential": R}, probs=typed(c05, probs)), n_boot=200)
    assert bwt.estimate == pytest.approx(0.4)     # graft: 0.9 − 0.9; sequential: 0.5 − 0.9
    assert final.estimate == pytest.approx(0.2)   # mean of (0.9, 0.8) − mean of (0.5, 0.8)
    assert bwt.low > 0
    one = SimpleNamespace(matrices={"sequential": R[["mr"]]}, probs=typed(c05, probs))
    assert c05.intervals(one) == (None, None)


def test_calibration_reduction_by_task_matches_the_pooled_estimate_on_one_task():
    probs = {}
    for seed in (13, 21):
        probs["mr", seed, "graft"] = right_on(0.9, confidence=0.9)
        probs["mr", seed, "fine-tuned"] = right_on(0.8, confidence=0.99)
    cal = SimpleNamespace(probs=typed(c02, probs))
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


def test_single_task_by_task_and_forest_rows():
    probs, rows = {}, []
    for task, graft, tuned in (("mr", 0.9, 1.0), ("sms", 0.7, 1.0), ("cr", 0.5, 0.5)):
        for seed in (13, 21):
            for variant, start, share in (("zero-shot", None, 0.5), ("fine-tuned", None, tuned),
                                          ("graft", "grow", graft), ("random", "grow", 0.5)):
                probs[task, seed, start, np.nan, variant] = right_on(share)
                rows.append(dict(task=task, seed=seed, start=start, target=np.nan, variant=variant, accuracy=share,
                                 mask_size=10 if start else np.nan))
    result = SimpleNamespace(probs=typed(c01, probs), results=pd.DataFrame(rows))
    table = c01.by_task(result, "grow", 1e-4, n_boot=100).set_index("task")
    assert list(table.index) == ["cr", "mr", "sms", "pooled"]
    assert table.loc["cr", "verdict"] == "not testable here"              # fine-tuning gained nothing on cr
    assert table.loc["mr", "recovery"].startswith("90.0%") and table.loc["pooled", "recovery"].startswith("80.0%")
    assert table.loc["pooled", "graft"] == pytest.approx(0.8) and table.loc["mr", "family"] == "sentiment"
    forest = c01.forest(result, "grow", 1e-4, n_boot=100)
    assert list(forest.label) == ["cr", "mr", "sms", "pooled"]
    assert forest.set_index("label").loc["pooled", "estimate"] == pytest.approx(0.8)
    assert forest.set_index("label").loc["cr", "verdict"] == "not testable here"


def test_calibration_by_task_and_forest_rows():
    probs, rows = {}, []
    for task, (zero, tuned) in {"mr": (0.5, 0.8), "cr": (0.5, 0.8), "sms": (0.8, 0.8)}.items():
        for seed in (13, 21):
            for variant, share, conf in (("zero-shot", zero, 0.9), ("fine-tuned", tuned, 0.99), ("graft", 0.9, 0.9)):
                probs[task, seed, variant] = right_on(share, confidence=conf)
                rows.append(dict(task=task, seed=seed, variant=variant, ece=metrics.ece(*probs[task, seed, variant]),
                                 confidence=conf, accuracy=share))
    cal = SimpleNamespace(probs=typed(c02, probs), results=pd.DataFrame(rows))
    table = c02.by_task(cal, n_boot=100).set_index("task")
    assert list(table.index) == ["mr", "cr", "sms", "pooled"]
    assert table.loc["sms", "verdict"] == "not testable here" and table.loc["pooled", "seeds"] == 2
    assert table.loc["mr", "ece_fine_tuned"] == pytest.approx(0.19) and table.loc["mr", "reduction"].startswith("100%")
    forest = c02.forest(cal, n_boot=100).set_index("label")
    assert list(forest.index) == ["mr", "cr", "sms", "pooled"] and forest.loc["pooled", "estimate"] == pytest.approx(1.0)


def test_ood_by_source_and_forest_rows():
    probs = {}
    for seed in (13, 21):
        for source, target, (z, f, g) in (("mr", "imdb-sent", (0.5, 0.8, 0.9)), ("cr", "imdb-sent", (0.5, 0.7, 0.7)),
                                          ("sms", "spamassassin", (0.5, 0.5, 0.5))):
            for variant, share in (("zero-shot", z), ("fine-tuned", f), ("graft", g)):
                probs[source, target, seed, variant] = right_on(share)
    result = SimpleNamespace(probs=typed(c03, probs))
    table = c03.by_source(result, n_boot=100).set_index("source")
    assert list(table.index) == ["cr", "mr", "sms", "pooled"]
    assert table.loc["sms", "verdict"] == "not testable here" and table.loc["mr", "targets"] == "imdb-sent"
    assert table.loc["pooled", "graft_minus_fine_tuned"].startswith("+5.0\u00a0pt")   # (+10 and 0) pooled
    forest = c03.forest(result, n_boot=100).set_index("label")
    assert forest.loc["pooled", "estimate"] == pytest.approx(0.05) and forest.loc["sms", "verdict"] == "not testable here"


def test_continual_by_sequence_forest_and_merged():
    def result(tasks, forgot: float):
        frame = pd.DataFrame(dict(seed=[13], fit=[True]))
        return c05.Continual({"sequential": pd.DataFrame(np.eye(2), columns=tasks)}, frame, frame, frame,
                             typed(c05, two_stages(forgot)), frame, frame)
    a, b, c = result(["mr", "trec"], 0.4), result(["subj", "bbc"], 0.2), result(["sms", "cr"], 0.0)
    table = c05.by_sequence([a, b, c], n_boot=100).set_index("sequence")
    assert list(table.index) == ["mr → trec", "subj → bbc", "sms → cr", "pooled"]
    assert table.loc["sms → cr", "verdict"] == "not testable here" and table.loc["mr → trec", "families"] == "2 families"
    assert table.loc["pooled", "backward_transfer_gap"].startswith("+30.0\u00a0pt")
    forest = c05.forest([a, b, c], n_boot=100).set_index("label")   # final average accuracy: the primary estimand
    assert forest.loc["pooled", "estimate"] == pytest.approx(0.15)                # (0.4 / 2 + 0.2 / 2) / 2
    both = c05.merged([a, b])
    assert list(both.matrices) == ["mr → trec: sequential", "subj → bbc: sequential"]
    assert list(both.regime.columns[:1]) == ["sequence"] and len(both.regime) == 2
