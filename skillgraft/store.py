"""The store: content-addressed entries of the recipes' results (deltas, masks, predictions).

An entry lives at ``root/kind/key``, where ``key`` is its recipe's :attr:`~skillgraft.recipes.Recipe.key`
(the recipe, the package version and the source of the code that computes it). An entry is
a folder holding ``tensors.safetensors`` (optional) and ``meta.json``; ``meta.json`` records
the recipe, the modules whose code made it, the sha256, size and order of the tensors (a loaded
delta iterates its parameters as the computed one did: seeded draws over them depend on it),
and the stored entries it was computed from. Entries are written by the one atomic writer
(:func:`skillgraft.files.atomic`), so a reader never sees half an entry; temporary folders of
killed writes are swept; an entry is trusted only whole: one whose tensors are missing, cut
or do not match their checksum is logged, removed and recomputed, never used.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, assets
from .files import TMP_PREFIX, atomic, sweep_killed
from . import recipes
from .recipes import Recipe, jsonable, stored_inputs

__all__ = ["Entry", "Store", "default_store", "stale"]

log = logging.getLogger(__name__)

TENSORS = "tensors.safetensors"
META = "meta.json"


@dataclass
class Entry:
    """A stored artifact: name-keyed tensors plus JSON metadata."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: Path | None = None


class Store:
    """A folder of entries, ``root/kind/key``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else assets.home() / "cache"

    def path(self, recipe: Recipe) -> Path:
        if not recipe.kind:
            raise ValueError(f"{type(recipe).__name__} is computed in memory and never stored")
        return self.root / recipe.kind / recipe.key

    def _record(self, path: Path) -> dict | None:
        """The metadata record of a whole entry, or None (absent, or not whole: then it is removed)."""
        if not path.is_dir():
            return None
        try:
            record = json.loads((path / META).read_text())
            if record.get("tensors_sha256") is not None and (path / TENSORS).stat().st_size != record["tensors_bytes"]:
                raise ValueError("tensor file is missing or cut")
            return record
        except (OSError, ValueError, KeyError) as err:  # json.JSONDecodeError is a ValueError
            self._drop(path, err)
            return None

    @staticmethod
    def _drop(path: Path, err) -> None:
        log.warning("store entry %s is not whole (%s); removing it and recomputing", path, err)
        shutil.rmtree(path, ignore_errors=True)

    def load(self, recipe: Recipe) -> Entry | None:
        """The entry of ``recipe``, or None when absent or not whole (then it is removed)."""
        from safetensors.torch import load_file

        path = self.path(recipe)
        record = self._record(path)
        if record is None:
            return None
        tensors = {}
        if record.get("tensors_sha256") is not None:
            try:
                if assets.sha256_file(path / TENSORS) != record["tensors_sha256"]:
                    raise ValueError("tensor file checksum mismatch")
                tensors = load_file(path / TENSORS)
            except (OSError, ValueError) as err:
                self._drop(path, err)
                return None
            tensors = {name: tensors[name] for name in record["order"]}  # the file keeps names sorted
        return Entry(tensors=tensors, meta=record["data"], path=path)

    def load_meta(self, recipe: Recipe) -> dict | None:
        """Only the metadata of a whole entry (no tensor read, no checksum: the size is checked)."""
        record = self._record(self.path(recipe))
        return record["data"] if record is not None else None

    def save(self, recipe: Recipe, tensors: dict[str, torch.Tensor] | None = None, meta: dict | None = None) -> Entry:
        """Write the entry of ``recipe`` atomically; a concurrent writer's entry already in place is kept
        (it is identical by construction)."""
        from safetensors.torch import save_file

        final = self.path(recipe)
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_killed(final.parent)
        with atomic(final, folder=True, keep_existing=True) as tmp:
            digest = size = None
            if tensors:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / TENSORS)
                digest, size = assets.sha256_file(tmp / TENSORS), (tmp / TENSORS).stat().st_size
            record = {"recipe": type(recipe).__name__, "spec": recipe.spec(), "skillgraft": __version__,
                      "modules": sorted(set(recipe.code) | {"recipes"}), "code": recipes.code_hash(recipe.code),
                      "inputs": [f"{r.kind}/{r.key}" for r in stored_inputs(recipe)],
                      "tensors_sha256": digest, "tensors_bytes": size, "order": list(tensors) if tensors else None,
                      "data": jsonable(meta or {})}
            (tmp / META).write_text(json.dumps(record, sort_keys=True, indent=2))
        record = json.loads((final / META).read_text())  # ours, or a concurrent writer's kept in its place
        return Entry(tensors=dict(tensors or {}), meta=record["data"], path=final)

    def sweep(self) -> int:
        """Remove the temporary folders of writes that were killed (their process is gone); returns how many."""
        if not self.root.exists():
            return 0
        return sum(sweep_killed(p) for p in self.root.iterdir() if p.is_dir())

    def entries(self) -> list[dict]:
        """Every stored entry: kind, key, size in bytes, and whether it is stale: made by other code
        or another version, or from an entry that is (no key of this code can reach it)."""
        records, out = {}, []
        for folder in sorted(self.root.glob("*/*")) if self.root.exists() else []:
            if folder.is_dir() and not folder.name.startswith(TMP_PREFIX):
                try:
                    records[f"{folder.parent.name}/{folder.name}"] = json.loads((folder / META).read_text())
                except (OSError, ValueError):
                    records[f"{folder.parent.name}/{folder.name}"] = {}
        old = set(stale(records))
        for name in records:
            folder = self.root / name
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            kind, key = name.split("/")
            out.append({"kind": kind, "key": key, "bytes": size, "stale": name in old})
        return out

    def prune(self) -> int:
        """Remove stale entries and killed writes; returns the bytes freed."""
        freed = 0
        for e in self.entries():
            if e["stale"]:
                shutil.rmtree(self.root / e["kind"] / e["key"], ignore_errors=True)
                freed += e["bytes"]
        self.sweep()
        return freed

    def temporary_bytes(self) -> int:
        """Bytes in temporary folders: writes in progress, or killed ones not yet swept."""
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for tmp in self.root.glob(f"*/{TMP_PREFIX}*") for p in
                   ([tmp] if tmp.is_file() else tmp.rglob("*")) if p.is_file())

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def stale(records: dict[str, dict]) -> list[str]:
    """Names (``kind/key``) of entry records made by other code or another version, or made from
    such a record (no key of this code can reach them); an input absent from ``records`` is not stale."""
    memo: dict[str, bool] = {}

    def is_stale(name: str) -> bool:
        if name not in memo:
            rec = records.get(name)
            if rec is None:  # an input no longer stored: what was made from it is still reachable
                return False
            memo[name] = True  # (a cycle cannot happen; this guards a hand-edited store)
            memo[name] = (rec.get("skillgraft") != __version__ or "modules" not in rec
                          or rec.get("code") != _current_code(rec["modules"])
                          or any(is_stale(i) for i in rec.get("inputs", [])))
        return memo[name]
    return sorted(n for n in records if is_stale(n))


def _current_code(modules: list[str]) -> str | None:
    try:
        return recipes.code_hash(tuple(m for m in modules if m != "recipes"))
    except OSError:  # a module that no longer exists
        return None


def default_store() -> Store:
    """The store under the current cache root (``$SKILLGRAFT_HOME/cache``), or ``$SKILLGRAFT_STORE``."""
    return Store(os.environ.get("SKILLGRAFT_STORE") or None)
