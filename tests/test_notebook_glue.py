"""The results page's claims × tasks matrix, read back from what the chapters glued."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from skillgraft import notebook
from skillgraft.chapters import CHAPTERS

PREFIX = "application/papermill.record/"


def _glued_notebook(path, values: dict) -> None:
    """A notebook whose outputs are what ``myst_nb.glue(name, value, display=False)`` writes."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={PREFIX + "text/plain": repr(value)},
        metadata={"scrapbook": {"mime_prefix": PREFIX, "name": name}}) for name, value in values.items()])]
    nbformat.write(nb, path)


def _rows(claim, verdict, frame=None, by="task"):
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        import myst_nb
        mp.setattr(myst_nb, "glue", lambda name, value, display=True: captured.update({name: value}))
        notebook.glue_verdicts(claim, verdict, frame, by)
    return captured


def test_a_chapters_verdicts_are_glued_without_its_pooled_row_and_with_the_claims_own():
    frame = pd.DataFrame({"task": ["mr", "sms", "pooled"], "verdict": ["holds", "not testable here", "holds"]})
    rows = json.loads(_rows("C1", "holds", frame)["c1_matrix"])
    assert rows == [{"claim": "C1", "task": "mr", "verdict": "holds"},
                    {"claim": "C1", "task": "sms", "verdict": "not testable here"},
                    {"claim": "C1", "task": notebook.VERDICT_COLUMN, "verdict": "holds"}]
    assert json.loads(_rows("C4", "fails")["c4_matrix"]) == [
        {"claim": "C4", "task": notebook.VERDICT_COLUMN, "verdict": "fails"}]


def test_the_matrix_reads_every_chapter_and_puts_the_claims_verdicts_last(tmp_path):
    verdicts = {1: ["holds", "fails"], 2: ["inconclusive"], 3: ["fails"], 4: [], 5: ["not testable here"]}
    for number, name in enumerate(CHAPTERS, start=1):
        per = pd.DataFrame({"task": [f"t{i}" for i in range(len(verdicts[number]))], "verdict": verdicts[number]})
        glued = _rows(f"C{number}", "holds" if number == 1 else "fails", per if len(per) else None)
        _glued_notebook(tmp_path / f"{name}.ipynb", {**glued, "other": 0.5})
    matrix = notebook.claims_matrix(tmp_path)
    assert list(matrix.columns) == ["claim", "task", "verdict"]
    assert matrix.task.tolist() == ["t0", "t1", "t0", "t0", "t0"] + [notebook.VERDICT_COLUMN] * 5
    assert matrix[matrix.task == notebook.VERDICT_COLUMN].verdict.tolist() == ["holds"] + ["fails"] * 4
    assert matrix[(matrix.claim == "C1") & (matrix.task == "t1")].verdict.item() == "fails"
    assert notebook.glued(tmp_path / "03_ood.ipynb", "other") == 0.5


def test_a_chapter_not_executed_is_named(tmp_path):
    _glued_notebook(tmp_path / "01_single_task_grafting.ipynb", {"c1_verdict": "holds"})
    with pytest.raises(KeyError, match="01_single_task_grafting.ipynb glues no 'c1_matrix'"):
        notebook.claims_matrix(tmp_path)
