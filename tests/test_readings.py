"""The chapters' paragraphs written from their results (``reading``) and their evidence lines, on
hand-made results whose numbers can be checked by hand."""
import numpy as np
import pandas as pd
import pytest

from skillgraft.chapters import calibration, common, continual, multitask, ood, single_task
from skillgraft.verdicts import Interval


def _single(graft, top, rnd, equals=(False, True)):
    rows = []
    for task, (g, t, r) in {"mr": (graft, top, rnd)}.items():
        rows += [dict(task=task, seed=13, start=None, target=np.nan, variant="zero-shot", accuracy=0.60,
                      sparsity=np.nan, mask_size=0),
                 dict(task=task, seed=13, start=None, target=np.nan, variant="fine-tuned", accuracy=0.90,
                      sparsity=np.nan, mask_size=np.nan)]
        for variant, acc in (("graft", g), ("top-movement", t), ("random", r)):
            rows.append(dict(task=task, seed=13, start="grow", target=np.nan, variant=variant, accuracy=acc,
                             sparsity=2e-5, mask_size=2000))
    grafts = pd.DataFrame([dict(task="mr", seed=s, start="grow", base_size=11, size=n, equals_top_movement=e)
                           for s, n, e in zip((13, 21), (1500, 2500), equals)])
    return single_task.SingleTask(pd.DataFrame(rows), None, None, None, grafts=grafts)


def test_single_task_reading_states_the_sizes_and_the_gaps_in_points():
    text = single_task.reading(_single(0.89, 0.885, 0.61), "grow")
    assert "from a base patch of 11 entries to 1,500–2,500" in text
    assert "1 of 2 kept masks differ" in text
    assert "mr: +0.5 against top movement, +28.0 against random" in text
    assert "C1c below judges" in text  # no interval given: no word on whether the entries matter


def test_single_task_reading_says_what_c1cs_interval_says():
    single = _single(0.89, 0.80, 0.61)
    assert "chose better entries" in single_task.reading(single, "grow", Interval(0.09, 0.02, 0.15))
    assert "do better" in single_task.reading(single, "grow", Interval(-0.03, -0.05, -0.01))
    assert "how many entries to keep" in single_task.reading(single, "grow", Interval(0.01, -0.02, 0.04))
    assert "No graft" in single_task.reading(_single(0.89, 0.8, 0.6), "refine")


def test_the_starts_sentence_follows_which_start_won():
    assert single_task.starts_sentence("grow", "grow").startswith("the chapters' start, grow, has the higher")
    other = single_task.starts_sentence("refine", "grow")
    assert "refine has the higher" in other and "not the chapters' start (grow)" in other
    assert single_task.starts_sentence(None, "grow").startswith("only one start ran")


def test_evidence_counts_tasks_families_and_seeds():
    assert common.evidence(["mr", "sms", "mr"], [13, 21, 42], 200) == (
        "2 tasks in 2 families: mr (sentiment), sms (spam); 3 data seeds; 200 test examples per task")
    assert common.evidence(["mr", "cr"], [13], 100).startswith("2 tasks in 1 family: ")
    assert "1 data seed;" in common.evidence(["mr"], [13], 100)


def test_a_scope_says_in_a_few_words_what_a_verdict_rests_on():
    assert common.scope(["mr", "sms", "mr"], [13, 21]) == "2 tasks in 2 families × 2 seeds"
    assert common.scope(["mr"], [13]) == "1 task in 1 family × 1 seed"
    assert ood.scope(["mr", "sms"], ["imdb-sent", "spamassassin"], [13]) == "2 sources (2 pairs) in 2 families × 1 seed"
    assert multitask.scope(["mr", "cr", "sms"], 13) == "3 tasks (3 pairs) in 2 families × 1 seed"
    assert continual.scope([["mr", "sms"], ["sms", "cr"]], [13, 21]).startswith("2 sequences of 3 tasks in 2 families")


def test_ood_evidence_lists_only_pairs_with_the_sources_classes():
    text = ood.evidence(["mr", "sms"], ["imdb-sent", "spamassassin"], [13, 21], 200)
    assert text.startswith("2 source → target pairs from 2 source(s) in 2 families (mr → imdb-sent, sms → spamassassin)")


def test_words_for_confidence_and_differences():
    rows = pd.DataFrame(dict(confidence=[0.95, 0.85], accuracy=[0.8, 0.8]))
    assert common.confidence_words(rows) == "mean confidence 90.0% against accuracy 80.0%, over-confident by 10.0 points"
    assert common.difference_words(Interval(0.1, 0.05, 0.2), "up", "down") == "up"
    assert common.difference_words(Interval(-0.1, -0.2, -0.05), "up", "down") == "down"
    assert "no difference" in common.difference_words(Interval(0.1, -0.05, 0.2), "up", "down")


def test_calibration_reading_reports_each_task_and_the_pooled_intervals():
    rows = [dict(task=t, seed=13, variant=v, accuracy=a, ece=e, confidence=c)
            for t in ("mr", "sms") for v, a, e, c in (("fine-tuned", 0.9, 0.08, 0.97), ("graft", 0.88, 0.04, 0.85))]
    cal = calibration.Calibration(pd.DataFrame(rows), None)
    text = calibration.reading(cal, Interval(0.5, 0.2, 0.7), Interval(0.04, 0.01, 0.06), Interval(-0.2, -0.5, -0.1))
    assert "mr 0.080 → 0.040; sms 0.080 → 0.040" in text
    assert "over-confident by 7.0 points" in text and "under-confident by 3.0 points" in text
    assert "the graft is better calibrated;" in text and "50% [20%, 70%]" in text
    assert "temperature scaling calibrates the fine-tuned model better" in text
    assert calibration.reading(cal, None, None, None).startswith("No graft")


def test_multitask_reading_splits_same_and_cross_family_pairs():
    tasks = ["mr", "cr", "sms"]
    overlap = pd.DataFrame([[1, 0.5, 0.1], [0.5, 1, 0.1], [0.1, 0.1, 1]], index=tasks, columns=tasks, dtype=float)
    rnd = pd.DataFrame(0.001, index=tasks, columns=tasks)
    sim = pd.DataFrame([dict(pair="mr–cr", kind="sentiment–sentiment", similarity=0.9, overlap=0.5, jaccard=0.3),
                        dict(pair="mr–sms", kind="sentiment–spam", similarity=0.1, overlap=0.1, jaccard=0.05),
                        dict(pair="cr–sms", kind="sentiment–spam", similarity=0.2, overlap=0.1, jaccard=0.05)])
    acc = pd.DataFrame(dict(task=tasks, zero_shot=0.6, multitask=0.9, own_region=0.8, single_task=0.92,
                            region_size=[100, 200, 300]))
    result = multitask.MultiTask({}, overlap, overlap, rnd, None, acc, sim)
    text = multitask.reading(result)
    assert "1 same-family pair(s) 50.0%; 2 cross-family pair(s) 10.0%" in text
    assert "100–300 entries" in text and "(0.100%)" in text
    assert "Spearman's ρ" in text and "over the 3 pairs" in text.lower()


def test_continual_reading_says_whether_there_was_anything_to_forget():
    R = pd.DataFrame([[0.9, np.nan], [0.8, 0.95]], columns=["mr", "sms"])
    summary = pd.DataFrame([dict(method="sequential", average_accuracy=0.875, backward_transfer=-0.1),
                            dict(method="graft (task known)", average_accuracy=0.9, backward_transfer=0.0)])
    regions = pd.DataFrame(dict(region_size=[120, 3400]))
    result = continual.Continual({"sequential": R}, summary, regions)
    text = continual.reading(result, Interval(0.1, 0.05, 0.15))
    assert "mr → sms" in text and "+10.0 points [+5.0, +15.0]" in text and "forgetting for a graft to reduce" in text
    assert "sequential: backward transfer -10.0 points" in text and "120–3,400 entries" in text
    assert "nothing to protect" in continual.reading(result, Interval(-0.1, -0.15, -0.05))
    assert continual.reading(result, None).startswith("A sequence of one task")


@pytest.mark.parametrize("sign", [1, -1])
def test_ood_reading_pools_targets_per_source(sign):
    rows = []
    for s, t, ind in (("mr", "mr", True), ("mr", "imdb-sent", False)):
        for v, a, e in (("zero-shot", 0.7, 0.1), ("fine-tuned", 0.9, 0.08), ("graft", 0.88, 0.05)):
            rows.append(dict(source=s, target=t, seed=13, variant=v, in_distribution=ind, accuracy=a, ece=e))
    result = ood.OOD(pd.DataFrame(rows))
    gap = Interval(0.03 * sign, 0.01 * sign, 0.05 * sign) if sign > 0 else Interval(-0.03, -0.05, -0.01)
    text = ood.reading(result, gap, {"mr→imdb-sent": gap}, Interval(0.2, 0.1, 0.3))
    assert "mr: zero-shot 70.0% in distribution and 70.0% on its targets" in text
    assert ("the graft transfers better" if sign > 0 else "the graft transfers worse") in text
    assert ("ahead on 1, behind on 0 of 1" if sign > 0 else "ahead on 0, behind on 1 of 1") in text
    assert "mean ECE is 0.050 against the fine-tuned model's 0.080" in text
