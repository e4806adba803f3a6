"""The store of recipes' results: keys of recipe and code, whole entries only, one atomic writer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import skillgraft
from skillgraft import recipes
from skillgraft.finetune import FinetuneConfig
from skillgraft.localization import GraftConfig
from skillgraft.recipes import Difference, Env, FineTune, Localized, Prediction, Recipe, TopMovement
from skillgraft.store import Store

ENV = Env("tiny", 64, 20, "fp32")


@dataclass(frozen=True)
class Toy(Recipe):
    kind: ClassVar[str] = "delta"
    code: ClassVar[tuple] = ("masks",)
    name: str
    seed: int = 0


def fine_tune(seed=13, steps=80):
    return FineTune(ENV, "mr", 16, seed, FinetuneConfig(steps=steps))


def test_key_depends_on_every_field_and_on_nested_recipes():
    assert fine_tune().key == fine_tune().key
    assert fine_tune().key != fine_tune(seed=21).key
    assert fine_tune().key != fine_tune(steps=81).key
    graft = Localized(fine_tune(), "mr", 16, 13, GraftConfig(sparsity=1e-4))
    assert graft.key != Localized(fine_tune(seed=21), "mr", 16, 13, GraftConfig(sparsity=1e-4)).key
    assert graft.spec()["delta"] == {"recipe": "FineTune", "key": fine_tune().key}


def test_stage_zero_of_a_sequence_is_the_single_task_fine_tune():
    stage0 = FineTune(ENV, ("mr", "cr"), 16, 13, FinetuneConfig(), mode="sequential", stage=0)
    assert stage0.key == fine_tune().key and stage0.tasks == ("mr",)
    with pytest.raises(ValueError, match="unknown fine-tuning mode 'joint'; accepted: single, multitask"):
        FineTune(ENV, "mr", 16, 13, FinetuneConfig(), mode="joint")


def test_round_trip(tmp_path):
    store = Store(tmp_path)
    entry = store.save(Toy("a"), {"a.weight": torch.arange(6.0).reshape(2, 3)}, {"acc": 0.8})
    again = store.load(Toy("a"))
    assert torch.equal(again.tensors["a.weight"], entry.tensors["a.weight"]) and again.meta == {"acc": 0.8}
    assert store.load(Toy("b")) is None and store.load_meta(Toy("a")) == {"acc": 0.8}


def test_corrupted_entry_is_removed_not_used(tmp_path):
    store = Store(tmp_path)
    entry = store.save(Toy("a"), {"w": torch.ones(4)}, {"n": 1})
    blob = entry.path / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert store.load(Toy("a")) is None and not entry.path.exists()


def test_an_entry_is_trusted_only_whole(tmp_path):
    """Metadata whose tensors are gone or cut is not returned (and the entry is removed)."""
    store = Store(tmp_path)
    entry = store.save(Toy("a"), {"w": torch.ones(1000)}, {"n": 1})
    blob = entry.path / "tensors.safetensors"
    blob.write_bytes(blob.read_bytes()[:100])
    assert store.load_meta(Toy("a")) is None and not entry.path.exists()
    entry = store.save(Toy("b"), {"w": torch.ones(10)}, {"n": 1})
    (entry.path / "tensors.safetensors").unlink()
    assert store.load_meta(Toy("b")) is None and store.load(Toy("b")) is None


def test_garbled_metadata_is_not_used(tmp_path):
    store = Store(tmp_path)
    entry = store.save(Toy("a"), None, {"acc": 0.5})
    (entry.path / "meta.json").write_text("{not json")
    assert store.load(Toy("a")) is None


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(AttributeError):  # a value that is not a tensor fails mid-write
        store.save(Toy("a"), {"w": "not a tensor"}, {})
    assert store.load(Toy("a")) is None
    assert list((tmp_path / "delta").iterdir()) == []


def test_meta_records_recipe_code_and_inputs(tmp_path):
    graft = Localized(fine_tune(), "mr", 16, 13, GraftConfig(sparsity=1e-4))
    entry = Store(tmp_path).save(graft, {"w": torch.arange(3)}, {"z": 1, "y": float("nan")})
    record = json.loads((entry.path / "meta.json").read_text())
    assert record["recipe"] == "Localized" and record["data"] == {"y": "nan", "z": 1}
    assert "localization" in record["modules"] and record["inputs"] == [f"delta/{fine_tune().key}"]


def test_in_memory_recipes_are_never_stored(tmp_path):
    with pytest.raises(ValueError, match="Difference is computed in memory and never stored"):
        Store(tmp_path).path(Difference(fine_tune(), fine_tune(seed=21)))
    top = TopMovement(fine_tune(), 1e-4)  # baseline masks are stored as positions, beside grafts
    assert Store(tmp_path).path(top) == tmp_path / "mask" / top.key


def test_key_covers_the_code_that_computes_an_artifact(tmp_path):
    """A copy of the package with the localization code changed gets other keys for grafts
    (the stored graft is recomputed) but not for fine-tunes; a change to the plotting code
    changes no key (the graft is reused)."""
    src = Path(skillgraft.__file__).parent
    copy = tmp_path / "skillgraft"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    graft, ft = Localized.code, FineTune.code
    before = {c: recipes.code_hash(c, str(copy)) for c in (graft, ft)}
    assert before[graft] == recipes.code_hash(graft, str(src))
    (copy / "plots.py").write_text((copy / "plots.py").read_text() + "\n# a new colour\n")
    recipes.code_hash.cache_clear()
    assert {c: recipes.code_hash(c, str(copy)) for c in (graft, ft)} == before
    (copy / "localization.py").write_text((copy / "localization.py").read_text().replace("lr · g", "lr·g", 1))
    recipes.code_hash.cache_clear()
    assert recipes.code_hash(graft, str(copy)) != before[graft]
    assert recipes.code_hash(ft, str(copy)) == before[ft]


def test_an_entry_of_other_code_is_not_found(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.save(Toy("a"), {"w": torch.arange(3)}, {"count": 3})
    assert store.load(Toy("a")) is not None
    monkeypatch.setattr(recipes, "code_hash", lambda modules, package_dir=None: "another version of localize")
    assert store.load(Toy("a")) is None and store.load_meta(Toy("a")) is None  # a new recipe: a new key


def test_killed_writes_are_swept_and_never_trusted(tmp_path):
    store = Store(tmp_path)
    # a writer killed mid-way: its temporary folder stays, with half a tensor file in it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "delta" / f".tmp-{int(dead.stdout)}-abc"
    stale.mkdir(parents=True)
    (stale / "tensors.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / "delta" / f".tmp-{os.getpid()}-xyz"   # a write in progress in a live process
    live.mkdir()
    assert store.load(Toy("a")) is None                     # nothing half-written is ever read
    assert [e["key"] for e in store.entries()] == []         # nor listed as an entry
    store.save(Toy("b"), {"w": torch.ones(2)}, {})
    assert not stale.exists() and live.exists()              # swept on the next write; the live one is kept
    assert store.sweep() == 0
    live.rmdir()


def test_stale_entries_and_what_was_made_from_them_are_listed_and_pruned(tmp_path, monkeypatch):
    store = Store(tmp_path)
    graft = Localized(fine_tune(), "mr", 16, 13, GraftConfig(sparsity=1e-4))
    pred = Prediction(ENV, "mr", ("{text}", ("a", "b")), delta=fine_tune(), mask=graft)
    store.save(fine_tune(), {"w": torch.ones(3)}, {})
    store.save(graft, {"w": torch.arange(3)}, {})
    store.save(pred, {"p": torch.ones(2)}, {})
    assert [e["stale"] for e in store.entries()] == [False] * 3
    real = recipes.code_hash
    monkeypatch.setattr(recipes, "code_hash", lambda modules, package_dir=None:
                        "new localization" if "localization" in modules else real(modules, package_dir))
    stale = {e["kind"]: e["stale"] for e in store.entries()}
    assert stale == {"delta": False, "mask": True, "probs": True}  # the prediction was made with the old graft
    assert store.prune() > 0
    assert [e["kind"] for e in store.entries()] == ["delta"]


def test_a_concurrent_writer_that_lands_first_is_kept(tmp_path, monkeypatch):
    """Two processes finishing the same key: the second rename fails on the first's entry,
    which stays in place, whole; no temporary folder is left."""
    store = Store(tmp_path)
    first = store.save(Toy("a"), {"w": torch.ones(3)}, {"who": "first"})
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == first.path:
            raise OSError(39, "Directory not empty")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    second = store.save(Toy("a"), {"w": torch.ones(3)}, {"who": "second"})
    assert second.meta == {"who": "first"} and store.load(Toy("a")).meta == {"who": "first"}
    assert sorted(p.name for p in (tmp_path / "delta").iterdir()) == [first.path.name]


def test_tensors_come_back_in_the_order_they_were_saved(tmp_path):
    """safetensors keeps names sorted ("layers.10" before "layers.2"); a loaded delta must iterate
    its parameters as the computed one did, since seeded draws over them (random masks, the
    initial scores of a graft) follow that order."""
    store = Store(tmp_path)
    names = ["layers.2.q", "layers.10.q", "layers.1.v", "layers.1.a"]
    store.save(Toy("a"), {n: torch.full((2,), float(i)) for i, n in enumerate(names)})
    loaded = store.load(Toy("a")).tensors
    assert list(loaded) == names and [float(t[0]) for t in loaded.values()] == [0.0, 1.0, 2.0, 3.0]


def test_cache_command_counts_entries_apart_from_killed_writes(tmp_path, monkeypatch, capsys):
    """`skillgraft cache` reports the entries' size, the temporary folders apart, and --prune sweeps the killed ones."""
    from skillgraft import cli

    monkeypatch.setenv("SKILLGRAFT_HOME", str(tmp_path))
    store = Store(tmp_path / "cache")
    store.save(Toy("a"), {"w": torch.ones(1000)}, {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / "cache" / "delta" / f".tmp-{int(dead.stdout)}-abc"
    killed.mkdir()
    (killed / "tensors.safetensors").write_bytes(b"\0" * 3_000_000)
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "MB in 1 entries" in out and "3.0 MB in temporary folders" in out and "0.0 MB in 1 entries" in out
    assert cli.main(["cache", "--prune"]) == 0
    assert not killed.exists() and "temporary" not in capsys.readouterr().out
