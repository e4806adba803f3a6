"""The command line: parameter checks before any computation, clear errors, non-zero exits."""
from __future__ import annotations

import re

import nbformat
import pytest

from skillgraft import cli, parameters


@pytest.fixture
def notebook_dir(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('model = "smollm2-135m"\ntasks = ["mr", "bbc"]\nseeds = [13, 42]\n'
                                       'sparsity = 1e-4\nsteps = 60\ndevice = "cpu"\nverbose = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Test"), params, nbformat.v4.new_code_cell("result = steps * 2")]
    nbformat.write(nb, nbdir / "01_demo.ipynb")
    return tmp_path


def test_notebook_parameters_are_read(notebook_dir):
    path = cli.resolve_notebook("01", notebook_dir)
    assert path.name == "01_demo.ipynb"
    assert cli.notebook_parameters(path)["seeds"] == [13, 42]


def test_unknown_notebook_names_the_accepted_ones(notebook_dir):
    with pytest.raises(cli.UsageError, match="unknown notebook '07'; accepted: 01_demo"):
        cli.resolve_notebook("07", notebook_dir)


@pytest.mark.parametrize("given, message", [
    ({"stepz": 3}, "unknown parameter 'stepz' for 01_demo; accepted: model, tasks, seeds"),
    ({"steps": "many"}, "parameter 'steps' of 01_demo expects int"),
    ({"sparsity": True}, "parameter 'sparsity' of 01_demo expects float"),
    ({"seeds": 13}, "parameter 'seeds' of 01_demo expects list"),
])
def test_bad_parameters_are_rejected(notebook_dir, given, message):
    path = cli.resolve_notebook("01", notebook_dir)
    with pytest.raises(cli.UsageError, match=message):
        cli.check_parameters(path, given)


def test_good_parameters_pass_and_ints_count_as_floats(notebook_dir):
    path = cli.resolve_notebook("01", notebook_dir)
    assert cli.check_parameters(path, {"sparsity": 1, "seeds": [1]}) == {"sparsity": 1, "seeds": [1]}


def test_values_are_read_as_yaml(tmp_path):
    pfile = tmp_path / "p.yaml"
    pfile.write_text("steps: 1000\nseeds: [100, 13]\n")
    params = parameters.parse_params([["sparsity", "1e-4"], ["device", "cuda"], ["steps", "5"], ["lrs", "[1e7, 3e-3]"]], [str(pfile)])
    assert params == {"steps": 5, "seeds": [100, 13], "sparsity": 1e-4, "device": "cuda", "lrs": [1e7, 3e-3]}


def test_cli_exits_non_zero_and_writes_nothing(notebook_dir, monkeypatch, capsys):
    monkeypatch.chdir(notebook_dir)
    monkeypatch.setattr(parameters, "repo_root", lambda: notebook_dir)
    code = cli.main(["run", "01", "-p", "stepz", "3", "--output-dir", str(notebook_dir / "runs")])
    assert code == 2
    assert "unknown parameter 'stepz'" in capsys.readouterr().err
    assert not (notebook_dir / "runs").exists()


@pytest.mark.parametrize("pairs, message", [
    ([["sparsities", "[0]"]], "a sparsity is a fraction in (0, 1]"),
    ([["sparsities", "[1.5]"], ["claim_sparsity", "1.5"]], "a sparsity is a fraction in (0, 1]"),
    ([["k", "-3"]], "'k' must be an integer ≥ 1"),
    ([["test_size", "-5"]], "'test_size' must be an integer ≥ 1"),
    ([["seeds", '["x"]']], "'seeds' must be a non-empty list of integers"),
    ([["claim_sparsity", "1e-3"]], "'claim_sparsity' (0.001) must be one of 'sparsities'"),
    ([["precision", "fp16"]], "unknown precision 'fp16'; accepted: fp32, bf16"),
    ([["graft_start", "sideways"]], "start must be one of ('refine', 'grow')"),
    ([["device", "gpu"]], "unknown device 'gpu'; accepted: 'cpu'"),
    ([["tasks", "[]"]], "parameter 'tasks' is empty; give at least one task"),
    ([["tasks", '["mr", "cr", "mr"]']], "parameter 'tasks' names 'mr' more than once"),
    ([["seeds", "[13, 13]"]], "parameter 'seeds' repeats a seed ([13, 13])"),
])
def test_bad_values_are_refused_before_any_compute(pairs, message, capsys):
    argv = ["run", "01_single_task_grafting", "--dry-run"] + [a for p in pairs for a in ["-p", *p]]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("seeds: [13, 42\n", r"parameter file .*bad\.yaml is not valid YAML \(line 2, column 1\)"),
    ("- 13\n- 42\n", r"parameter file .*bad\.yaml must hold a mapping name: value"),
])
def test_bad_parameter_files_name_the_file(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(cli.UsageError, match=message):
        parameters.parse_params([], [str(bad)])


def test_missing_parameter_file_and_bad_values_are_usage_errors(tmp_path):
    with pytest.raises(cli.UsageError, match=r"cannot read parameter file .*nope\.yaml"):
        parameters.parse_params([], [str(tmp_path / "nope.yaml")])
    with pytest.raises(cli.UsageError, match=r"value of -p seeds is not valid YAML: '\[13, 42'"):
        parameters.parse_params([["seeds", "[13, 42"]], [])


@pytest.mark.parametrize("value, message", [
    ("[]", "parameter 'sequences' is a non-empty list of task lists"),
    ('["mr", "sms"]', "parameter 'sequences' is a non-empty list of task lists"),
    ('[["mr", "nope"]]', "parameter 'sequence': unknown task 'nope'"),
    ('[["mr", "sms", "mr"]]', "parameter 'sequence' names 'mr' more than once"),
    ('[["mr", "sms"], ["mr", "sms"]]', "parameter 'sequences' repeats a sequence"),
])
def test_bad_sequences_are_refused(value, message):
    with pytest.raises(cli.UsageError, match=re.escape(message)):
        parameters._check_values({"sequences": parameters._value(value)})


def test_compare_seeds_must_be_a_count(capsys):
    assert cli.main(["run", "01_single_task_grafting", "--dry-run", "-p", "compare_seeds", "-1"]) == 2
    assert "compare_seeds" in capsys.readouterr().err


def test_an_unknown_name_in_a_parameter_file_exits_2_before_any_compute(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("tasks: [mr]\nft_stepz: 3\n")
    assert cli.main(["run", "01_single_task_grafting", "--dry-run", "-f", str(config)]) == 2
    assert "unknown parameter 'ft_stepz' for 01_single_task_grafting" in capsys.readouterr().err


def test_an_ood_target_of_other_classes_is_named_in_the_dry_run(capsys):
    argv = ["run", "03_ood", "--dry-run", "-p", "sources", '["mr", "sms"]', "-p", "targets", '["spamassassin", "imdb-sent"]']
    assert cli.main(argv) == 0
    assert cli.main(["run", "03_ood", "--dry-run", "-p", "sources", '["mr"]', "-p", "targets", '["bbc"]']) == 2
    assert "target(s) ['bbc'] share no source's classes" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_it_is_said(monkeypatch):
    from skillgraft import machine
    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    assert "no native bf16" in machine.bf16_note({"precision": "bf16", "device": "cpu"})
    assert machine.bf16_note({"precision": "fp32", "device": "cpu"}) is None
    assert machine.bf16_note({"precision": "bf16", "device": "cuda"}) is None
    monkeypatch.setattr(machine, "native_bf16", lambda: True)
    assert machine.bf16_note({"precision": "bf16", "device": "cpu"}) is None


def test_a_notebook_runs_its_kernel_without_the_unencrypted_tcp_warning(tmp_path, capfd):
    """Kernels start over IPC sockets: the run prints no "running over TCP without encryption" warning."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("print(x + 1)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, out = tmp_path / "t.ipynb", tmp_path / "o.ipynb"
    nbformat.write(nb, source)
    cli.execute(source, out, {"x": 41})
    printed = capfd.readouterr()
    assert "without encryption" not in printed.err + printed.out
    assert nbformat.read(out, 4).cells[-1].outputs[0]["text"] == "42\n"
