"""The parameter files in configs/ fit the notebooks they are for (a dry run, no computation)."""
from __future__ import annotations

from pathlib import Path

import pytest

from skillgraft import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "paper_scale").glob("*.yaml"))


def test_every_notebook_has_a_paper_scale_file():
    assert [c.stem for c in CONFIGS] == [nb.stem for nb in cli.list_notebooks(ROOT)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_scale_file_passes_the_dry_run(config, capsys):
    assert cli.main(["run", config.stem, "-f", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters OK" in out and "roberta-base" in out


def test_dry_run_rejects_an_unknown_task(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [sst2, no-such-task]\n")
    assert cli.main(["run", "01_single_task_grafting", "-f", str(bad), "--dry-run"]) == 2
    assert "unknown task 'no-such-task'; accepted:" in capsys.readouterr().err
