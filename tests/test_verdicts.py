"""Verdict rules and bootstrap intervals on hand-made numbers (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from skillgraft import verdicts as vd
from skillgraft.chapters import calibration as c02, continual as c05, multitask as c04, ood as c03, single_task as c01
from skillgraft.verdicts import Interval
from test_intervals import typed


def _probs(correct: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Binary predictions for label 1: class 1 with ``confidence`` where correct, else class 0."""
    p1 = np.where(correct, confidence, 1 - confidence)
    return np.stack([1 - p1, p1], axis=1)


def test_interval_sign_is_no_difference_when_it_contains_zero():
    assert Interval(0.02, 0.01, 0.03).sign == 1
    assert Interval(-0.02, -0.03, -0.01).sign == -1
    assert Interval(0.02, -0.01, 0.05).sign == 0
    assert Interval(0.1, 0.05, 0.15).fmt("+.1f", 100, " pt") == "+10.0 pt [+5.0, +15.0]"
    assert Interval(0.1, 0.05, 0.15).cell("+.1f", 100, " pt") == "+10.0\u00a0pt [+5.0, +15.0]"  # a number keeps its unit


def test_bootstrap_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    labels = np.ones(400, dtype=int)
    groups = [(_probs(rng.random(400) < 0.8), _probs(rng.random(400) < 0.6), labels) for _ in range(3)]
    gap = vd.accuracy_gap(groups, n_boot=300)
    assert gap.low < gap.estimate < gap.high and gap.sign == 1
    assert gap.estimate == pytest.approx(np.mean([np.mean(g[0].argmax(1) == 1) - np.mean(g[1].argmax(1) == 1)
                                                  for g in groups]))
    assert vd.accuracy_gap(groups, n_boot=300) == gap                      # seeded: the same interval again
    same = [(g[0], g[0], g[2]) for g in groups]
    assert vd.accuracy_gap(same, n_boot=100) == Interval(0.0, 0.0, 0.0)   # a model against itself


def test_bootstrap_pairs_the_examples_of_two_models():
    """A model that is right on exactly the examples where the other is right, plus 5%, has a
    tight interval only if one index draw serves both: pairing is what makes it tight."""
    rng = np.random.default_rng(2)
    base = rng.random(1000) < 0.5
    better = base | (rng.random(1000) < 0.1)
    gap = vd.accuracy_gap([(_probs(better), _probs(base), np.ones(1000, dtype=int))], n_boot=300)
    assert gap.sign == 1 and gap.high - gap.low < 0.04


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one group"):
        vd.bootstrap(lambda g: 0.0, [])
    with pytest.raises(ValueError, match="same length"):
        vd.bootstrap(lambda g: 0.0, [(np.zeros(3), np.zeros(4))])


def test_ece_gap_is_positive_when_the_first_model_is_better_calibrated():
    rng = np.random.default_rng(3)
    correct = rng.random(600) < 0.75
    calibrated, overconfident = _probs(correct, 0.75), _probs(correct, 0.99)
    labels = np.ones(600, dtype=int)
    gap = vd.ece_gap([(calibrated, overconfident, labels)], n_boot=200)
    red = vd.ece_reduction([(calibrated, overconfident, labels)], n_bins=10, n_boot=200)
    assert gap.sign == 1 and red.estimate > 0.5


def _c1(gain=(0.1, 0.05, 0.15), recovery=(0.99, 0.96, 1.02), normalized=(0.9, 0.6, 1.1), vs_random=(0.1, 0.05, 0.15),
        vs_top=(0.01, -0.01, 0.03)):
    return {"gain": Interval(*gain), "recovery": Interval(*recovery), "normalized": Interval(*normalized),
            "vs_random": Interval(*vs_random), "vs_top": Interval(*vs_top)}


def test_c1_rules():
    # one tested task: its own intervals decide
    assert c01.rule({"a": _c1()}).verdict == "holds"
    # the point estimate clears 95% but the interval reaches below: the data cannot decide
    assert c01.rule({"a": _c1(recovery=(0.97, 0.93, 1.0))}).verdict == "inconclusive"
    assert c01.rule({"a": _c1(recovery=(0.9, 0.85, 0.94))}).verdict == "fails"
    # a random mask of the same size is a sanity line, not a condition; top movement of the same size is C1c's,
    # judged on its own (its interval against zero) and reported beside C1
    assert c01.rule({"a": _c1(vs_random=(-0.05, -0.08, -0.02))}).verdict == "holds"
    behind = c01.rule({"a": _c1(vs_top=(-0.03, -0.05, -0.01))})
    assert behind.verdict == "holds" and "C1c, graft − top movement of its size -3.0 pt [-5.0, -1.0]: fails" \
        in behind.report()
    assert c01.top_part(_c1(vs_top=(0.03, 0.01, 0.05))) == "holds" and c01.top_part(_c1()) == "inconclusive"
    assert c01.rule({"a": _c1(normalized=(0.3, 0.1, 0.45))}).verdict == "fails"    # keeps less than half the gain
    # several tested tasks: the pooled intervals decide, each task's own verdict is tallied beside them
    mixed = {"a": _c1(), "b": _c1(recovery=(0.9, 0.85, 0.94)), "c": _c1(recovery=(0.97, 0.93, 1.0))}
    pooled = c01.rule(mixed, pooled=_c1(recovery=(0.96, 0.951, 0.99)))
    assert pooled.verdict == "holds"
    assert "task by task: holds on 1 (a); fails on 1 (b); inconclusive on 1 (c)" in pooled.report()
    assert "pooled over the 3 tested tasks (a, b, c):\n- recovery 96.0% [95.1%, 99.0%]" in pooled.report()
    assert c01.rule(mixed, pooled=_c1(recovery=(0.95, 0.93, 0.97))).verdict == "inconclusive"
    assert c01.rule(mixed, pooled=_c1(recovery=(0.92, 0.90, 0.94))).verdict == "fails"
    with pytest.raises(ValueError, match="pooled intervals"):
        c01.rule(mixed)
    # a task where fine-tuning did not gain tests nothing, and is named; with no gain anywhere: not testable here
    untested = c01.rule({"a": _c1(gain=(0.01, -0.02, 0.04))})
    assert untested.verdict == "not testable here" and "not tested: a (fine-tuning's gain over zero-shot is not" in untested.report()
    assert c01.rule({}).verdict == "not testable here"              # an empty selection
    one = c01.rule({"a": _c1(), "b": _c1(gain=(0.0, -0.1, 0.1), recovery=(0.5, 0.4, 0.6))})
    assert one.verdict == "holds" and "not tested: b" in one.report()  # the untested task is left out of the pool
    assert vd.tally(c01.task_verdicts(mixed)) == {"holds": 1, "fails": 1, "inconclusive": 1}


def test_c2_rules():
    assert c02.rule(Interval(0.6, 0.4, 0.8), Interval(0.05, 0.03, 0.07)).verdict == "holds"
    # better calibrated, but by less than the paper's 40%, and the interval excludes 40%
    assert c02.rule(Interval(0.2, 0.1, 0.3), Interval(0.02, 0.01, 0.03)).verdict == "fails"
    # the interval of the reduction contains 40% and the gap contains zero: the data cannot decide
    no_diff = c02.rule(Interval(0.1, -0.76, 0.59), Interval(0.007, -0.04, 0.049))
    assert no_diff.verdict == "inconclusive" and "no difference" in no_diff.report()
    assert c02.rule(Interval(-0.5, -0.8, -0.2), Interval(-0.03, -0.05, -0.01)).verdict == "fails"
    assert c02.rule(None, None).verdict == "not testable here"


def test_c2_over_many_tasks():
    good, bad = (Interval(0.6, 0.4, 0.8), Interval(0.05, 0.03, 0.07)), (Interval(0.2, 0.1, 0.3), Interval(0.02, 0.01, 0.03))
    gained, flat = Interval(0.1, 0.05, 0.15), Interval(0.0, -0.03, 0.03)
    v = c02.rule_across({"a": good, "b": bad, "c": bad}, good, {"a": gained, "b": gained, "c": flat})
    assert v.verdict == "holds"  # the pool of a and b decides
    assert "task by task: holds on 1 (a); fails on 1 (b)" in v.report()
    assert "not tested: c (fine-tuning's gain over zero-shot is not clearly above zero" in v.report()
    assert c02.rule_across({"a": good}, bad, {"a": gained}).verdict == "fails"
    none = c02.rule_across({"c": good}, (None, None), {"c": flat})
    assert none.verdict == "not testable here" and "no task tests C2" in none.report()


def test_c3_rules():
    up, zero, down = Interval(0.03, 0.01, 0.05), Interval(0.0, -0.02, 0.02), Interval(-0.03, -0.05, -0.01)
    assert c03.rule(up, {"x": up, "y": zero}).verdict == "holds"
    assert c03.rule(zero, {"x": up, "y": down}).verdict == "inconclusive"
    assert c03.rule(down, {"x": zero, "y": down}).verdict == "fails"
    assert c03.rule(None, {}).verdict == "not testable here"
    no_room = c03.rule(up, {"x": up}, headroom=Interval(0.01, -0.01, 0.03))  # fine-tuning gained nothing OOD
    assert no_room.verdict == "not testable here" and "no room" in no_room.report()
    assert c03.rule(up, {"x": up}, headroom=up).verdict == "holds"


def test_c3_over_many_sources():
    up, zero, down = Interval(0.03, 0.01, 0.05), Interval(0.0, -0.02, 0.02), Interval(-0.03, -0.05, -0.01)
    per = {"mr": (up, {"mr→imdb": up}, up), "cr": (down, {"cr→imdb": down}, up),
           "sms": (up, {"sms→spam": up}, zero), "bbc": (None, {}, None)}
    v = c03.rule_across(per, (zero, {"mr→imdb": up, "cr→imdb": down}, up))
    assert v.verdict == "inconclusive" and "source by source: holds on 1 (mr); fails on 1 (cr)" in v.report()
    assert "not tested: sms (fine-tuning gained nothing" in v.report()
    assert "not tested: bbc (no out-of-distribution target" in v.report()
    assert c03.rule_across({"sms": per["sms"]}, None).verdict == "not testable here"


def test_c4_rules():
    assert c04.rule(0.05, 1e-4, 0.95, 15, 0.001).verdict == "holds"
    assert c04.rule(0.05, 1e-4, -0.9, 15, 0.001).verdict == "fails"                   # overlap falls with similarity
    assert c04.rule(0.05, 1e-4, 0.5, 15, 0.2).verdict == "inconclusive"               # no evidence either way
    few = c04.rule(0.05, 1e-4, 1.0, 3, 0.0)
    assert few.verdict == "inconclusive" and "fewer than 6 pairs" in few.report()   # three pairs say nothing
    assert c04.rule(0.40, 1e-4, 0.9, 15, 0.001).verdict == "fails"
    assert c04.rule(c04.DISJOINT, 1e-4, 0.9, 15, 0.001).verdict == "fails"   # the threshold is strict
    assert c04.rule(None, 0.0, np.nan, 0).verdict == "not testable here"


def test_c5_rules():
    up, zero, down = Interval(0.03, 0.01, 0.05), Interval(0.0, -0.02, 0.02), Interval(-0.03, -0.05, -0.01)
    # the final average accuracy (graft − sequential) decides; backward transfer is reported, not judged: a
    # task-known graft's own is 0 by construction
    assert c05.rule(zero, up).verdict == "holds"
    assert c05.rule(up, zero).verdict == "inconclusive"        # "forgets less" by construction, ends no higher
    assert c05.rule(up, down).verdict == "fails"               # ends lower
    assert c05.rule(down, up).verdict == "holds"
    assert c05.BY_CONSTRUCTION in c05.rule(up, zero).report()
    assert c05.BY_CONSTRUCTION not in c05.rule(up, zero, method="stitched").report()
    assert c05.rule(None, None).verdict == "not testable here"
    nothing = c05.rule(up, zero, forgetting=Interval(0.007, -0.01, 0.02))
    assert nothing.verdict == "not testable here" and "forgot nothing" in nothing.report()


def test_c5_over_many_sequences():
    up, zero, down = Interval(0.03, 0.01, 0.05), Interval(0.0, -0.02, 0.02), Interval(-0.03, -0.05, -0.01)
    per = {"mr → trec → sms": (up, zero, up), "subj → bbc → cr": (down, up, up), "sms → mr": (up, zero, zero),
           "mr": (None, None, None)}
    v = c05.rule_across(per, (up, zero, up))
    assert v.verdict == "inconclusive"
    assert "sequence by sequence: holds on 1 (subj → bbc → cr); inconclusive on 1 (mr → trec → sms)" in v.report()
    assert "not tested: sms → mr (sequential fine-tuning forgot nothing" in v.report()
    assert "not tested: mr (a sequence of one task)" in v.report()
    assert c05.rule_across({"sms → mr": per["sms → mr"]}, None).verdict == "not testable here"


def test_verdict_names_are_checked():
    with pytest.raises(ValueError, match="verdict must be one of"):
        vd.Verdict("C1", "sort of")


def test_c4_verdict_on_a_hand_made_result():
    """The chapter's own summary of its result: the mean off-diagonal overlap and the rank
    correlation with task similarity; one task (an empty selection of pairs) is not testable here."""
    import pandas as pd
    from types import SimpleNamespace

    names = ["a", "b", "c"]
    overlap = pd.DataFrame([[1, .02, .04], [.03, 1, .05], [.01, .06, 1]], index=names, columns=names)
    rnd = pd.DataFrame(np.full((3, 3), 1e-4), index=names, columns=names)
    sim = pd.DataFrame({"similarity": [0.1, 0.5, 0.9], "overlap": [0.02, 0.03, 0.05]})
    res = SimpleNamespace(overlap=overlap, random_overlap=rnd, similarity=sim)
    summary = c04.overlap_summary(res)
    assert summary["mean_overlap"] == pytest.approx(0.035) and summary["rho"].rho == pytest.approx(1.0)
    assert c04.verdict(res).verdict == "inconclusive"                # disjoint, but three pairs say nothing
    one = SimpleNamespace(overlap=overlap.iloc[:1, :1], random_overlap=rnd.iloc[:1, :1], similarity=sim.iloc[:0])
    assert c04.verdict(one).verdict == "not testable here"
    # five tasks, ten pairs whose overlap follows their similarity: ρ = 1, and its permutation p-value over
    # the 120 relabelings of the tasks is 1/120 (only the identity orders the pairs so)
    import itertools
    five = ["a", "b", "c", "d", "e"]
    pairs = list(itertools.combinations(five, 2))
    sims = {p: i / 10 for i, p in enumerate(pairs)}
    big = pd.DataFrame(np.eye(5), index=five, columns=five)
    for (x, y), s in sims.items():
        big.loc[x, y] = big.loc[y, x] = 0.01 + s / 20
    res5 = SimpleNamespace(overlap=big, random_overlap=pd.DataFrame(np.full((5, 5), 1e-4), index=five, columns=five),
                           similarity=pd.DataFrame({"pair": [f"{x}–{y}" for x, y in pairs],
                                                    "similarity": list(sims.values()),
                                                    "overlap": [big.loc[x, y] for x, y in pairs]}))
    s5 = c04.overlap_summary(res5)
    assert s5["rho"].rho == pytest.approx(1.0) and s5["pvalue"] == pytest.approx(1 / 120)
    assert c04.verdict(res5).verdict == "holds" and "permutation over task relabelings" in c04.verdict(res5).report()
    # an overlap unrelated to similarity: the permutation p-value is large
    flat = {p: 0.05 + 0.01 * ((i * 7) % 10) for i, p in enumerate(pairs)}
    rho, p = c04.permutation_pvalue(sims, flat)
    assert p > 0.05 and p >= 1 / 120
    rows = c04.robustness(res5)
    assert [r["analysis"] for r in rows] == ["primary", "point", "parametric p"] and rows[0]["verdict"] == "holds"


def test_survey_gain_needs_the_whole_interval_above_zero():
    from skillgraft.chapters import survey

    assert survey.gain_verdict(Interval(0.10, 0.02, 0.18)) == survey.GAIN
    assert survey.gain_verdict(Interval(0.05, -0.01, 0.11)) == survey.NO_GAIN   # contains zero
    assert survey.gain_verdict(Interval(-0.05, -0.09, -0.01)) == survey.NO_GAIN  # a loss
    assert survey.costly(survey.COSTLY + 0.1) and not survey.costly(survey.COSTLY) and not survey.costly(float("nan"))


def test_ood_targets_must_share_a_sources_classes():
    assert c03.same_labels("mr", "imdb-sent") and c03.same_labels("sms", "spamassassin")
    assert not c03.same_labels("mr", "spamassassin") and not c03.same_labels("tweets3", "mr")
    with pytest.raises(ValueError, match=r"target\(s\) \['bbc'\] share no source's classes"):
        c03.ood(["mr", "sms"], ["imdb-sent", "bbc"], [13], 1e-4, setting=None)  # refused before any model loads


def _onehot(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities putting 0.9 on the label where ``correct``, on the other class elsewhere."""
    labels = np.zeros(len(correct), dtype=int)
    p1 = np.where(correct, 0.1, 0.9)
    return np.stack([1 - p1, p1], axis=1), labels


def test_ood_headroom_and_continual_forgetting_on_hand_made_results():
    import pandas as pd
    from types import SimpleNamespace

    n = 50
    right, wrong, half = np.ones(n, bool), np.zeros(n, bool), np.arange(n) % 2 == 0
    ood = SimpleNamespace(probs=typed(c03, {("s", "s", 1, "fine-tuned"): _onehot(right), ("s", "s", 1, "zero-shot"): _onehot(wrong),
                                            ("s", "t", 1, "fine-tuned"): _onehot(right), ("s", "t", 1, "zero-shot"): _onehot(half)}))
    room = c03.headroom(ood, n_boot=200)
    assert room.estimate == pytest.approx(0.5) and room.low > 0            # in-distribution rows are left out
    assert c03.headroom(SimpleNamespace(probs=typed(c03, {("s", "s", 1, "fine-tuned"): _onehot(right)}))) is None
    R = pd.DataFrame(np.eye(2), columns=["a", "b"])
    seq = SimpleNamespace(matrices={"sequential": R}, probs=typed(c05, {
        (1, "sequential", 0, 0): _onehot(right), (1, "sequential", 1, 0): _onehot(half),
        (1, "sequential", 1, 1): _onehot(right)}))
    forgot = c05.forgetting(seq, n_boot=200)
    assert forgot.estimate == pytest.approx(0.5) and forgot.low > 0
    assert c05.forgetting(SimpleNamespace(matrices={"sequential": R[["a"]]}, probs=typed(c05, {}))) is None


def test_a_verdicts_summary_reads_as_one_line():
    v = vd.Verdict("C1", "holds", ("pooled over the 2 tested tasks (mr, sms):", "recovery 98%", "task by task: holds on 2"))
    assert v.summary() == "pooled over the 2 tested tasks (mr, sms): recovery 98%; task by task: holds on 2"
    assert vd.Verdict("C4", "fails", ()).summary() == ""


def test_intervals_pool_tasks_with_other_numbers_of_classes():
    """A binary task and a six-class task pool into one accuracy or ECE interval: each prediction is
    scored (top-class confidence, correctness) before pooling, with the values of pooling the
    probabilities where the classes match."""
    import numpy as np

    from skillgraft import metrics, verdicts

    rng = np.random.default_rng(0)
    def group(c, n=50):
        a, b = rng.dirichlet(np.ones(c), n), rng.dirichlet(np.ones(c), n)
        return a, b, rng.integers(c, size=n)
    two, six = group(2), group(6)
    gap = verdicts.accuracy_gap([two, six], n_boot=50)
    want = (np.mean(np.r_[two[0].argmax(1) == two[2], six[0].argmax(1) == six[2]])
            - np.mean(np.r_[two[1].argmax(1) == two[2], six[1].argmax(1) == six[2]]))
    assert gap.estimate == pytest.approx(want) and gap.low <= gap.estimate <= gap.high
    red = verdicts.ece_gap([two, six], n_bins=10, n_boot=50)
    conf = lambda i: np.r_[two[i].max(1), six[i].max(1)]
    hit = lambda i: np.r_[two[i].argmax(1) == two[2], six[i].argmax(1) == six[2]]
    assert red.estimate == pytest.approx(metrics.ece_top(conf(1), hit(1)) - metrics.ece_top(conf(0), hit(0)))
    # where the classes match, the same numbers as pooling the probabilities themselves
    other = group(2)
    pooled = lambda i: np.r_[two[i], other[i]]
    assert verdicts.ece_gap([two, other], n_boot=50).estimate == \
        metrics.ece(pooled(1), pooled(2)) - metrics.ece(pooled(0), pooled(2))
    assert metrics.ece(two[0], two[2]) == metrics.ece_top(*metrics.top_class(two[0], two[2]))
    scored = verdicts.accuracy_gap([verdicts.correctness(two), verdicts.correctness(six)], scored=True, n_boot=50)
    assert (scored.estimate, scored.low, scored.high) == (gap.estimate, gap.low, gap.high)
    with pytest.raises(ValueError, match="confidence and correct must be non-empty"):
        metrics.ece_top(np.ones(3), np.ones(2))


def test_a_claims_table_shows_its_verdicts_right_after_the_unit():
    import pandas as pd

    frame = pd.DataFrame([dict(task="mr", family="sentiment", gain="+1", verdict="holds", top_verdict="fails")])
    assert list(vd.verdict_first(frame).columns) == ["task", "verdict", "top_verdict", "family", "gain"]
    assert list(vd.verdict_first(frame.rename(columns={"task": "source"}), "source").columns)[:2] == ["source", "verdict"]
