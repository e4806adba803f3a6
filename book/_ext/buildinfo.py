"""What a reader of an executable book wants to know about this copy of it.

- The footer of every page: the skillgraft version, the commit the book was built from
  (marked "+ local changes" when the working tree differed) and the build date.
- The page ``book/rerunning``: each chapter's parameter table, from its schema
  (:func:`skillgraft.parameters.schema`), so the page lists what the checks accept.
- The page ``book/execution``: per chapter, when its committed outputs were executed, how
  long that took and the parameters it ran with, read from the notebooks' papermill
  metadata at build time (so the page cannot disagree with the notebooks).
- The page ``book/reproductions``: the reproduction ledger (``results/REPRODUCED.json``) as
  :func:`skillgraft.reproduce.table` renders it, read at build time.
- The compendium's own source: an archive of the commit the book was built from (``git archive``:
  the package, the notebooks with their outputs, ``results/``), written beside the pages as
  ``_static/skillgraft-<commit>.tar.gz``; the pages that say ``<!-- source archive -->`` link it with
  its sha256, and ``<!-- commit -->`` becomes the full commit (the software citation carries it).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _version() -> str:
    text = (ROOT / "skillgraft" / "__init__.py").read_text()
    return next((line.split("=")[1].strip().strip("\"'") for line in text.splitlines()
                 if line.startswith("__version__")), "unknown")


def build_footer() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = " + local changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    return f"skillgraft {_version()} · built from commit {commit}{dirty} on {date} (UTC)"


def source_archive(folder: Path) -> dict | None:
    """The compendium at the built commit as ``folder/skillgraft-<commit>.tar.gz`` (``git archive``: every tracked
    file, so the source, the notebooks with their outputs and ``results/``), with its name, sha256 and commit; None
    outside a git checkout. Uncommitted changes are not in it (:func:`source_links` says so)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    name = f"skillgraft-{commit[:12]}.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("skillgraft-*.tar.gz"):  # earlier builds' commits: only this one ships
        if old.name != name:
            old.unlink()
    path = folder / name
    with open(path, "wb") as out:
        subprocess.run(["git", "archive", "--format=tar.gz", f"--prefix=skillgraft-{commit[:12]}/", commit], cwd=ROOT,
                       stdout=out, check=True)
    return {"name": name, "path": path, "commit": commit,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def source_links(archive: dict | None) -> str:
    """The sentence a page shows for ``<!-- source archive -->``: a link to the archive, its size and sha256."""
    if archive is None:
        return "(this copy of the book was built outside a git checkout: it carries no source archive)"
    note = (" It holds the commit; this copy of the book was built with local changes on top of it, which the "
            "archive does not hold." if archive["dirty"] else "")
    return (f'<a href="../_static/{archive["name"]}" download>{archive["name"]}</a> '
            f'({archive["bytes"] / 1e6:.1f} MB, sha256 `{archive["sha256"]}`): the compendium at commit '
            f'`{archive["commit"]}`, its package, notebooks with their outputs and published results.{note}')


def execution_table() -> str:
    rows = ["| chapter | executed (UTC) | duration | code cells | parameters changed from the defaults |",
            "|---|---|---|---|---|"]
    for path in [*sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ROOT / "book" / "answers.ipynb"]:
        nb = json.loads(path.read_text())
        pm = nb.get("metadata", {}).get("papermill", {})
        end, duration = pm.get("end_time"), pm.get("duration")
        when = end[:16].replace("T", " ") if end else "not executed"
        took = f"{duration / 60:.1f} min" if isinstance(duration, (int, float)) else "—"
        cells = sum(c["cell_type"] == "code" for c in nb["cells"])
        params = ", ".join(f"`{k}={v!r}`" for k, v in (pm.get("parameters") or {}).items()) or "none"
        rows.append(f"| {{doc}}`/{path.parent.name}/{path.stem}` | {when} | {took} | {cells} | {params} |")
    return "\n".join(rows) + "\n"


def parameter_table(chapter: str) -> str:
    """A chapter's parameters as its schema gives them (:func:`skillgraft.parameters.schema_table`)."""
    from skillgraft.parameters import schema_table

    return schema_table(ROOT / "notebooks" / f"{chapter}.ipynb") + "\n"


def _archive(app) -> dict | None:
    if not hasattr(app.env, "_skillgraft_archive"):
        app.env._skillgraft_archive = source_archive(Path(app.outdir).parent / "archive")
    return app.env._skillgraft_archive


def _source_read(app, docname: str, source: list[str]) -> None:
    if "<!-- source archive -->" in source[0] or "<!-- commit -->" in source[0]:
        archive = _archive(app)
        source[0] = source[0].replace("<!-- source archive -->", source_links(archive))
        source[0] = source[0].replace("<!-- commit -->", archive["commit"] if archive else "unknown")
    if docname == "book/execution":
        source[0] = source[0].replace("<!-- execution table -->", execution_table())
    if docname == "book/reproductions":
        from skillgraft import reproduce

        results = ROOT / "results"
        source[0] = source[0].replace("<!-- reproductions summary -->", reproduce.summary(results).rstrip(".") + ".")
        source[0] = source[0].replace("<!-- reproductions table -->", reproduce.table(results))
    if docname == "book/rerunning":
        source[0] = re.sub(r"<!-- parameters (\w+) -->", lambda m: parameter_table(m.group(1)), source[0])


def _page_context(app, pagename, templatename, context, doctree) -> None:
    footer = app.env.__dict__.setdefault("_skillgraft_footer", build_footer())
    context["theme_extra_footer"] = f"<p>{footer}</p>"


def _build_finished(app, exception) -> None:
    archive = getattr(app.env, "_skillgraft_archive", None) if app.env is not None else None
    if exception is None and archive is not None:
        target = Path(app.outdir) / "_static" / archive["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob("skillgraft-*.tar.gz"):  # an earlier build's archive is not this book's
            if old.name != target.name:
                old.unlink()
        shutil.copyfile(archive["path"], target)


def setup(app):
    app.connect("build-finished", _build_finished)
    app.connect("html-page-context", _page_context)
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
