"""Each chapter's parameter schema: one place for names, defaults, types, accepted values and docs,
read by the checks, the dry run, `skillgraft parameters` and the rerunning page."""
import pytest

from skillgraft import cli, parameters
from skillgraft.parameters import UsageError

NOTEBOOKS = parameters.list_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_says_what_it_does_and_what_it_accepts(path):
    schema = parameters.schema(path)
    assert list(schema) == list(parameters.notebook_parameters(path))
    for p in schema.values():
        assert p.doc, f"{path.stem}: parameter {p.name!r} has no doc (a comment in its cell, or SHARED_DOCS)"
        assert p.accepted != "any value of its type", f"{path.stem}: {p.name!r} has no rule (parameters.RULES)"


def test_the_cell_comments_are_the_docs():
    source = "# the model\nmodel = 'a'\nseeds = [1, 2]  # data seeds\nk = (\n  16)  # per class\nx = 1\n"
    assert parameters._comments(source) == {"model": "the model", "seeds": "data seeds", "k": "per class", "x": ""}


def test_types_in_words():
    assert [parameters._kind(v) for v in (True, 3, 0.5, "cpu", [1, 2], [["mr"]], [1, "a"])] == [
        "true or false", "integer", "number", "text", "list of integers", "list of lists of texts", "list"]


def test_the_table_lists_every_parameter_and_the_runs_values(capsys):
    path = parameters.resolve_notebook("01")
    table = parameters.schema_table(path, {"seeds": [13]})
    assert table.splitlines()[0].startswith("| name | default | this run |")
    assert len(table.splitlines()) == 2 + len(parameters.notebook_parameters(path))
    assert "| `seeds` | `[13, 21, 42]` | `[13]` | list of integers | a non-empty list of distinct integers ≥ 0 |" in table
    assert cli.main(["parameters", "01"]) == 0
    assert "| `graft_start` |" in capsys.readouterr().out


@pytest.mark.parametrize("given, words", [({"seeds": [13, 13]}, "repeats a seed"), ({"tasks": []}, "is empty"),
                                          ({"k": 0}, "integer ≥ 1"), ({"claim_sparsity": 2.0}, "fraction in (0, 1]"),
                                          ({"tasks": ["nope"]}, "unknown task 'nope'")])
def test_each_rule_refuses_with_what_it_accepts(given, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parameters.check_parameters(parameters.resolve_notebook("01"), given)


def test_every_rule_governs_a_parameter_of_some_chapter():
    used = {name for path in NOTEBOOKS for name in parameters.notebook_parameters(path)}
    for rule in parameters.RULES:
        assert set(rule.names) & (used | {"task", "sequence", "reference", "seed", "ece_bins"}), rule.names
