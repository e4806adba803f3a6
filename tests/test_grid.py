"""The grid (configs/grid/) cut into units that each finish what they start."""
from __future__ import annotations

import pytest

from skillgraft import cli, grid

GRID = {"01_single_task_grafting": {"tasks": ["mr", "trec", "sms"]},
        "02_calibration": {"tasks": ["mr", "trec", "sms"]},
        "03_ood": {"sources": ["mr", "sms"]},
        "04_multitask": {"tasks": ["sms", "mr", "trec"]},
        "05_continual_learning": {"sequences": [["mr", "trec", "sms"], ["trec", "mr"]]}}


def test_units_finish_what_they_start_04_first_then_per_task_in_04s_order():
    units = grid.units(GRID)
    assert [u.label.split(":")[0] for u in units] == ["04", "sms", "mr", "trec"]
    assert units[0].chapters == [("04_multitask", {"tasks": ["sms", "mr", "trec"]})]
    mr = dict(units[2].chapters)
    assert mr == {"01_single_task_grafting": {"tasks": ["mr"]}, "02_calibration": {"tasks": ["mr"]},
                  "03_ood": {"sources": ["mr"]}, "05_continual_learning": {"sequences": [["mr", "trec", "sms"]]}}
    trec = dict(units[3].chapters)  # no source of chapter 03; the sequence that begins with it
    assert "03_ood" not in trec and trec["05_continual_learning"] == {"sequences": [["trec", "mr"]]}
    every = sorted(t for u in units[1:] for n, p in u.chapters if n.startswith("01") for t in p["tasks"])
    assert every == sorted(GRID["01_single_task_grafting"]["tasks"])  # each task's chains in one unit, once


def test_the_repositorys_grid_checks_and_a_source_unit_scores_only_its_label_space(capsys):
    units = grid.run(dry_run=True)
    assert units[0].label.startswith("04") and len(units) >= 9
    err = capsys.readouterr().err
    assert "03 {'sources': ['sms']}" in err
    checked = grid._checked(grid.repo_root(), "03_ood", {"sources": ["sms"]})
    assert checked["targets"] == ["spamassassin"]


def test_an_unknown_unit_is_refused_with_the_accepted_ones(capsys):
    assert cli.main(["grid", "--dry-run", "no-such-unit"]) == 2
    err = capsys.readouterr().err
    assert "no grid unit 'no-such-unit'; accepted: 04, mr" in err


def test_each_unit_is_swept_then_run_by_its_chapters_then_published(monkeypatch, tmp_path):
    """The chapters resolve the cheap steps a sweep leaves to them (a similarity, a baseline mask)
    before the unit is published, so that the published unit holds all its chapters read."""
    from skillgraft import publishing, sweep

    calls = []

    class Report:
        failed: list = []

        def summary(self):
            return "nothing"

    monkeypatch.setattr(sweep, "sweep", lambda chapters, stream=None: calls.append(("sweep", [n for n, _ in chapters]))
                        or Report())
    monkeypatch.setattr(publishing, "resolve_pages", lambda which, stream=None: calls.append(
        ("chapters", sorted(which), {n: p["tasks"] for n, (_, p) in which.items() if "tasks" in p})))
    monkeypatch.setattr(publishing, "snapshot", lambda root, stream=None: calls.append(("publish", root)))
    grid.run(only=["04", "trec"], results=tmp_path)
    assert [c[0] for c in calls] == ["sweep", "chapters", "publish"] * 2
    assert calls[1][1] == ["04_multitask"] and calls[4][1] == ["01_single_task_grafting", "02_calibration"]
    assert calls[4][2] == {"01_single_task_grafting": ["trec"], "02_calibration": ["trec"]}  # the unit's own task
    assert calls[2][1] == calls[5][1] == tmp_path
