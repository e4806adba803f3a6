"""Content-addressed store for expensive artifacts (deltas, masks, metrics).

An artifact's key is the sha256 of the canonical JSON of everything that produced it
(model, task, data seed, configs, package version) *and of the source of the code that
computes it* (:data:`CODE_MODULES`): a change to fine-tuning, localization or prediction
code misses the cache, while a change to plots, metrics or prose does not. An entry is a folder holding
``tensors.safetensors`` (optional) and ``meta.json``; ``meta.json`` records the spec and
the sha256 of the tensor file and the order of its tensors (a loaded delta iterates its
parameters as the computed one did: seeded draws over them depend on it). Entries are written to a temporary folder and renamed
into place, so a reader never sees half an entry; an entry whose checksum does not
match is logged, removed and recomputed, never used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__, assets

__all__ = ["Entry", "Store", "spec_key", "default_store"]

log = logging.getLogger(__name__)

TENSORS = "tensors.safetensors"
META = "meta.json"
TMP_PREFIX = ".tmp-"
# the modules whose code computes a stored artifact (data, models, prompts, grafting, fine-tuning,
# localization, and the lab that ties them); experiments, metrics, verdicts and plots only read artifacts
CODE_MODULES = ("assets", "tasks", "models", "prompt", "graft", "finetune", "localization", "lab")


@lru_cache(maxsize=None)
def code_hash(package_dir: str | None = None) -> str:
    """sha256 of the source of :data:`CODE_MODULES` in ``package_dir`` (default: this package)."""
    root = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in CODE_MODULES:
        digest.update(name.encode() + b"\0" + (root / f"{name}.py").read_bytes() + b"\0")
    return digest.hexdigest()


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return "nan"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


def spec_key(spec: dict) -> str:
    """sha256 of the canonical JSON of ``spec``, the package version and :func:`code_hash`."""
    canon = json.dumps({"spec": _jsonable(spec), "skillgraft": __version__, "code": code_hash()},
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass
class Entry:
    """A cached artifact: name-keyed tensors plus JSON metadata."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: Path | None = None


class Store:
    """A folder of entries, ``root/kind/key``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else assets.home() / "cache"

    def path(self, kind: str, spec: dict) -> Path:
        if not kind or "/" in kind or kind.startswith("."):
            raise ValueError(f"invalid artifact kind {kind!r}: a plain folder name such as 'delta' or 'mask'")
        return self.root / kind / spec_key(spec)

    def load(self, kind: str, spec: dict) -> Entry | None:
        """The entry for ``spec``, or None when absent or corrupted (a corrupted one is removed)."""
        from safetensors.torch import load_file

        path = self.path(kind, spec)
        if not path.is_dir():
            return None
        try:
            meta = json.loads((path / META).read_text())
            tensors = {}
            if meta.get("tensors_sha256") is not None:
                if assets.sha256_file(path / TENSORS) != meta["tensors_sha256"]:
                    raise ValueError("tensor file checksum mismatch")
                tensors = load_file(path / TENSORS)
                order = meta.get("order")  # the file keeps names sorted; give the tensors back as they were saved
                if order is not None:
                    tensors = {name: tensors[name] for name in order}
        except (OSError, ValueError, KeyError) as err:  # json.JSONDecodeError is a ValueError
            log.warning("cache entry %s is corrupted (%s); removing it and recomputing", path, err)
            shutil.rmtree(path, ignore_errors=True)
            return None
        return Entry(tensors=tensors, meta=meta["data"], path=path)

    def load_meta(self, kind: str, spec: dict) -> dict | None:
        """Only the JSON metadata of an entry (no tensor read, no checksum)."""
        try:
            return json.loads((self.path(kind, spec) / META).read_text())["data"]
        except (OSError, ValueError, KeyError):
            return None

    def save(self, kind: str, spec: dict, tensors: dict[str, torch.Tensor] | None = None,
             meta: dict | None = None) -> Entry:
        """Write an entry atomically (temporary folder, then rename)."""
        from safetensors.torch import save_file

        final = self.path(kind, spec)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.sweep(final.parent)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        try:
            digest = None
            if tensors:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / TENSORS)
                digest = assets.sha256_file(tmp / TENSORS)
            record = {"spec": _jsonable(spec), "skillgraft": __version__, "code": code_hash(), "tensors_sha256": digest,
                      "order": list(tensors) if tensors else None, "data": _jsonable(meta or {})}
            (tmp / META).write_text(json.dumps(record, sort_keys=True, indent=2))
            try:
                os.replace(tmp, final)
            except OSError:  # a concurrent writer's entry is in place: keep it (ours is identical by construction)
                if not (final / META).is_file():
                    raise
                record = json.loads((final / META).read_text())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Entry(tensors=dict(tensors or {}), meta=record["data"], path=final)

    def get_or_compute(self, kind: str, spec: dict,
                       compute: Callable[[], tuple[dict[str, torch.Tensor], dict]]) -> Entry:
        """Load the entry for ``spec``, or run ``compute() -> (tensors, meta)`` and store it."""
        entry = self.load(kind, spec)
        if entry is not None:
            log.info("cache hit: %s %s", kind, entry.path.name[:12])
            return entry
        tensors, meta = compute()
        return self.save(kind, spec, tensors, meta)

    def sweep(self, folder: Path | None = None) -> int:
        """Remove the temporary folders of writes that were killed (their process is gone);
        returns how many. Folders of live writers, in this process or another, are left."""
        removed = 0
        folders = [folder] if folder else [p for p in self.root.iterdir() if p.is_dir()] if self.root.exists() else []
        for parent in folders:
            for tmp in parent.glob(f"{TMP_PREFIX}*"):
                pid = tmp.name[len(TMP_PREFIX):].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
        return removed

    def entries(self) -> list[dict]:
        """Every stored entry: kind, key, size in bytes, and whether it is stale (made by other
        code or another version, so no key of this code can reach it)."""
        out = []
        for folder in sorted(self.root.glob("*/*")) if self.root.exists() else []:
            if not folder.is_dir() or folder.name.startswith(TMP_PREFIX):
                continue
            try:
                record = json.loads((folder / META).read_text())
            except (OSError, ValueError):
                record = {}
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            stale = record.get("code") != code_hash() or record.get("skillgraft") != __version__
            out.append({"kind": folder.parent.name, "key": folder.name, "bytes": size, "stale": stale})
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

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.exists() else 0

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_store() -> Store:
    """The store under the current cache root (``$SKILLGRAFT_HOME/cache``)."""
    return Store()
