"""Progress of a chapter's computation: written by the kernel's loops, shown by the command."""
from __future__ import annotations

import io
import os
import subprocess
import sys

from skillgraft import progress


def test_nothing_is_written_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with progress.stage("fine-tuning mr, seed 13"):
        progress.step(3, 80)
    assert list(tmp_path.iterdir()) == []


def test_stage_and_steps_are_one_replaced_record(monkeypatch, tmp_path):
    path = tmp_path / "p.json"
    monkeypatch.setenv(progress.ENV, str(path))
    with progress.stage("localizing mr (grow), seed 13"):
        progress.step(4, 10, "steps on S")
        record = progress.read(path)
    assert progress.describe(record) == "localizing mr (grow), seed 13: 4/10 steps on S"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it
    progress.step(5, 10)  # outside any stage: ignored
    assert progress.read(path)["done"] == 4


def test_watcher_shows_the_stages_another_process_reports():
    out = io.StringIO()
    child = ("from skillgraft import progress\n"
             "import time\n"
             "with progress.stage('fine-tuning cr, seed 21'):\n"
             "    progress.step(1, 2); time.sleep(0.4)\n"
             "with progress.stage('predicting cr test, 200 examples'):\n"
             "    progress.step(1, 13, 'batches'); time.sleep(0.4)\n")
    with progress.Watcher("02_calibration", stream=out, interval=0.05) as w:
        subprocess.run([sys.executable, "-c", child], check=True, env=dict(os.environ))
        path = w.path
    text = out.getvalue()
    assert "[02_calibration" in text and "fine-tuning cr, seed 21" in text
    assert "predicting cr test, 200 examples" in text and "done in" in text
    assert "no fine-tune, graft or prediction computed" not in text
    assert not path.exists() and progress.ENV not in os.environ


def test_watcher_says_when_nothing_was_computed():
    out = io.StringIO()
    with progress.Watcher("01_single_task_grafting", stream=out, interval=0.05):
        pass
    assert "no fine-tune, graft or prediction computed" in out.getvalue()
