"""What the first code cell of every chapter does, in one call: ``setting = notebook.setup(globals())``.

It quiets warnings and progress bars that would clutter a committed notebook, sets the
display of tables (three decimals, "—" for a missing value) and of figures (SVG, with
text kept as text and stable ids, so a rerun gives the same figure back and it stays sharp
on any screen), and gathers the parameter cell's names into a :class:`Setting`.
"""
from __future__ import annotations

import ast
import json
import re
import time
import warnings
from pathlib import Path
from typing import Mapping

# before the package's modules import tqdm.auto, which warns in a kernel without ipywidgets
warnings.filterwarnings("ignore", message="IProgress not found")

from .chapters import Setting  # noqa: E402

__all__ = ["setup", "elapsed", "show_figure", "say", "regime", "ran", "glue_verdicts", "glued_outputs", "glued", "glued_figure",
           "claims_matrix"]

_started: float | None = None
VERDICT_COLUMN = "all tasks"  # the claims × tasks matrix's last column: each claim's verdict over its tasks


def setup(namespace: Mapping[str, object]) -> Setting:
    """Prepare a chapter: ``namespace`` is the notebook's ``globals()`` after the parameter cell."""
    global _started
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import matplotlib
    import pandas as pd
    import transformers

    transformers.utils.logging.disable_progress_bar()
    pd.set_option("display.precision", 3)
    pd.set_option("styler.format.precision", 3)
    pd.set_option("styler.format.na_rep", "—")
    _missing_as_dash()
    _spaced_headers()
    _text_tables()
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "skillgraft"})
    from . import plots
    plots.book_style()
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("svg")
    except ImportError:  # outside IPython: figures are not displayed anyway
        pass
    _started = time.perf_counter()
    return Setting.from_params(**{k: v for k, v in dict(namespace).items() if not k.startswith("_")})


def _missing_as_dash() -> None:
    """A styled table's ``.format(...)`` shows a missing value as the option's "—" unless it
    names its own ``na_rep`` (pandas applies the option only to columns it formats itself)."""
    import pandas as pd
    from pandas.io.formats.style import Styler

    if getattr(Styler.format, "_skillgraft", False):
        return
    original = Styler.format

    def format(self, formatter=None, subset=None, na_rep=None, *args, **kwargs):
        if na_rep is None:
            na_rep = pd.get_option("styler.format.na_rep")
        return original(self, formatter, subset, na_rep, *args, **kwargs)

    format._skillgraft = True
    format.__doc__ = original.__doc__
    Styler.format = format


_HEADER = re.compile(r'(<th\b[^>]*class="(?:col_heading|index_name)[^"]*"[^>]*>)([^<]*)(</th>)')


def _spaced_headers() -> None:
    """A styled table shows its column and index names with spaces for underscores
    ("normalized recovery"), so that a narrow screen can wrap a header between its words;
    the frame's own names and the cells are left as they are."""
    from pandas.io.formats.style import Styler

    if getattr(Styler.to_html, "_skillgraft", False):
        return
    original = Styler.to_html

    def to_html(self, *args, **kwargs):
        html = original(self, *args, **kwargs)
        if html is None:  # written to a buffer: left as it is
            return html
        return _HEADER.sub(lambda m: m.group(1) + m.group(2).replace("_", " ") + m.group(3), html)

    to_html._skillgraft = True
    to_html.__doc__ = original.__doc__
    Styler.to_html = to_html


def _text_tables() -> None:
    """A styled table's plain-text form is the table as rendered (its formatted values, its
    hidden index hidden), not an object's address: nbval compares what the book shows."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from pandas.io.formats.style import Styler

    shell.display_formatter.formatters["text/plain"].for_type(Styler, lambda obj, p, cycle: p.text(
        obj.to_string(delimiter=" | ")))


def elapsed() -> float:
    """Seconds since :func:`setup`."""
    if _started is None:
        raise RuntimeError("notebook.setup() was not called")
    return time.perf_counter() - _started


def show_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` with its caption and alt text, and
    close it, so the cell does not show it a second time."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)


def say(markdown: str) -> None:
    """Show ``markdown`` (a paragraph a chapter's module wrote from its results) as text of the
    page; its plain-text form is the same text, so nbval compares it. An empty paragraph shows
    nothing (no empty output box)."""
    from IPython.display import display

    if not markdown.strip():
        return
    display({"text/markdown": markdown, "text/plain": markdown}, raw=True)


def regime(result, grafts_moved: bool = True) -> None:
    """Print the signatures of the paper's regime from a chapter's ``result`` (its ``regime`` and
    ``grafts`` tables): kept checkpoints that fit their train set, passes, steps on S, and how many
    grafts kept a mask other than the top-movement mask of their size."""
    r, g = result.regime, result.grafts
    print("every kept checkpoint fits its train set (loss <= 0.01, accuracy 1):", bool(r.fit.all()))
    print("every fine-tune ran at least 20 passes:", bool((r.total_passes >= 20).all()))
    print("every graft took at least 10 steps on S:", bool((g.steps >= 10).all()))
    if grafts_moved:
        print(f"grafts whose kept mask differs from the top-movement mask of its size: "
              f"{int((~g.equals_top_movement).sum())} of {len(g)}")


def ran(page: str | None = None) -> None:
    """Print how long the chapter took since :func:`setup` (warm: what this execution read or computed) and, for
    a book ``page``, what its defaults cost computed from nothing: the published steps it resolves, their
    recorded wall times summed (:func:`skillgraft.costs.page_cost`)."""
    print(f"this chapter ran in {elapsed() / 60:.1f} min "
          f"(fine-tuning, grafts and predictions come from the cache when their settings were computed before)")
    print(cost_sentence(page) if page else "", end="\n" if page else "")


def cost_sentence(page: str, root: str | Path | None = None) -> str:
    """What rerunning ``page``'s defaults costs from nothing, in words, from the published step costs; empty where
    nothing is published."""
    from .costs import page_cost
    from .published import Published, default_root

    root = Path(root) if root is not None else default_root()
    if root is None or not (root / "MANIFEST.json").is_file():
        return ""
    cost = page_cost(root, page)
    if cost is None:
        return ""
    layer = Published(root)
    where, threads = layer.manifest.get("machine", {}), layer.threads
    on = f"{where.get('cpu', 'a CPU')}, {threads} torch threads" if threads else "the machine that published them"
    n = cost["untimed"]
    untimed = f", {n} of which {'has' if n == 1 else 'have'} no recorded time" if n else ""
    chains = (f"; one chain, a fine-tune with the grafts and predictions made from it, took "
              f"{cost['chain_median'] / 60:.0f} min at the median and {cost['chain_max'] / 60:.0f} min at most "
              f"({cost['largest']})" if cost["chain_max"] == cost["chain_max"] else "")
    return (f"computed from nothing, its defaults cost {'at least' if n else 'about'} {cost['seconds'] / 3600:.1f} h of "
            f"compute ({on}): the summed recorded times of the {cost['steps']} published steps it resolves{untimed}"
            f"{chains}")


def glue_verdicts(claim: str, verdict: str, frame=None, by: str = "task") -> None:
    """Glue, not shown, ``claim``'s ``verdict`` and its verdict on each row of ``frame`` (a
    chapter's table by task, source or sequence; columns ``by`` and ``verdict``; its pooled row is
    left out: ``verdict`` is the claim's) under ``<claim>_matrix``, for the results page's
    claims × tasks matrix (:func:`claims_matrix`)."""
    from myst_nb import glue

    rows = [] if frame is None else [{"claim": claim, "task": str(t), "verdict": str(v)}
                                     for t, v in zip(frame[by], frame["verdict"]) if t != "pooled"]
    counts = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    rows.append({"claim": claim, "task": VERDICT_COLUMN, "verdict": str(verdict)})
    glue(f"{claim.lower()}_matrix", json.dumps(rows), display=False)
    glue(f"{claim.lower()}_tally", ", ".join(f"{v} {n}" for v, n in counts.items()) or "—", display=False)


def glue_robustness(rows: list[dict]) -> None:
    """Glue, not shown, a claim's rows of the robustness table (``robustness`` of its chapter module: its verdict
    under the primary rule and the reasonable alternatives) under ``<claim>_robustness``, for the results page
    (:func:`robustness_table`)."""
    from myst_nb import glue

    claim = rows[0]["claim"][:2].lower()
    glue(f"{claim}_robustness", json.dumps(rows), display=False)
    glue(f"{claim}_primary", rows[0]["headline"], display=False)


def robustness_table(root: str | Path | None = None):
    """Every claim's verdict under each analysis (:data:`skillgraft.verdicts.ANALYSES` and a claim's own
    alternatives), as the executed chapters glued them (:func:`glue_robustness`): one row per claim, one column
    per analysis, each cell the verdict with its estimate; and the notes, one per claim and analysis."""
    import pandas as pd

    from .chapters import CHAPTERS
    from .parameters import repo_root
    from .verdicts import ANALYSES

    folder = Path(root) if root is not None else repo_root() / "notebooks"
    rows = []
    for number, name in enumerate(CHAPTERS, start=1):
        rows += json.loads(glued(folder / f"{name}.ipynb", f"c{number}_robustness"))
    frame = pd.DataFrame(rows)
    frame["cell"] = [v if e == "—" else f"{v} ({e})" for v, e in zip(frame.verdict, frame.estimate)]
    order = list(ANALYSES) + [a for a in dict.fromkeys(frame.analysis) if a not in ANALYSES]
    table = frame.pivot(index="claim", columns="analysis", values="cell").reindex(columns=order).fillna("—")
    table.columns.name = None
    notes = frame[frame.note != ""][["claim", "analysis", "note"]].reset_index(drop=True)
    return table.reset_index(), notes


GLUE_PREFIX = "application/papermill.record/"  # the mime prefix myst_nb.glue(..., display=False) writes


def glued_outputs(path: str | Path) -> dict[str, dict]:
    """Every value glued in the executed notebook at ``path``: name -> its mime bundle, with the
    glue's mime prefix taken off (``text/plain``, ``image/svg+xml``, ...; a text split in lines joined)."""
    out = {}
    for cell in json.loads(Path(path).read_text()).get("cells", []):
        for output in cell.get("outputs", []):
            glued_as = output.get("metadata", {}).get("scrapbook")
            if glued_as:
                prefix = glued_as.get("mime_prefix") or GLUE_PREFIX
                out[glued_as["name"]] = {k[len(prefix):] if k.startswith(prefix) else k: "".join(v) if isinstance(v, list)
                                         else v for k, v in output.get("data", {}).items()}
    return out


def glued(path: str | Path, name: str):
    """The value glued under ``name`` in the executed notebook at ``path``, read back from its
    plain-text form (a string, a number, a list); a ``KeyError`` names what is missing."""
    data = glued_outputs(path).get(name, {})
    if "text/plain" not in data:
        raise KeyError(f"{Path(path).name} glues no {name!r}: execute it first (make book)")
    return ast.literal_eval(data["text/plain"])


def glued_figure(path: str | Path, name: str):
    """The figure glued under ``name`` in the executed notebook at ``path``, as an SVG image to
    display or glue again (a page pastes another notebook's figure this way: MyST-NB pastes an
    SVG across pages only as its text form)."""
    from IPython.display import SVG

    svg = glued_outputs(path).get(name, {}).get("image/svg+xml")
    if svg is None:
        raise KeyError(f"{Path(path).name} glues no figure {name!r}: execute it first (make book)")
    return SVG(data=svg)


def claims_matrix(root: str | Path | None = None):
    """Every claim's verdict on each task (source for C3, sequence for C5) and its own, as the
    executed chapters glued them (:func:`glue_verdicts`): columns claim, task, verdict; the pooled
    verdicts (column :data:`VERDICT_COLUMN`) last."""
    import pandas as pd

    from .chapters import CHAPTERS
    from .parameters import repo_root

    folder = Path(root) if root is not None else repo_root() / "notebooks"
    rows = []
    for number, name in enumerate(CHAPTERS, start=1):
        rows += json.loads(glued(folder / f"{name}.ipynb", f"c{number}_matrix"))
    frame = pd.DataFrame(rows, columns=["claim", "task", "verdict"])
    pooled = frame.task == VERDICT_COLUMN
    return pd.concat([frame[~pooled], frame[pooled]], ignore_index=True)
