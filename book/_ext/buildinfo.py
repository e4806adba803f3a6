"""What a reader of an executable book wants to know about this copy of it.

- The footer of every page: the skillgraft version, the commit the book was built from
  (marked "+ local changes" when the working tree differed) and the build date.
- The page ``book/rerunning``: each chapter's parameter table, from its schema
  (:func:`skillgraft.parameters.schema`), so the page lists what the checks accept.
- The page ``book/execution``: per chapter, when its committed outputs were executed, how
  long that took and the parameters it ran with, read from the notebooks' papermill
  metadata at build time (so the page cannot disagree with the notebooks).
"""
from __future__ import annotations

import datetime as dt
import json
import re
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


def _source_read(app, docname: str, source: list[str]) -> None:
    if docname == "book/execution":
        source[0] = source[0].replace("<!-- execution table -->", execution_table())
    if docname == "book/rerunning":
        source[0] = re.sub(r"<!-- parameters (\w+) -->", lambda m: parameter_table(m.group(1)), source[0])


def _page_context(app, pagename, templatename, context, doctree) -> None:
    footer = app.env.__dict__.setdefault("_skillgraft_footer", build_footer())
    context["theme_extra_footer"] = f"<p>{footer}</p>"


def setup(app):
    app.connect("html-page-context", _page_context)
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
