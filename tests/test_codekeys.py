"""Which code a recipe's key covers is derived from the source (skillgraft.codekeys), never listed."""
from __future__ import annotations

import shutil
from pathlib import Path

import skillgraft
from skillgraft import codekeys, recipes
from skillgraft.recipes import (Difference, FineTune, Localized, Location, Prediction, RandomMask, Similarity, Stitch,
                                TopMovement)

ALL = (FineTune, Difference, Stitch, Localized, TopMovement, RandomMask, Similarity, Location, Prediction)


def test_each_recipe_covers_what_its_compute_reaches_and_nothing_that_cannot_change_a_value():
    for cls in ALL:
        assert "recipes" in cls.code and not set(cls.code) & (codekeys.NOT_VALUES | {"plots", "lab", "store", "cli"})
    data = {"workbench", "tasks", "assets", "prompt", "models"}  # what reads a task's data
    for cls in (FineTune, Localized, Prediction):
        assert data <= set(cls.code), cls
    assert "finetune" in FineTune.code and "localization" not in FineTune.code
    assert "localization" in Localized.code and "finetune" not in Localized.code
    assert not {"finetune", "localization", "workbench", "tasks"} & set(TopMovement.code + Location.code)
    assert "grafting" in Similarity.code and "grafting" in Stitch.code


def test_the_resolvers_data_members_bring_the_data_path():
    members = codekeys._resolver()
    for name in ("splits", "classifier", "prompt_classifier", "length", "applied"):
        assert codekeys.RESOLVER_DATA in members[name], name
    assert members["delta"] == frozenset()  # a delta is the value of a recipe, keyed by it


def test_closure_follows_imports_but_not_type_checking_ones(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n")
    (tmp_path / "b.py").write_text("def f():\n    from .d import g\n")
    (tmp_path / "c.py").write_text("")
    (tmp_path / "d.py").write_text("from . import progress\n")
    (tmp_path / "progress.py").write_text("")
    assert codekeys.closure(["a"], str(tmp_path)) == ("a", "b", "d")  # c for types only; progress changes no value


def _edited(tmp_path, module: str) -> dict:
    """Each recipe's code hash in a copy of the package where ``module`` has one more line."""
    src = Path(skillgraft.__file__).parent
    copy = tmp_path / "skillgraft"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    recipes.code_hash.cache_clear()
    before = {c: recipes.code_hash(c.code, str(copy)) for c in ALL}
    (copy / f"{module}.py").write_text((copy / f"{module}.py").read_text() + "\n# edited\n")
    recipes.code_hash.cache_clear()
    after = {c: recipes.code_hash(c.code, str(copy)) for c in ALL}
    recipes.code_hash.cache_clear()
    return {c.__name__ for c in ALL if before[c] != after[c]}


def test_an_edit_reachable_only_through_the_split_code_moves_exactly_what_reads_data(tmp_path):
    assert _edited(tmp_path, "tasks") == {"FineTune", "Localized", "Prediction"}


def test_an_edit_to_plots_lab_or_store_moves_no_key(tmp_path):
    for module in ("plots", "lab", "store", "progress", "verdicts"):
        assert _edited(tmp_path / module, module) == set(), module


def test_an_edit_to_finetune_moves_fine_tunes_only(tmp_path):
    assert _edited(tmp_path, "finetune") == {"FineTune"}
