"""Published results: the book's evidence, in the repository, read where the local store has nothing.

A fine-tuned δ is model-sized, but what a chapter shows comes from small things: per-example
probabilities, masks as positions, histories, metadata. The published layer (``results/`` at the
repository root) holds, for every stored recipe the book's chapters resolve, its store entry
*without model-sized tensors* (a fine-tune keeps its history and regime, not δ)::

    results/
    ├── MANIFEST.json                 what is published: each entry's file, sha256 and recipe; the thread
    │                                 count and machine it was computed on; the chapters' parameters
    └── <kind>/<key>-<sha8>.json.gz   one entry: its store record (recipe, spec, code, inputs, metadata),
                                      its tensors (int32 where exact, base64) and its provenance

A lab resolves a recipe from memory, then the local store, then this layer, then by computing
(:meth:`skillgraft.lab.Lab.resolve`). Entries are keyed by the store's keys, so an entry made by
other code is never served. On the CPU a key records torch's thread count
(:class:`skillgraft.recipes.Env`); a lab on a machine with another count looks entries up under the
count they were published with (:func:`with_threads`), so a fresh clone on any CPU reads them: its
numbers are those of that thread count. A lab on a GPU (thread count 0) computes.

An entry whose file is missing, cut or altered (its sha256 differs from the manifest's) is refused
with its path and never used; the lab then computes. :func:`write` replaces the layer in one step:
new files first, the manifest last (atomically), old files removed after, so a killed publish
leaves the previous layer whole.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .files import TMP_PREFIX, atomic
from .recipes import Env, Recipe
from .store import Entry, Store, stale

COSTS = ".sweep-costs.jsonl"  # beside the store's entries: one line per computed step and its wall time (Lab)

__all__ = ["FORMAT", "MANIFEST", "Published", "PublishReport", "default_root", "with_threads", "write",
           "machine"]

log = logging.getLogger(__name__)

FORMAT = "skillgraft.results/1"
MANIFEST = "MANIFEST.json"
HEAVY = ("delta",)  # kinds whose tensors are model-sized: published without them (metadata only)


def default_root() -> Path | None:
    """``$SKILLGRAFT_RESULTS`` (a folder, or ``off``), else ``results/`` beside the package's source."""
    env = os.environ.get("SKILLGRAFT_RESULTS")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none", "no") else Path(env)
    return Path(__file__).resolve().parents[1] / "results"


def machine() -> dict:
    """The machine an entry was computed on, as far as it decides the bits: CPU model and torch, and the numerics
    fingerprint with what stands beside it (:func:`skillgraft.numerics.describe`: vendor, torch's CPU capability,
    BLAS)."""
    from .numerics import describe

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "torch": torch.__version__, **describe()}


def with_threads(recipe, threads: int):
    """``recipe`` with every :class:`Env` in it (nested recipes included) at ``threads`` torch threads."""
    if isinstance(recipe, Env):
        return dataclasses.replace(recipe, threads=threads)
    if isinstance(recipe, tuple):
        return tuple(with_threads(r, threads) for r in recipe)
    if isinstance(recipe, Recipe) and dataclasses.is_dataclass(recipe):
        changes = {f.name: with_threads(getattr(recipe, f.name), threads) for f in dataclasses.fields(recipe)
                   if isinstance(getattr(recipe, f.name), (Env, Recipe, tuple))}
        return dataclasses.replace(recipe, **changes) if changes else recipe
    return recipe


# ---------------------------------------------------------------------------- entry files
def _encode(tensors: dict[str, torch.Tensor]) -> dict:
    out = {}
    for name, t in tensors.items():
        a = t.detach().cpu().numpy()
        small = a.dtype == np.int64 and (a.size == 0 or (a.min() >= -2**31 and a.max() < 2**31))
        stored = a.astype(np.int32) if small else a
        out[name] = {"dtype": str(a.dtype), "stored": str(stored.dtype), "shape": list(a.shape),
                     "data": base64.b64encode(np.ascontiguousarray(stored).tobytes()).decode()}
    return out


def _decode(tensors: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        a = np.frombuffer(base64.b64decode(t["data"]), dtype=t["stored"]).reshape(t["shape"]).astype(t["dtype"])
        out[name] = torch.from_numpy(a.copy())
    return out


def _entry_bytes(record: dict, tensors: dict[str, torch.Tensor], provenance: dict) -> bytes:
    body = {"format": FORMAT, "record": record, "tensors": _encode(tensors), "provenance": provenance}
    # mtime=0: the same entry gives the same bytes, so a republish of unchanged results changes no file
    return gzip.compress(json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), mtime=0)


# ---------------------------------------------------------------------------- reading
class Published:
    """A published layer (read-only): entries by key, checked against the manifest's sha256."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        self.manifest = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
        if self.manifest.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{path} is of format {self.manifest.get('format')!r}; this code reads {FORMAT!r}")
        self.entries: dict[str, dict] = self.manifest.get("entries", {})
        self.threads: int | None = self.manifest.get("threads")
        self._bodies: dict[str, dict | None] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, recipe: Recipe, threads: int) -> str:
        """``kind/key`` under which ``recipe`` is published, for a lab with ``threads`` (0: a GPU)."""
        if threads and self.threads and threads != self.threads:
            recipe = with_threads(recipe, self.threads)
        return f"{recipe.kind}/{recipe.key}"

    def body(self, name: str) -> dict | None:
        """The checked content of entry ``name`` (``kind/key``), or None: absent, or refused (logged with its path)."""
        if name not in self._bodies:
            self._bodies[name] = self._read(name)
        return self._bodies[name]

    def _read(self, name: str) -> dict | None:
        info = self.entries.get(name)
        if info is None:
            return None
        path = self.root / info["file"]
        try:
            data = path.read_bytes()
            got = hashlib.sha256(data).hexdigest()
            if got != info["sha256"]:
                raise ValueError(f"sha256 {got} is not the manifest's {info['sha256']}")
            return json.loads(gzip.decompress(data))
        except (OSError, ValueError, EOFError) as err:  # zlib.error and JSON errors are ValueErrors
            log.warning("published entry %s is refused (%s); it is not used", path, err)
            return None

    def load(self, recipe: Recipe, threads: int) -> Entry | None:
        """The whole entry of ``recipe`` (tensors and metadata), or None (absent, refused, or
        published without its model-sized tensors)."""
        body = self.body(self.name(recipe, threads))
        if body is None or not body["record"].get("complete", True):
            return None
        return Entry(tensors=_decode(body["tensors"]), meta=body["record"]["data"], path=self.root)

    def load_meta(self, recipe: Recipe, threads: int) -> dict | None:
        body = self.body(self.name(recipe, threads))
        return body["record"]["data"] if body is not None else None

    def claimed(self) -> set[str]:
        """The entries some book page used when it was published (the others came from ``publish --stored``)."""
        return {e for page in self.manifest.get("chapters", {}).values() for e in page.get("entries", [])}

    def check(self) -> tuple[list[str], list[str]]:
        """(refused, stale): entries whose file fails its checksum, and entries whose code is no
        longer this package's (or that were made from such an entry): no key of this code reaches them."""
        refused = [n for n in self.entries if self.body(n) is None]
        return refused, stale({n: self.body(n)["record"] for n in self.entries if n not in refused})


# ---------------------------------------------------------------------------- writing
@dataclass
class PublishReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: int = 0
    bytes: int = 0

    def summary(self) -> str:
        return (f"published {self.kept + len(self.added) + len(self.replaced)} entries ({self.bytes / 1e6:.2f} MB): "
                f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.dropped)} dropped, "
                f"{self.kept} unchanged")


def write(root: str | Path, recipes_used: dict[str, Recipe], store: Store, previous: Published | None,
          threads: int, chapters: dict[str, dict]) -> PublishReport:
    """Publish the entries of ``recipes_used`` (``kind/key`` -> recipe, keyed for ``threads``) into
    ``root``, each from the local store or, failing that, from ``previous`` (the layer there now),
    and record ``chapters`` (name -> the parameters they were resolved with). Entries no longer
    used are dropped. The manifest is replaced last and atomically: a killed publish leaves the
    previous layer whole."""
    root = Path(root)
    report, entries = PublishReport(), {}
    old = previous.entries if previous is not None else {}
    seconds = _step_seconds(store)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    where = machine()
    for name in sorted(recipes_used):
        recipe = recipes_used[name]
        kept = not hasattr(recipe, "spec")  # an entry of a page not republished: copied as published
        entry = None if kept else store.load(recipe)
        if entry is not None:
            record = json.loads((entry.path / "meta.json").read_text())
            heavy = recipe.kind in HEAVY
            record["complete"] = not heavy
            for k in ("tensors_sha256", "tensors_bytes"):
                record.pop(k, None)
            made = datetime.datetime.fromtimestamp((entry.path / "meta.json").stat().st_mtime, datetime.timezone.utc)
            provenance = {"recipe": record["recipe"], "code": record["code"], "skillgraft": __version__,
                          "threads": threads, **where, "computed": made.replace(microsecond=0).isoformat()}
            data = _entry_bytes(record, {} if heavy else entry.tensors, provenance)
        elif previous is not None and previous.body(name) is not None:
            data = (previous.root / old[name]["file"]).read_bytes()
        else:
            raise RuntimeError(f"{recipe.label()} ({name}) is neither in the local store nor published; "
                               "compute it first (the chapters or `skillgraft sweep`)")
        digest = hashlib.sha256(data).hexdigest()
        file = f"{name}-{digest[:8]}.json.gz"
        if not (root / file).is_file() or hashlib.sha256((root / file).read_bytes()).hexdigest() != digest:
            with atomic(root / file) as tmp:
                tmp.write_bytes(data)
        described = ({k: old[name][k] for k in ("recipe", "label")} if kept and name in old
                     else {"recipe": getattr(recipe, "recipe_name", type(recipe).__name__), "label": recipe.label()})
        entries[name] = {"file": file, "sha256": digest, "bytes": len(data), **described}
        cost = seconds.get(name.split("/", 1)[1], old.get(name, {}).get("seconds"))
        if cost is not None:  # the step's wall time, where it was computed (recorded now or when first published)
            entries[name]["seconds"] = cost
        report.bytes += len(data)
        if name not in old:
            report.added.append(name)
        elif old[name]["sha256"] != digest:
            report.replaced.append(name)
        else:
            report.kept += 1
    report.dropped = sorted(set(old) - set(entries))
    manifest = {"format": FORMAT, "skillgraft": __version__, "threads": threads, "machine": where,
                "published": now, "chapters": chapters, "entries": entries}
    unchanged = previous is not None and all(previous.manifest.get(k) == v for k, v in manifest.items()
                                             if k != "published")
    if not unchanged:  # an idempotent publish leaves the manifest, its date included, as it was
        with atomic(root / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, sort_keys=True, indent=1))
    keep = {root / e["file"] for e in entries.values()}
    for path in root.glob("*/*.json.gz"):  # files of dropped or replaced entries, and of killed publishes
        if path not in keep:
            path.unlink()
    for path in root.glob(f"**/{TMP_PREFIX}*"):
        path.unlink(missing_ok=True)
    return report


def cost_lines(store_root: str | Path) -> list[dict]:
    """The cost record beside a store (:data:`COSTS`): one dict per computed step, in the order
    written; a line cut by a killed writer is skipped."""
    path = Path(store_root) / COSTS
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _step_seconds(store: Store) -> dict[str, float]:
    """key -> wall seconds of each step computed into ``store`` (its cost record, the latest line per
    key), so that the published layer keeps what its steps cost after the machine is gone."""
    return {row["key"]: round(float(row["seconds"]), 1) for row in cost_lines(store.root)
            if "key" in row and "seconds" in row}
