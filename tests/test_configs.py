"""The parameter files in configs/ fit the notebooks they are for (a dry run, no computation)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from skillgraft import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "paper_scale").glob("*.yaml"))


def test_every_notebook_has_a_paper_scale_file():
    assert [c.stem for c in CONFIGS] == [nb.stem for nb in cli.list_notebooks(ROOT)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_scale_file_passes_the_dry_run(config, capsys, monkeypatch):
    import torch

    monkeypatch.delenv("HF_HUB_OFFLINE")  # as for a reader with internet: the hub model is not checked here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on the GPU machine the files are for
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.main(["run", config.stem, "-f", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters OK" in out and "roberta-base" in out


GRID = sorted((ROOT / "configs" / "grid").glob("*.yaml"))


def test_every_chapter_has_a_grid_file_and_it_spans_the_families_the_claims_need():
    import yaml

    from skillgraft.tasks import get_task

    assert [c.stem for c in GRID] == [nb.stem for nb in cli.list_notebooks(ROOT)]
    grid = {c.stem[:2]: yaml.safe_load(c.read_text()) for c in GRID}
    for chapter in ("01", "02"):  # C1, C2: at least 8 tasks from at least 5 families
        tasks = grid[chapter]["tasks"]
        assert len(set(tasks)) >= 8 and len({get_task(t).family for t in tasks}) >= 5
    sources = grid["03"]["sources"]  # C3: at least 2 sources in at least 2 families
    assert len(sources) >= 2 and len({get_task(t).family for t in sources}) >= 2
    tasks = grid["04"]["tasks"]  # C4: at least 6 tasks, 4 families, 15 pairs
    assert len(tasks) * (len(tasks) - 1) // 2 >= 15 and len({get_task(t).family for t in tasks}) >= 4
    sequences = grid["05"]["sequences"]  # C5: at least 2 sequences, each crossing families
    assert len(sequences) >= 2 and all(len({get_task(t).family for t in s}) == len(s) for s in sequences)


@pytest.mark.parametrize("config", GRID, ids=lambda p: p.stem)
def test_grid_file_passes_the_dry_run(config, capsys):
    assert cli.main(["run", config.stem, "-f", str(config), "--dry-run"]) == 0
    assert "parameters OK" in capsys.readouterr().out


def test_dry_run_rejects_an_unknown_task(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [sst2, no-such-task]\n")
    assert cli.main(["run", "01_single_task_grafting", "-f", str(bad), "--dry-run"]) == 2
    assert "unknown task 'no-such-task'; accepted:" in capsys.readouterr().err


def _documented_runs() -> list[str]:
    """Every ``skillgraft run`` command line shown in the README and the book."""
    lines = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]:
        for line in doc.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip().removeprefix(".venv/bin/")
            if line.startswith("skillgraft run "):
                lines.append(line)
    return lines


def test_the_documentation_shows_run_commands():
    assert len(_documented_runs()) >= 4


@pytest.mark.parametrize("line", _documented_runs())
def test_documented_run_commands_pass_the_dry_run(line, capsys, monkeypatch):
    """What a reader copies from the README or the book names real notebooks, parameters and files."""
    import shlex

    monkeypatch.delenv("HF_HUB_OFFLINE")  # the paper-scale commands are for readers with internet
    if "cuda" in line or "paper_scale" in line:  # and for a machine with a GPU
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    args = shlex.split(line)[1:]
    args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    code = cli.main(args + ([] if "--dry-run" in args else ["--dry-run"]))
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("name, value, message", [
    ("graft_base", "sideways", "parameters graft_\\*: base must be one of \\('movement', 'gradient'\\)"),
    ("ft_steps", "0", "parameters ft_\\*: steps must be an integer ≥ 1"),
    ("ft_optimizer", "adam", "parameters ft_\\*: optimizer must be one of \\('sgd', 'adamw'\\)"),
])
def test_dry_run_rejects_bad_fine_tuning_and_graft_values(name, value, message, capsys):
    """Values a type check cannot judge are refused before anything runs, naming the accepted ones."""
    assert cli.main(["run", "04_multitask", "-p", name, value, "--dry-run"]) == 2
    assert re.search(message, capsys.readouterr().err)



def test_papermill_reads_every_parameter_of_every_notebook():
    """papermill parses the parameters cell itself (for -p and its help): a comment it cannot
    read turns a parameter into an 'unknown parameter'."""
    import papermill

    for nb in cli.list_notebooks(ROOT):
        assert sorted(papermill.inspect_notebook(str(nb))) == sorted(cli.notebook_parameters(nb)), nb.name


def test_dry_run_rejects_a_model_it_cannot_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["run", "01", "-p", "model", "no-such-model", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'model': unknown model 'no-such-model'" in err and "the hub is offline" in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["run", "01", "-p", "model", str(tmp_path / "empty"), "--dry-run"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert cli.main(["run", "01", "-p", "model", "a b/c d", "--dry-run"]) == 2
    assert "unknown model 'a b/c d'; accepted: an embedded model (smollm2-135m)" in capsys.readouterr().err


def test_a_gpu_that_is_not_there_is_refused_before_any_kernel_starts(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["run", "01", "-p", "device", "cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'device': 'cuda' asks for a GPU" in err and "accepted here: cpu, auto" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.main(["run", "01", "-p", "device", "cuda:3", "--dry-run"]) == 2
    assert "has 1 CUDA device(s); accepted here: cpu, auto, cuda, cuda:0" in capsys.readouterr().err
