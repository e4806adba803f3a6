"""Progress a person can follow while a chapter computes, shown by ``skillgraft run`` and
``skillgraft book`` on their terminal and never written into a notebook.

The kernel that executes a chapter is another process. When the environment variable
``SKILLGRAFT_PROGRESS`` names a file, the lab and its loops write one JSON line there (the
current stage: which fine-tune, localization or prediction, how many of how many steps),
replacing the previous one; the command that started the kernel reads it (:class:`Watcher`).
Without the variable every call here returns at once: nothing is written, nothing is shown.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from .files import atomic

ENV = "SKILLGRAFT_PROGRESS"
_stack: list[str] = []  # the stages entered, outermost first (a sequence stage inside its fine-tune)


def _path() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _write(path: Path, record: dict) -> None:
    try:
        with atomic(path) as tmp:  # the reader never sees half a line
            tmp.write_text(json.dumps(record))
    except OSError:  # progress is a courtesy: it never breaks a computation
        pass


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Name the work done inside (e.g. "fine-tuning mr, seed 13"); :func:`step` reports within it."""
    _stack.append(what)
    try:
        path = _path()
        if path is not None:
            _write(path, {"what": what, "done": 0, "total": 0, "unit": "", "time": time.time()})
        yield
    finally:
        _stack.pop()


def step(done: int, total: int, unit: str = "steps") -> None:
    """``done`` of ``total`` units of the current stage are finished."""
    path = _path()
    if path is None or not _stack:
        return
    _write(path, {"what": _stack[-1], "done": int(done), "total": int(total), "unit": unit, "time": time.time()})


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(record: dict) -> str:
    text = record["what"]
    if record.get("total"):
        text += f": {record['done']}/{record['total']} {record['unit']}"
    return text


class Watcher:
    """Shows what a chapter's kernel computes while ``with Watcher(name):`` runs: one line updated
    in place on a terminal, else (logs, CI) one line whenever a new stage starts."""

    def __init__(self, name: str, stream=None, interval: float = 0.5):
        self.name, self.stream, self.interval = name, stream or sys.stderr, interval
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop = threading.Event()
        self._saved: str | None = None
        self._seen = False

    def __enter__(self) -> "Watcher":
        fd, tmp = tempfile.mkstemp(prefix="skillgraft-progress-", suffix=".json")
        os.close(fd)
        self.path = Path(tmp)
        self._saved = os.environ.get(ENV)
        os.environ[ENV] = str(self.path)  # inherited by the kernel papermill starts
        self.start = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        computed = self._seen or bool(read(self.path))
        if self._saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._saved
        for p in (self.path, *self.path.parent.glob(f".{self.path.name}.*")):
            p.unlink(missing_ok=True)
        if self.tty:
            self.stream.write("\r\033[K")
        how = "" if computed else ", no fine-tune, graft or prediction computed (each was read)"
        self.stream.write(f"[{self.name}] {'failed after' if exc[0] else 'done in'} {time.time() - self.start:.0f} s{how}\n")
        self.stream.flush()

    def _run(self) -> None:
        last_what = None
        while not self._stop.wait(self.interval):
            record = read(self.path)
            if not record or "what" not in record:
                continue
            self._seen = True
            elapsed = time.time() - self.start
            if self.tty:
                line = f"[{self.name} {elapsed:4.0f} s] {describe(record)}"
                self.stream.write("\r\033[K" + line[:200])
                self.stream.flush()
            elif record["what"] != last_what:
                self.stream.write(f"[{self.name} {elapsed:4.0f} s] {record['what']}\n")
                self.stream.flush()
            last_what = record["what"]
