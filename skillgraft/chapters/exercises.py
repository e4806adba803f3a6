"""The teaching page's exercises, run as written: their commands, and what each run measured.

Each exercise of ``book/teaching.md`` is a ``sphinx-exercise`` object with a label
(``ex-1-4``) and one ``skillgraft run`` command. :func:`exercises` reads them from the page
itself, so the command a student copies is the one that was run; :func:`parameters`
turns a command into the chapter's full parameters (checked as the CLI checks them), and
:func:`measured` states in one sentence what the run gave, for the solution to glue.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from . import CHAPTERS

__all__ = ["Exercise", "exercises", "parameters", "run", "measured", "previous_minutes", "fingerprint", "stale",
           "freshness", "book_pages", "FINGERPRINT"]

FINGERPRINT = "answers_fingerprint"  # the glue name of :func:`fingerprint` on the answers page

_BLOCK = re.compile(r":::\{exercise\}[^\n]*\n:label: (ex-\d+-\d+)\n(.*?)\n:::", re.S)
_COMMAND = re.compile(r"```bash\n(skillgraft run [^\n]+)\n```")


@dataclass(frozen=True)
class Exercise:
    label: str      # "ex-1-4"
    command: str    # the one command of the exercise, as printed on the page
    chapter: str    # notebook name, e.g. "01_single_task_grafting"
    given: dict     # the parameters the command sets

    @property
    def key(self) -> str:
        """The glue name of its measured answer: ``ex_1_4``."""
        return self.label.replace("-", "_")


def exercises(page: str | Path) -> list[Exercise]:
    """The exercises of the teaching page, in order, each with its one command parsed (by the
    command line's own arguments, so that a command the page shows is one `skillgraft run` accepts)."""
    import argparse

    from .. import parameters as params_

    parser = argparse.ArgumentParser(prog="skillgraft run")
    params_.add_run_arguments(parser)
    out = []
    for label, body in _BLOCK.findall(Path(page).read_text()):
        commands = _COMMAND.findall(body)
        if len(commands) != 1:
            raise ValueError(f"exercise {label} must show exactly one `skillgraft run` command, found {len(commands)}")
        argv = shlex.split(commands[0])[1:]  # without "skillgraft"
        if argv[:1] != ["run"]:
            raise ValueError(f"exercise {label}: its command must be `skillgraft run ...`, got {commands[0]!r}")
        args = parser.parse_args(argv[1:])
        given = params_.parse_params(args.param or [], args.file or [])
        out.append(Exercise(label, commands[0], params_.resolve_notebook(args.notebook).stem, given))
    if not out:
        raise ValueError(f"{page} holds no exercise with a label")
    return out


def parameters(ex: Exercise) -> dict:
    """The chapter's full parameters for ``ex``: its notebook's defaults and what the command sets
    (checked as ``skillgraft run`` checks them)."""
    from .. import parameters as params_

    path = params_.resolve_notebook(ex.chapter)
    params_.check_parameters(path, ex.given)
    return {**params_.notebook_parameters(path), **ex.given}


def run(ex: Exercise):
    """The chapter's result for ``ex`` (computed through the store, like the command)."""
    return CHAPTERS[ex.chapter].run(parameters(ex))


def previous_minutes(notebook: str | Path) -> dict[str, float]:
    """The minutes each exercise's run took, as glued by the last execution of the answers
    notebook (``{key}_minutes``): kept for an exercise whose results a later execution only
    read from the store, so the page states the time of the run that computed them."""
    from ..notebook import glued_outputs

    path = Path(notebook)
    if not path.is_file():
        return {}
    out = {}
    for name, data in glued_outputs(path).items():
        if name.endswith("_minutes"):
            try:
                out[name[: -len("_minutes")]] = float(data.get("text/plain", "").strip("'\""))
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------- freshness
def book_pages() -> tuple[Path, Path]:
    """The book's own teaching page and the answers notebook that measures its exercises: what
    :func:`stale` and :func:`freshness` compare by default (the staleness guard, the results page)."""
    from ..parameters import repo_root

    return repo_root() / "book" / "teaching.md", repo_root() / "book" / "answers.ipynb"


def _keyed_modules() -> tuple[str, ...]:
    """Every package module a stored step's key covers (the union over the recipe classes)."""
    from .. import recipes

    todo, modules = list(recipes.Recipe.__subclasses__()), set()
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.kind:
            modules |= set(cls.code)
    return tuple(sorted(modules))


def fingerprint(page: str | Path, only: Iterable[str] | None = None) -> dict:
    """What the measured answers rest on: each exercise's command and its chapter's full parameters,
    and what every stored step is keyed by besides them (the package version, the source of every
    module a key covers); with ``only``, of those exercises alone (the ones a run executed). The answers
    page glues it when executed; :func:`stale` compares it with now."""
    from .. import __version__, recipes

    only = None if only is None else set(only)
    return {"skillgraft": __version__, "code": recipes.code_hash(_keyed_modules()),
            "exercises": {e.label: {"command": e.command, "parameters": recipes.jsonable(parameters(e))}
                          for e in exercises(page) if only is None or e.label in only}}


def stale(page: str | Path | None = None, notebook: str | Path | None = None) -> list[str]:
    """Why the answers page ``notebook`` is older than what the teaching ``page`` cites from it (an empty
    list: it is not): an exercise added, dropped, or run with other parameters than its command and its
    chapter's defaults give now, or steps keyed by other code. By default the book's own pair
    (:func:`book_pages`). Seconds, no model."""
    return [reason for _, reason in _stale(*_pair(page, notebook))]


def _pair(page: str | Path | None, notebook: str | Path | None) -> tuple[Path, Path]:
    """``(page, notebook)``, each missing one the book's own (:func:`book_pages`)."""
    own = book_pages()
    return Path(page or own[0]), Path(notebook or own[1])


def _stale(page: str | Path, notebook: str | Path) -> list[tuple[str | None, str]]:
    """:func:`stale`'s reasons, each with the exercise it concerns (None: the whole page)."""
    import ast

    from ..notebook import glued_outputs

    rerun = "`make answers` executes it again"
    bundle = glued_outputs(notebook).get(FINGERPRINT, {}) if Path(notebook).is_file() else {}
    if "text/plain" not in bundle:
        return [(None, f"{notebook} glues no {FINGERPRINT}: it was executed before its freshness was recorded; {rerun}")]
    then, now = ast.literal_eval(bundle["text/plain"]), fingerprint(page)
    if isinstance(then, str):
        then = json.loads(then)
    problems = []
    if then.get("skillgraft") != now["skillgraft"] or then.get("code") != now["code"]:
        problems.append((None, f"{notebook}: executed with other code than this (skillgraft {then.get('skillgraft')}, code "
                        f"{str(then.get('code'))[:12]}; now {now['skillgraft']}, {now['code'][:12]}): every "
                        f"exercise's steps have other keys now; {rerun}"))
    had, has = then.get("exercises", {}), now["exercises"]
    for label in sorted(set(has) - set(had)):
        problems.append((label, f"{label}: not on the answers page (a new exercise); {rerun}"))
    for label in sorted(set(had) - set(has)):
        problems.append((label, f"{label}: on the answers page but no longer on the teaching page; {rerun}"))
    for label in sorted(set(had) & set(has)):
        a, b = had[label]["parameters"], has[label]["parameters"]
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            problems.append((label, f"{label}: run with other parameters than its command gives now "
                                    f"({', '.join(changed)}); {rerun}"))
    return problems


def freshness(page: str | Path | None = None, notebook: str | Path | None = None) -> str:
    """A sentence for a page that cites the answers ``notebook``: empty when it is fresh, else how many
    exercises it answered with other code or parameters than now (:func:`stale`) and the command that
    measures them again. By default the book's own pair (:func:`book_pages`). Seconds, no model."""
    page, notebook = _pair(page, notebook)
    labels = [label for label, _ in _stale(page, notebook)]
    if not labels:
        return ""
    total = len(exercises(page))
    # None: the whole page (no record, or other code)
    which = f"all {total} exercises" if None in labels else f"{len(set(labels))} of {total} exercises"
    return (f"**Measured by an earlier run.** The answers page was executed with other code or parameters than "
            f"this book's for {which}: what follows is what that run measured, not necessarily what the "
            f"commands measure now. `make answers` measures them again.")


# ---------------------------------------------------------------------------- what a run measured
def _acc(frame, **where) -> float:
    rows = frame
    for k, v in where.items():
        rows = rows[rows[k] == v]
    return float(rows.accuracy.mean())


def _single_task(result, p: dict) -> str:
    res, grafts = result.results, result.grafts
    parts = [f"zero-shot {_acc(res, variant='zero-shot'):.3f}, fine-tuned {_acc(res, variant='fine-tuned'):.3f}"]
    for _, g in grafts.iterrows():
        rows = res[(res.start == g.start) & ((res.target == g.target) | (np.isnan(g.target) & res.target.isna()))]
        name = "grown graft" if g.start == "grow" else f"graft refined at {g.target:.0e}"
        parts.append(f"{name}: {g['size']:,} entries ({g.added:,} in, {g.removed:,} out of its {g.base_size:,}-entry "
                     f"patch{', equal to top movement' if g.equals_top_movement else ''}), accuracy "
                     f"{_acc(rows, variant='graft'):.3f} against top-movement {_acc(rows, variant='top-movement'):.3f} "
                     f"and random {_acc(rows, variant='random'):.3f} masks of its size")
    return "; ".join(parts)


def _calibration(result, p: dict) -> str:
    from . import calibration as ch

    reduction, gap = ch.intervals(result, n_bins=p["ece_bins"])
    verdict = ch.rule(reduction, gap)
    res = result.results.groupby("variant")[["accuracy", "ece"]].mean()
    temp = result.results[result.results.variant == "fine-tuned+TS"].temperature.mean()
    return (f"fine-tuned accuracy {res.loc['fine-tuned', 'accuracy']:.3f}, ECE {res.loc['fine-tuned', 'ece']:.3f}; "
            f"graft accuracy {res.loc['graft', 'accuracy']:.3f}, ECE {res.loc['graft', 'ece']:.3f}; fitted temperature "
            f"{temp:.2f}; {verdict.summary()}; verdict: {verdict.verdict}")


def _ood(result, p: dict) -> str:
    from . import ood as ch

    overall, per = ch.intervals(result)
    verdict = ch.rule(overall, per)
    res = result.results
    ind = res[res.in_distribution].groupby("variant").accuracy.mean()
    return (f"in distribution: fine-tuned {ind['fine-tuned']:.3f}, graft {ind['graft']:.3f}; "
            f"{verdict.summary()}; verdict: {verdict.verdict}")


def _multitask(result, p: dict) -> str:
    from . import multitask as ch

    verdict = ch.verdict(result)
    pairs = ", ".join(f"{r.pair} {r.overlap:.1%}" for r in result.similarity.itertuples())
    alt = ""
    if result.alt_overlap is not None:
        off = ~np.eye(len(result.alt_overlap), dtype=bool)
        alt = f"; from the {result.alt_base} base patch the mean overlap is {result.alt_overlap.values[off].mean():.1%}"
    return f"pair overlaps {pairs}; {verdict.summary()}{alt}; verdict: {verdict.verdict}"


def _continual(results, p: dict) -> str:
    from . import continual as ch

    verdict = ch.verdict(results)
    parts = []
    for r in results:
        s = r.summary.set_index("method")
        parts.append(f"{ch.name(r)}: " + ", ".join(
            f"{m}: average accuracy {s.loc[m, 'average_accuracy']:.3f}, backward transfer "
            f"{s.loc[m, 'backward_transfer']:+.3f}" for m in ("sequential", "graft (task known)")))
    return f"{'; '.join(parts)}; {verdict.summary()}; verdict: {verdict.verdict}"


_MEASURED = {"01_single_task_grafting": _single_task, "02_calibration": _calibration, "03_ood": _ood,
             "04_multitask": _multitask, "05_continual_learning": _continual}


def measured(ex: Exercise, result) -> str:
    """One sentence of what ``ex``'s run measured: the numbers its solution discusses."""
    return _MEASURED[ex.chapter](result, parameters(ex))
