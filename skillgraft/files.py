"""The one atomic writer: a file or a folder appears whole under its name, or not at all.

Everything the package writes that a reader may open while it is written (the store's
entries, masks, fetched assets, progress records) goes through :func:`atomic`: the content
is made under a temporary name beside the target (``.tmp-<pid>-…``) and renamed into place.
A killed writer leaves only its temporary name behind; :func:`sweep_killed` removes those
whose process is gone. :func:`exclusive` lets one of several processes build an entry that
the others then find done (fetching the same asset at once).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["TMP_PREFIX", "atomic", "exclusive", "sweep_killed"]

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic(final: str | Path, folder: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary path beside ``final`` (a folder with ``folder``) to write into; renamed to
    ``final`` when the block succeeds, removed otherwise. With ``keep_existing``, a ``final``
    that another writer put in place first is kept (the rename of a folder onto a non-empty
    one fails) and ours is dropped."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{os.getpid()}-{final.name[:40]}-"
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix))
    else:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=prefix, suffix=final.suffix)  # the same kind of file
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not (keep_existing and final.exists()):
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if absent) for the block: a second process,
    or thread, asking for it waits until the first is done. The lock is ``flock`` on the folder
    itself, so nothing is left behind, and the system drops it when its holder dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_killed(folder: Path) -> int:
    """Remove the temporary files and folders of killed writers in ``folder`` (their process is
    gone); those of live writers, in this process or another, are left. Returns how many."""
    removed = 0
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*"):
        pid = tmp.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed += 1
    return removed
