"""The teaching page's exercises: one command each, parsed and checked as `skillgraft run` checks it."""
from __future__ import annotations

from pathlib import Path

import pytest

from skillgraft.chapters import exercises as ex

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "teaching.md"


def test_every_exercise_has_one_command_that_passes_the_checks():
    found = ex.exercises(PAGE)
    labels = [e.label for e in found]
    assert len(labels) == len(set(labels)) == PAGE.read_text().count(":::{exercise}")
    for e in found:
        params = ex.parameters(e)  # raises on a parameter the chapter does not have, or a bad value
        assert all(params[k] == v for k, v in e.given.items()) and e.key == e.label.replace("-", "_")
    # each names its tasks, so that it runs the same (and its answer stays fresh) when a chapter's default tasks change
    unnamed = [e.label for e in found if not {"tasks", "sources", "sequences"} & set(e.given)]
    assert not unnamed, f"exercises that run on the chapter's default tasks: {unnamed}"
    one_step = next(e for e in found if e.label == "ex-1-4")
    assert one_step.chapter == "01_single_task_grafting" and one_step.given == {"tasks": ["mr"], "seeds": [13], "graft_epochs": 1}


def test_an_exercise_without_exactly_one_command_is_refused(tmp_path):
    page = tmp_path / "teaching.md"
    page.write_text(":::{exercise} Two commands\n:label: ex-9-1\n\n```bash\nskillgraft run 01 -p k 4\n```\n\n"
                    "```bash\nskillgraft run 02\n```\n:::\n")
    with pytest.raises(ValueError, match="exercise ex-9-1 must show exactly one `skillgraft run` command, found 2"):
        ex.exercises(page)
    page.write_text(":::{exercise} A bad value\n:label: ex-9-2\n\n```bash\nskillgraft run 01 -p k -3\n```\n:::\n")
    from skillgraft.cli import UsageError
    with pytest.raises(UsageError, match="'k' must be an integer ≥ 1"):
        ex.parameters(ex.exercises(page)[0])


def test_the_answers_page_runs_the_teaching_page_commands():
    import json

    nb = json.loads((ROOT / "book" / "answers.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert 'Path("teaching.md")' in code and "exercises.exercises(page)" in code and "glue(ex.key" in code


def test_previous_minutes_are_read_from_the_glued_outputs(tmp_path):
    import json

    glued = lambda name, value: {"output_type": "display_data", "metadata": {"scrapbook": {"name": name}},
                                 "data": {"application/papermill.record/text/plain": repr(value)}}
    nb = {"cells": [{"cell_type": "code", "outputs": [glued("ex_1_4", "a sentence"), glued("ex_1_4_minutes", "0.9"),
                                                     glued("ex_2_3_minutes", "not a number")]}]}
    (tmp_path / "answers.ipynb").write_text(json.dumps(nb))
    assert ex.previous_minutes(tmp_path / "answers.ipynb") == {"ex_1_4": 0.9}
    assert ex.previous_minutes(tmp_path / "absent.ipynb") == {}


def test_every_solution_glues_the_answer_the_answers_page_measured():
    """Each exercise's solution pastes its measured sentence and minutes from the answers page,
    and the committed answers page glues both for every exercise of the teaching page."""
    import json
    import re

    text = PAGE.read_text()
    nb = json.loads((ROOT / "book" / "answers.ipynb").read_text())
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb["cells"] for o in c.get("outputs", [])
             if "scrapbook" in o.get("metadata", {})}
    for e in ex.exercises(PAGE):
        solution = re.search(r":::\{solution\} " + re.escape(e.label) + r"\n(.*?)\n:::", text, re.S)
        assert solution, f"{e.label} has no solution"
        assert f"answers.ipynb::{e.key}:s" in solution.group(1) and f"{e.key}_minutes:s" in solution.group(1), e.label
        assert {e.key, f"{e.key}_minutes"} <= glued, f"the answers page does not glue {e.label}"


def _answers_page(path, fingerprint):
    """An executed answers page that glues ``fingerprint`` as the answers page does."""
    import json

    glue = {"output_type": "display_data", "metadata": {"scrapbook": {"name": ex.FINGERPRINT}},
            "data": {"application/papermill.record/text/plain": repr(json.dumps(fingerprint))}}
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [glue]}]}))
    return path


def _teaching(path, *commands):
    path.write_text("".join(f":::{{exercise}} E{i}\n:label: ex-1-{i}\n\n```bash\n{c}\n```\n:::\n\n"
                            for i, c in enumerate(commands, 1)))
    return path


def test_the_answers_check_passes_on_a_fresh_page_and_names_what_changed(tmp_path):
    page = _teaching(tmp_path / "teaching.md", "skillgraft run 01 -p tasks '[\"mr\"]' -p seeds '[13]' -p graft_epochs 1",
                     "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5")
    answers = _answers_page(tmp_path / "answers.ipynb", ex.fingerprint(page))
    assert ex.stale(page, answers) == []

    # a command changed on the teaching page: that exercise, and the parameter, are named
    _teaching(page, "skillgraft run 01 -p tasks '[\"mr\"]' -p seeds '[13]' -p graft_epochs 2",
              "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5", "skillgraft run 02 -p tasks '[\"cr\"]'")
    problems = ex.stale(page, answers)
    assert len(problems) == 2, problems
    assert problems[0].startswith("ex-1-3: not on the answers page")
    assert problems[1].startswith("ex-1-1: run with other parameters than its command gives now (graft_epochs)")
    assert all("`make answers`" in p for p in problems)


def test_the_answers_check_fails_on_other_code_a_dropped_exercise_or_no_record(tmp_path):
    page = _teaching(tmp_path / "teaching.md", "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5",
                     "skillgraft run 02 -p tasks '[\"sms\"]'")
    then = ex.fingerprint(page)
    assert set(then["exercises"]) == {"ex-1-1", "ex-1-2"} and len(then["code"]) == 64
    assert set(ex.fingerprint(page, only=["ex-1-2"])["exercises"]) == {"ex-1-2"}  # a run of some exercises only
    then["code"] = "0" * 64
    answers = _answers_page(tmp_path / "answers.ipynb", then)
    _teaching(page, "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5")
    problems = ex.stale(page, answers)
    assert "executed with other code than this" in problems[0] and "000000000000" in problems[0]
    assert problems[1].startswith("ex-1-2: on the answers page but no longer on the teaching page")
    (tmp_path / "old.ipynb").write_text('{"cells": []}')
    assert ex.stale(page, tmp_path / "old.ipynb")[0].endswith(
        "glues no answers_fingerprint: it was executed before its freshness was recorded; `make answers` executes it again")


def test_the_answers_fingerprint_covers_the_code_of_every_stored_step():
    modules = set(ex._keyed_modules())  # read from the recipe classes' sources, never listed by hand
    assert {"finetune", "grafting", "localization", "masks", "models", "recipes", "workbench"} <= modules
    assert not modules & {"lab", "notebook", "plots", "verdicts", "progress"}  # not what a key covers


def test_the_answers_freshness_sentence_is_empty_when_fresh_and_counts_the_stale_exercises(tmp_path):
    page = _teaching(tmp_path / "teaching.md", "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5",
                     "skillgraft run 02 -p tasks '[\"sms\"]'")
    answers = _answers_page(tmp_path / "answers.ipynb", ex.fingerprint(page))
    assert ex.freshness(page, answers) == ""
    _teaching(page, "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 7", "skillgraft run 02 -p tasks '[\"sms\"]'")
    assert "for 1 of 2 exercises" in ex.freshness(page, answers) and "`make answers`" in ex.freshness(page, answers)
    (tmp_path / "old.ipynb").write_text('{"cells": []}')
    assert "for all 2 exercises" in ex.freshness(page, tmp_path / "old.ipynb")
    then = ex.fingerprint(page)
    then["code"] = "0" * 64  # other code: every exercise's steps have other keys
    assert "for all 2 exercises" in ex.freshness(page, _answers_page(tmp_path / "answers.ipynb", then))


def test_the_staleness_guard_fails_on_a_stale_answers_page(tmp_path):
    """`make test`'s guard (before nbval) names a stale answers page, and passes a fresh one."""
    from skillgraft import publishing

    page = _teaching(tmp_path / "teaching.md", "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5")
    answers = _answers_page(tmp_path / "answers.ipynb", ex.fingerprint(page))
    nowhere = tmp_path / "nowhere"  # no published layer: only its own problem remains
    assert len(publishing.guard(nowhere, {}, answers=(page, answers))) == 1
    _teaching(page, "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 7")
    problems = publishing.guard(nowhere, {}, answers=(page, answers))
    assert problems[0].startswith("ex-1-1: run with other parameters than its command gives now (ece_bins)")
    assert problems[-1].startswith("no published results at") and len(problems) == 2


def test_the_guard_and_the_results_page_compare_the_same_pair_by_default(tmp_path, monkeypatch):
    """One place names the book's teaching page and answers notebook: the staleness guard and the
    results page's freshness sentence both read it, so they cannot come to check different pages."""
    from skillgraft import publishing

    assert ex.book_pages() == (PAGE, ROOT / "book" / "answers.ipynb") and all(p.is_file() for p in ex.book_pages())
    page = _teaching(tmp_path / "teaching.md", "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 5")
    answers = _answers_page(tmp_path / "answers.ipynb", ex.fingerprint(page))
    monkeypatch.setattr(ex, "book_pages", lambda: (page, answers))
    nowhere = tmp_path / "nowhere"
    assert ex.freshness() == "" and len(publishing.guard(nowhere, {})) == 1
    _teaching(page, "skillgraft run 02 -p tasks '[\"mr\"]' -p ece_bins 7")
    assert "for 1 of 1 exercises" in ex.freshness()
    assert publishing.guard(nowhere, {})[0].startswith("ex-1-1: run with other parameters")
    assert ex.stale(notebook=answers) == ex.stale(page) == ex.stale()  # a missing one is the book's own
