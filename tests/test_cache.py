"""The content-addressed artifact store."""
from __future__ import annotations

import json
from pathlib import Path
import time
from dataclasses import dataclass

import pytest
import torch

from skillgraft.cache import Store, spec_key


@dataclass
class Cfg:
    lr: float
    steps: int


def test_key_depends_on_every_part_of_the_spec():
    base = {"model": "m", "task": "mr", "seed": 13, "cfg": Cfg(1e-3, 60)}
    assert spec_key(base) == spec_key(dict(base))
    assert spec_key(base) != spec_key({**base, "seed": 21})
    assert spec_key(base) != spec_key({**base, "cfg": Cfg(1e-3, 61)})


def test_round_trip_and_cheap_hit(tmp_path):
    store = Store(tmp_path)
    spec = {"task": "mr", "seed": 13}
    calls = []

    def compute():
        calls.append(1)
        return {"a.weight": torch.arange(6.0).reshape(2, 3)}, {"acc": 0.8}

    first = store.get_or_compute("delta", spec, compute)
    t0 = time.perf_counter()
    second = store.get_or_compute("delta", spec, compute)
    elapsed = time.perf_counter() - t0
    assert calls == [1]
    assert torch.equal(second.tensors["a.weight"], first.tensors["a.weight"])
    assert second.meta == {"acc": 0.8}
    assert elapsed < 1.0


def test_corrupted_entry_is_recomputed(tmp_path):
    store = Store(tmp_path)
    spec = {"task": "mr"}
    entry = store.save("delta", spec, {"w": torch.ones(4)}, {"n": 1})
    blob = entry.path / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert store.load("delta", spec) is None
    assert not entry.path.exists()
    again = store.get_or_compute("delta", spec, lambda: ({"w": torch.zeros(4)}, {"n": 2}))
    assert again.meta == {"n": 2} and torch.equal(again.tensors["w"], torch.zeros(4))


def test_garbled_metadata_is_recomputed(tmp_path):
    store = Store(tmp_path)
    entry = store.save("metrics", {"k": 1}, None, {"acc": 0.5})
    (entry.path / "meta.json").write_text("{not json")
    assert store.load("metrics", {"k": 1}) is None


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(AttributeError):  # a value that is not a tensor fails mid-write
        store.save("delta", {"k": 1}, {"w": "not a tensor"}, {})
    assert store.load("delta", {"k": 1}) is None
    assert [p for p in (tmp_path / "delta").iterdir()] == []


def test_meta_is_sorted_json_with_spec(tmp_path):
    entry = Store(tmp_path).save("metrics", {"b": 2, "a": 1}, None, {"z": 1, "y": float("nan")})
    record = json.loads((entry.path / "meta.json").read_text())
    assert record["spec"] == {"a": 1, "b": 2}
    assert record["data"] == {"y": "nan", "z": 1}


def test_bad_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid artifact kind"):
        Store(tmp_path).path("../x", {})


def test_key_covers_the_code_that_computes_an_artifact(tmp_path):
    """A copy of the package with the localization code changed gets other keys (the cached
    graft is recomputed); a change to the plotting code keeps them (the graft is reused)."""
    import shutil

    import skillgraft
    from skillgraft import cache

    src = Path(skillgraft.__file__).parent
    copy = tmp_path / "skillgraft"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache.code_hash(str(copy))
    assert before == cache.code_hash(str(src))
    (copy / "plots.py").write_text((copy / "plots.py").read_text() + "\n# a new colour\n")
    cache.code_hash.cache_clear()
    assert cache.code_hash(str(copy)) == before
    (copy / "localization.py").write_text((copy / "localization.py").read_text().replace("lr · g", "lr·g", 1))
    cache.code_hash.cache_clear()
    assert cache.code_hash(str(copy)) != before


def test_an_entry_of_other_code_is_not_found(tmp_path, monkeypatch):
    from skillgraft import cache

    store = Store(tmp_path)
    spec = {"task": "mr", "seed": 13}
    store.save("mask", spec, {"w": torch.arange(3)}, {"count": 3})
    assert store.load("mask", spec) is not None
    monkeypatch.setattr(cache, "code_hash", lambda package_dir=None: "another version of localize")
    assert store.load("mask", spec) is None and store.load_meta("mask", spec) is None


def test_killed_writes_are_swept_and_never_trusted(tmp_path):
    import os
    import subprocess
    import sys

    store = Store(tmp_path)
    spec = {"task": "mr", "seed": 13}
    # a writer killed mid-way: its temporary folder stays, with half a tensor file in it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "delta" / f".tmp-{int(dead.stdout)}-abc"
    stale.mkdir(parents=True)
    (stale / "tensors.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / "delta" / f".tmp-{os.getpid()}-xyz"   # a write in progress in a live process
    live.mkdir()
    assert store.load("delta", spec) is None                 # nothing half-written is ever read
    store.save("delta", {"task": "cr"}, {"w": torch.ones(2)}, {})
    assert not stale.exists() and live.exists()              # swept on the next write; the live one is kept
    assert store.sweep() == 0
    live.rmdir()


def test_stale_entries_are_listed_and_pruned(tmp_path, monkeypatch):
    from skillgraft import cache

    store = Store(tmp_path)
    store.save("mask", {"task": "mr"}, {"w": torch.arange(3)}, {})
    monkeypatch.setattr(cache, "code_hash", lambda package_dir=None: "new code")
    store.save("mask", {"task": "cr"}, {"w": torch.arange(3)}, {})
    assert sorted(e["stale"] for e in store.entries()) == [False, True]
    assert store.prune() > 0
    assert [e["stale"] for e in store.entries()] == [False] and store.load("mask", {"task": "cr"}) is not None


def test_a_concurrent_writer_that_lands_first_is_kept(tmp_path, monkeypatch):
    """Two processes finishing the same key: the second rename fails on the first's entry,
    which stays in place, whole; no temporary folder is left."""
    import os

    store = Store(tmp_path)
    spec = {"task": "mr", "seed": 13}
    first = store.save("delta", spec, {"w": torch.ones(3)}, {"who": "first"})
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == first.path:
            raise OSError(39, "Directory not empty")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    second = store.save("delta", spec, {"w": torch.ones(3)}, {"who": "second"})
    assert second.meta == {"who": "first"} and store.load("delta", spec).meta == {"who": "first"}
    assert sorted(p.name for p in (tmp_path / "delta").iterdir()) == [first.path.name]


def test_tensors_come_back_in_the_order_they_were_saved(tmp_path):
    """safetensors keeps names sorted ("layers.10" before "layers.2"); a loaded delta must iterate
    its parameters as the computed one did, since seeded draws over them (random masks, the
    initial scores of a graft) follow that order."""
    store = Store(tmp_path)
    names = ["layers.2.q", "layers.10.q", "layers.1.v", "layers.1.a"]
    store.save("delta", {"x": 1}, {n: torch.full((2,), float(i)) for i, n in enumerate(names)})
    loaded = store.load("delta", {"x": 1}).tensors
    assert list(loaded) == names and [float(t[0]) for t in loaded.values()] == [0.0, 1.0, 2.0, 3.0]
