"""Command line: ``skillgraft fetch | tasks | run | book | cache``.

``skillgraft run NOTEBOOK -p name value`` checks every parameter against the
notebook's ``parameters`` cell (name, and type of its default) before any computation,
then executes the notebook with papermill into ``runs/`` (never over the book's copy).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import machine
from .files import atomic
from .progress import Watcher

__all__ = ["main", "notebook_parameters", "check_parameters", "resolve_notebook"]

log = logging.getLogger("skillgraft")


from .parameters import (UsageError, add_run_arguments, check_parameters, list_notebooks,  # noqa: F401 (the command line re-exports them)
                         notebook_parameters, parse_params, repo_root, resolve_notebook)


def _kernel_manager():
    """The kernel manager papermill starts a chapter's kernel with: on POSIX, over IPC sockets in the temporary
    folder, so that no port is opened and the kernel has no reason to warn of unencrypted TCP; elsewhere
    jupyter_client's default (TCP)."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc" if os.name == "posix" else "tcp"

        @default("ip")
        def _default_ip(self):  # for IPC: the sockets' path prefix (removed when the kernel shuts down)
            if os.name != "posix":
                return "127.0.0.1"
            return os.path.join(tempfile.gettempdir(), f"skillgraft-kernel-{uuid.uuid4().hex[:12]}")
    return IPCKernelManager


def execute(path: Path, output: Path, params: dict, cwd: Path | None = None) -> Path:
    """Run a notebook with papermill; the output appears only if execution succeeded."""
    import papermill as pm

    print(f"executing {path.stem} -> {output}", file=sys.stderr, flush=True)
    busy = machine.busy_cores()
    env = machine.kernel_environment(busy)
    if env:
        print(f"{path.stem}: other processes keep {busy:.1f} of {os.cpu_count()} cores busy: torch's threads "
              "wait passively (OMP_WAIT_POLICY=PASSIVE; same threads, same results)", file=sys.stderr, flush=True)
    os.environ.update(env)  # the kernel papermill starts inherits this process's environment (env never
    try:                    # holds a variable the caller had set: see kernel_environment)
        with atomic(output) as tmp, Watcher(path.stem):  # which fine-tune, graft or prediction runs, how far along
            pm.execute_notebook(str(path), str(tmp), parameters=params, cwd=str(cwd or path.parent),
                                kernel_name="python3", progress_bar=False, kernel_manager_class=_kernel_manager())
    finally:
        for k in env:
            os.environ.pop(k, None)
    return output


def cmd_fetch(args) -> None:
    from . import assets

    for name, path in assets.fetch_all().items():
        print(f"{name:20s} {path}")


def cmd_tasks(args) -> None:
    from . import tasks

    print(tasks.task_table().to_string(index=False))


def cmd_run(args) -> None:
    path = resolve_notebook(args.notebook)
    params = check_parameters(path, parse_params(args.param or [], args.file or []))
    if args.dry_run:
        from .parameters import schema_table
        print(f"{path.stem}: parameters OK: {params}")
        print(schema_table(path, params))
        if args.plan:
            from .publishing import plan_report
            print(plan_report(path, params))
        return
    output = Path(args.output) if args.output else Path(args.output_dir) / path.name
    if output.resolve() == path.resolve():
        raise UsageError("refusing to overwrite the book's notebook; choose another --output")
    note = machine.bf16_note({**notebook_parameters(path), **params})
    if note:
        print(f"{path.stem}: {note}", file=sys.stderr, flush=True)
    print(execute(path, output, params, cwd=path.parent))


def cmd_parameters(args) -> None:
    from .parameters import schema_table
    print(schema_table(resolve_notebook(args.notebook)))


def cmd_sweep(args) -> None:
    given = parse_params(args.param or [], args.file or [])
    chapters, used = [], set()
    for name in args.chapters:
        path = resolve_notebook(name)
        if path.stem not in _sweepable():
            raise UsageError(f"no sweep for {path.stem}; accepted: {', '.join(_sweepable())}")
        defaults = notebook_parameters(path)
        mine = {k: v for k, v in given.items() if k in defaults}
        used |= set(mine)
        chapters.append((path.stem, {**defaults, **check_parameters(path, mine)}))
    unknown = sorted(set(given) - used)
    if unknown:
        raise UsageError(f"parameter(s) {', '.join(map(repr, unknown))} belong to none of {', '.join(c for c, _ in chapters)}")
    for flag in ("workers", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be an integer ≥ 1, got {getattr(args, flag)}")
    if args.dry_run:
        for name, params in chapters:
            print(f"{name}: parameters OK: {params}")
        return
    from . import sweep

    if not args.verbose:  # Dask's own INFO lines (workers starting, connections) drown the sweep's progress
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    client = None
    if args.scheduler:
        from dask.distributed import Client
        client = Client(args.scheduler)
    report = sweep.sweep(chapters, client=client, workers=args.workers, threads=args.threads)
    if report.failed:
        raise SystemExit(f"sweep: {len(report.failed)} step(s) failed (keys and tracebacks above); "
                         "a rerun computes only what is missing")


def cmd_grid(args) -> None:
    from . import grid

    try:
        grid.run(only=args.only, dry_run=args.dry_run, results=Path(args.root) if args.root else None)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _sweepable() -> tuple[str, ...]:
    from .sweep import CHAPTERS
    return tuple(CHAPTERS)


def cmd_book(args) -> None:
    root = repo_root()
    if not args.no_execute:
        # the results page reads the chapters; the protocol page renders the analysis plan
        for nb in list_notebooks(root) + [root / "book" / f"{page}.ipynb" for page in ("variance", "results", "protocol")]:
            log.info("executing %s", nb.name)
            execute(nb, nb, {}, cwd=nb.parent)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--builder", "html", "--warningiserror", "--nitpick",
           "--keep-going", "--all"]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("book build failed (warnings are errors); see the messages above")


def cmd_cache(args) -> None:
    from .store import default_store

    store = default_store()
    if args.clear:
        store.clear()
        print(f"cleared {store.root}")
        return
    if args.costs:
        from .sweep import costs
        table = costs(store.root)
        if table.empty:
            print(f"{store.root}: no computed step is recorded")
            return
        print(table[["label", "kind", "threads", "seconds", "finished"]].to_string(index=False))
        by_kind = table.groupby("kind").seconds.agg(["count", "sum"])
        print("\n".join(f"{kind}: {int(r['count'])} steps, {r['sum'] / 60:.1f} min" for kind, r in by_kind.iterrows()))
        print(f"in all: {len(table)} steps, {table.seconds.sum() / 3600:.2f} h of wall time")
        return
    if args.prune:
        print(f"removed stale entries and killed writes: {store.prune() / 1e6:.1f} MB freed")
    entries = store.entries()
    print(f"{store.root}: {sum(e['bytes'] for e in entries) / 1e6:.1f} MB in {len(entries)} entries")
    temporary = store.temporary_bytes()
    if temporary:
        print(f"  and {temporary / 1e6:.1f} MB in temporary folders of writes in progress or killed "
              "(--prune removes the killed ones)")
    for kind in sorted({e["kind"] for e in entries}):
        mine = [e for e in entries if e["kind"] == kind]
        stale = [e for e in mine if e["stale"]]
        print(f"  {kind:10s} {len(mine):5d} entries {sum(e['bytes'] for e in mine) / 1e6:10.1f} MB"
              + (f"   stale: {len(stale)} ({sum(e['bytes'] for e in stale) / 1e6:.1f} MB; --prune removes them)"
                 if stale else ""))


def _results_root(args) -> Path:
    from .published import default_root

    root = Path(args.root) if args.root else default_root()
    if root is None:
        raise UsageError("the published layer is off (SKILLGRAFT_RESULTS=off); give --root PATH")
    return root


def cmd_publish(args) -> None:
    from . import publishing

    root = _results_root(args)
    if args.stored and (args.check or args.pages):
        raise UsageError("--stored publishes the whole local store: give it alone (no --check, no pages)")
    if args.stored:
        publishing.snapshot(root)
        return
    if args.check:
        start = time.perf_counter()
        problems = publishing.guard(root)
        if problems:
            raise SystemExit("staleness guard: the published results or the answers page do not cover the book as it "
                             "is now:\n" + "\n".join(f"  - {p}" for p in problems)
                             + "\n`make publish` computes what is missing (reading the local store) and publishes it; "
                               "`make answers` measures the exercises again")
        print(f"staleness guard: every page's results are published and current in {root}, and the answers page "
              f"is current ({time.perf_counter() - start:.1f} s)")
        return
    which = publishing.pages()
    if args.pages:
        short = {name.split("_", 1)[0]: name for name in which}
        unknown = [p for p in args.pages if p not in which and p not in short]
        if unknown:
            raise UsageError(f"unknown page(s) {unknown}; accepted: {', '.join(which)} (or 01 … 05)")
        which = {short.get(p, p): which[short.get(p, p)] for p in args.pages}
    publishing.publish(root, which)


def cmd_spotcheck(args) -> None:
    from . import publishing

    root = _results_root(args)
    if args.chain is not None and args.chain < 1:
        raise UsageError(f"--chain must be an integer ≥ 1, got {args.chain}")
    start = time.perf_counter()
    differences = publishing.spot_check(root, None if args.chain is None else args.chain - 1)
    if differences:
        raise SystemExit("spot check FAILED: the recomputed chain differs from the published results:\n"
                         + "\n".join(f"  - {d}" for d in differences))
    print(f"spot check passed in {time.perf_counter() - start:.0f} s")


def cmd_reproduce(args) -> None:
    from . import reproduce

    root = _results_root(args)
    todo = reproduce.parts()
    if args.only:
        labels = [p.label for p in todo]
        unknown = [u for u in args.only if u not in labels]
        if unknown:
            raise UsageError(f"no part {', '.join(map(repr, unknown))}; accepted: {', '.join(labels)}")
        todo = [p for p in todo if p.label in args.only]
    if args.check:
        problems = reproduce.check(root)
        print(reproduce.summary(root))
        if problems:
            raise SystemExit("not yet reproduced from nothing (`make reproduce` computes what is missing):\n"
                             + "\n".join(f"  - {p}" for p in problems))
        print("every entry the book's pages use was reproduced from nothing and found equal")
        return
    from .assets import home

    store = Path(args.store) if args.store else home() / "reproduce"
    differences = reproduce.reproduce(root, store, todo)
    if differences:
        raise SystemExit("reproduce FAILED: recomputed from nothing, the part differs from the published results:\n"
                         + "\n".join(f"  - {d}" for d in differences))
    print(reproduce.summary(root))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skillgraft", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch, verify and cache the embedded model and corpora").set_defaults(func=cmd_fetch)
    sub.add_parser("tasks", help="list the tasks with sizes and classes").set_defaults(func=cmd_tasks)
    run = sub.add_parser("run", help="execute a notebook with new parameters into runs/")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    pa = sub.add_parser("parameters", help="a chapter's parameters: default, type, accepted values, what each does")
    pa.add_argument("notebook", help="e.g. 01 or 01_single_task_grafting")
    pa.set_defaults(func=cmd_parameters)
    sw = sub.add_parser("sweep", help="compute the chapters' fine-tunes, grafts and predictions on a Dask cluster")
    sw.add_argument("chapters", nargs="+", help="e.g. 01 02, or 01_single_task_grafting")
    sw.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                    help="a parameter for every chapter that has it, read as YAML")
    sw.add_argument("-f", "--file", action="append", help="a YAML parameter file")
    sw.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster here)")
    sw.add_argument("--workers", type=int, help="LocalCluster worker processes (default: the cores ÷ --threads)")
    sw.add_argument("--threads", type=int,
                    help="torch threads each step is computed with, and keyed by (default: torch's count here, "
                         "as `skillgraft run` computes)")
    sw.add_argument("--dry-run", action="store_true", help="check the parameters and stop")
    sw.set_defaults(func=cmd_sweep)
    gr = sub.add_parser("grid", help="the grid behind the verdicts (configs/grid/), swept unit by unit and published "
                                     "after each (publish --stored)")
    gr.add_argument("only", nargs="*", help="only these units (04, or a task such as mr), run in the grid's order; default: all")
    gr.add_argument("--dry-run", action="store_true", help="list the units and check their parameters")
    gr.add_argument("--root", help="the published layer (default: results/ of this checkout, or $SKILLGRAFT_RESULTS)")
    gr.set_defaults(func=cmd_grid)
    book = sub.add_parser("book", help="execute the notebooks and build the book")
    book.add_argument("--no-execute", action="store_true", help="build from the committed outputs")
    book.set_defaults(func=cmd_book)
    pb = sub.add_parser("publish", help="publish what the book's pages resolve into results/ (computing what is missing)")
    pb.add_argument("pages", nargs="*", help="only these pages (e.g. 01 survey); the others keep their published entries")
    pb.add_argument("--check", action="store_true",
                    help="the staleness guard: are the book's results published and current? (seconds, no compute)")
    pb.add_argument("--stored", action="store_true",
                    help="publish every current entry of the local store as it is, computing nothing and keeping what "
                         "is published (a long sweep's finished steps then outlive the machine)")
    pb.add_argument("--root", help="the published layer (default: results/ of this checkout, or $SKILLGRAFT_RESULTS)")
    pb.set_defaults(func=cmd_publish)
    sc = sub.add_parser("spotcheck", help="recompute one chain of chapter 01 from nothing and compare it with results/")
    sc.add_argument("--chain", type=int, help="which (task, seed) of chapter 01's grid, from 1 (default: the day's)")
    sc.add_argument("--root", help="the published layer (default: results/ of this checkout, or $SKILLGRAFT_RESULTS)")
    sc.set_defaults(func=cmd_spotcheck)
    rp = sub.add_parser("reproduce", help="recompute the book's results from nothing, part by part, compare them with "
                                          "results/ and record each part that matches (results/REPRODUCED.json)")
    rp.add_argument("only", nargs="*", help="only these parts (04, a task such as mr, or survey); default: all")
    rp.add_argument("--check", action="store_true",
                    help="is every entry the pages use reproduced, by a current record? (seconds, no compute)")
    rp.add_argument("--store", help="the reproduction's own store (default: $SKILLGRAFT_HOME/reproduce)")
    rp.add_argument("--root", help="the published layer (default: results/ of this checkout, or $SKILLGRAFT_RESULTS)")
    rp.set_defaults(func=cmd_reproduce)
    cache = sub.add_parser("cache", help="show the artifact cache size, or clear it")
    cache.add_argument("--clear", action="store_true", help="remove every entry")
    cache.add_argument("--prune", action="store_true", help="remove stale entries (made by other code) and killed writes")
    cache.add_argument("--costs", action="store_true",
                       help="the wall time of each step sweeps computed into the store, and the totals by kind")
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .assets import AssetError

    try:
        args.func(args)
    except (UsageError, AssetError, yaml.YAMLError, FileNotFoundError) as err:
        print(f"skillgraft: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
