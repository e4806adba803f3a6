"""Sweeps on a Dask LocalCluster, on the tiny model and small corpora: the same artifacts as a
serial run, one valid entry when workers race on a key, retries after a killed worker, and a
chapter that computes nothing after its sweep."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("dask.distributed")

from skillgraft import chapters as chapter_modules, cli, recipes, sweep  # noqa: E402
from test_tasks import corpora  # noqa: E402,F401  (fixture: small corpora under a fresh SKILLGRAFT_HOME)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(k=4, test_size=12, max_length=32, precision="fp32", seeds=[13], tasks=["mr"], ft_lr=0.05, ft_steps=4,
            ft_batch_size=4, ft_eval_every=2, graft_lr=1e4, graft_epochs=1, graft_start="grow", claim_sparsity=0.05)


def chapter(name: str, model: Path, **extra) -> tuple[str, dict]:
    defaults = cli.notebook_parameters(cli.resolve_notebook(name, ROOT))
    params = {**defaults, **{k: v for k, v in TINY.items() if k in defaults}, "model": str(model), **extra}
    if "sparsities" in params:
        params["sparsities"] = [0.05]
    return cli.resolve_notebook(name, ROOT).stem, params


def entries(home: Path) -> dict[tuple[str, str], str]:
    """(kind, key) -> sha256 of the tensors (or of the metadata where there are none)."""
    out = {}
    for meta in (home / "cache").glob("*/*/meta.json"):
        record = json.loads(meta.read_text())
        out[meta.parent.parent.name, meta.parent.name] = record["tensors_sha256"] or json.dumps(record["data"], sort_keys=True)
    return out


@pytest.fixture
def tiny(corpora, tiny_llama_dir):  # noqa: F811
    yield Path(os.environ["SKILLGRAFT_HOME"]), tiny_llama_dir


def test_notebooks_call_the_experiments_the_sweep_plans():
    """The sweep plans each chapter by the call its notebook makes: they must not drift apart."""
    import inspect

    assert set(sweep.CHAPTERS) == set(chapter_modules.CHAPTERS)
    for name, module in chapter_modules.CHAPTERS.items():
        text = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        assert f"from skillgraft.chapters import {module.__name__.rsplit('.', 1)[1]} as chapter" in text, name
        # the call run() makes, with the notebook's own names: setting for the Setting, p["x"] for x
        call = inspect.getsource(module.run).split("return ", 1)[1].strip()
        call = re.sub(r'p\["(\w+)"\]', r"\1", call).replace("setting or Setting.from_params(**p)", "setting")
        call = "chapter." + " ".join(call.split())
        assert call.replace('"', '\\"') in " ".join(text.replace("\\n", " ").split()), (name, call)


def test_plan_shares_steps_and_orders_dependencies(tiny):
    home, model = tiny
    steps, complete = sweep.plan([chapter("01", model), chapter("02", model)])
    kinds = [s.kind for s in steps]
    # chapter 01 grafts by both starts; chapter 02 reuses its fine-tune and its grown graft
    assert kinds.count("delta") == 1 and kinds.count("mask") == 2
    delta = next(s for s in steps if s.kind == "delta")
    assert all(s.needs == (delta.key,) for s in steps if s.kind == "mask")
    # a prediction is planned only from real specs: zero-shot, or a fine-tuned delta it waits for; the masks'
    # predictions (and the baselines of a graft's final size) wait for the next wave, after the grafts exist
    probs = [s for s in steps if s.kind == "probs"]
    assert {"zero-shot" if s.recipe.delta is None else type(s.recipe.delta).__name__ for s in probs} == {"zero-shot", "FineTune"}
    assert all(s.recipe.mask is None for s in probs)
    assert all(set(s.needs) <= {delta.key} for s in probs)
    assert not (home / "cache").exists() or not list((home / "cache").glob("*/*/meta.json"))  # planning wrote nothing


def test_sweep_matches_a_serial_run_and_the_chapter_then_computes_nothing(tiny, tmp_path, monkeypatch):
    home, model = tiny
    chapters = [chapter("01", model), chapter("02", model)]
    report = sweep.sweep(chapters, workers=2, threads=1, home=str(home), stream=sys.stderr)
    assert not report.failed and report.done.get("delta") == 1 and report.done.get("probs", 0) > 0
    order = [s.key for s in sweep._dependencies_first(report.steps)]
    assert all(order.index(k) < order.index(s.key) for s in report.steps for k in s.needs if k in order)
    swept = entries(home)
    costs = sweep.costs(home / "cache")  # each computed step's wall time, once per key
    assert {s.key for s in report.steps} <= set(costs.key) and costs.key.is_unique  # every step, once (and what
    # the lab computed beside them, such as a graft's location)
    assert (costs.seconds >= 0).all() and set(costs.kind) == {s.kind for s in report.steps}

    serial_home = tmp_path / "serial"  # the same chapters run one after another, by the experiments themselves
    serial_home.mkdir()
    for part in ("corpora",):
        (serial_home / part).symlink_to(home / part)
    monkeypatch.setenv("SKILLGRAFT_HOME", str(serial_home))
    with sweep.torch_threads(1):  # the threads each step was computed with
        for name, params in chapters:
            sweep.CHAPTERS[name](params, chapter_modules.Setting.from_params(**params))
    serial = {k: v for k, v in entries(serial_home).items() if k[0] in ("delta", "mask", "probs")}
    assert {k: v for k, v in swept.items() if k[0] in ("delta", "mask", "probs")} == serial

    monkeypatch.setenv("SKILLGRAFT_HOME", str(home))  # after the sweep: nothing is computed

    def boom(*a, **k):
        raise AssertionError("a step was computed after the sweep")
    monkeypatch.setattr(recipes, "finetune", boom)
    monkeypatch.setattr(recipes, "localize", boom)
    monkeypatch.setattr("skillgraft.prompt.PromptClassifier.predict_proba", boom)
    with sweep.torch_threads(1):
        for name, params in chapters:
            sweep.CHAPTERS[name](params, chapter_modules.Setting.from_params(**params))
    again = sweep.sweep(chapters, workers=1, threads=1, home=str(home), stream=sys.stderr)
    assert again.steps == [] and again.waves == 0 and (sweep.costs(home / "cache").set_index("key").loc[list(costs.key), "finished"]
                                                      == costs.set_index("key").finished).all()
    with sweep.torch_threads(2):  # two threads give other last bits: other keys, nothing of the sweep's is theirs
        steps, _ = sweep.plan(chapters)
    assert {s.kind for s in steps} >= {"delta", "probs"} and {s.threads for s in steps} == {2}
    assert not {s.key for s in steps} & {key for _, key in swept}


def test_a_lab_refuses_to_store_under_a_thread_count_it_no_longer_has(tiny):
    home, model = tiny
    params = chapter("01", model)[1]
    with sweep.torch_threads(1):
        lab = chapter_modules.Setting.from_params(**params).lab()
        assert lab.env.threads == 1
    with sweep.torch_threads(2):
        other = chapter_modules.Setting.from_params(**params).lab()
        assert other is not lab and other.env.threads == 2  # a new lab for the new count
        recipe = lab.fine_tune("mr", 4, 13, recipes.FinetuneConfig(steps=1, batch_size=4))
        with pytest.raises(RuntimeError, match="torch has 2 threads now, this lab was made with 1"):
            lab.resolve(recipe)
    assert not (home / "cache" / "delta").exists() or not list((home / "cache" / "delta").iterdir())


def _race(step, home, barrier):
    barrier.wait()
    sweep.compute_step(step, home)


def test_two_workers_racing_on_one_key_leave_one_valid_entry(tiny):
    home, model = tiny
    steps, _ = sweep.plan([chapter("01", model)])
    delta = next(s for s in steps if s.kind == "delta")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race, args=(delta, str(home), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    folder = home / "cache" / "delta"
    assert [p.name for p in folder.iterdir()] == [delta.key]  # one entry, no temporary folder left
    assert chapter_modules.Setting.from_params(**chapter("01", model)[1]).lab().store.load(delta.recipe) is not None


KILL_FLAG = "SKILLGRAFT_TEST_KILL_ONCE"


def dying_step(step, home=None, *needed):
    """The first attempt at a fine-tune kills its worker process mid-step; the retry computes it."""
    flag = Path(os.environ[KILL_FLAG])
    if step.kind == "delta" and not flag.exists():
        flag.write_text("killed")
        os._exit(1)
    return sweep.compute_step(step, home, *needed)


def test_a_killed_worker_is_retried_and_the_sweep_completes(tiny, tmp_path, monkeypatch):
    import cloudpickle

    home, model = tiny
    monkeypatch.setenv(KILL_FLAG, str(tmp_path / "killed"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        report = sweep.sweep([chapter("01", model)], workers=2, home=str(home), stream=sys.stderr, task=dying_step)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "killed").exists()  # the first attempt did die
    assert not report.failed and report.done.get("delta") == 1 and report.done.get("mask") == 2
    other = tmp_path / "other"  # the same sweep where no worker dies: the same artifacts
    other.mkdir()
    (other / "corpora").symlink_to(home / "corpora")
    monkeypatch.setenv("SKILLGRAFT_HOME", str(other))
    sweep.sweep([chapter("01", model)], workers=1, home=str(other), stream=sys.stderr)
    kinds = ("delta", "mask", "probs")
    assert {k: v for k, v in entries(home).items() if k[0] in kinds} == {
        k: v for k, v in entries(other).items() if k[0] in kinds}


def test_sweep_command_checks_parameters_before_any_compute(capsys):
    assert cli.main(["sweep", "01", "-p", "sequence", "[1]"]) == 2
    assert "belong to none of 01_single_task_grafting" in capsys.readouterr().err
    assert cli.main(["sweep", "01", "--workers", "0", "--dry-run"]) == 2
    assert cli.main(["sweep", "01", "--threads", "0", "--dry-run"]) == 2
    assert "--threads must be an integer ≥ 1, got 0" in capsys.readouterr().err
    assert cli.main(["sweep", "01", "02", "-p", "seeds", "[13]", "--dry-run"]) == 0
    assert re.search(r"02_calibration: parameters OK: .*'seeds': \[13\]", capsys.readouterr().out)


def test_the_cache_command_sums_what_sweeps_computed(tmp_path, monkeypatch, capsys):
    import json
    from skillgraft import cli
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("SKILLGRAFT_STORE", str(store))
    assert cli.main(["cache", "--costs"]) == 0 and "no computed step is recorded" in capsys.readouterr().out
    lines = [{"kind": "delta", "key": "a", "label": "fine-tuning mr, seed 13", "threads": 2, "seconds": 240.0,
              "finished": "x"},
             {"kind": "delta", "key": "a", "label": "fine-tuning mr, seed 13", "threads": 2, "seconds": 300.0,
              "finished": "y"},  # computed again (its entry was lost): the latest counts
             {"kind": "mask", "key": "b", "label": "localizing mr (grow), seed 13", "threads": 2, "seconds": 60.0,
              "finished": "z"}]
    (store / sweep.COSTS).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert cli.main(["cache", "--costs"]) == 0
    out = capsys.readouterr().out
    assert "delta: 1 steps, 5.0 min" in out and "mask: 1 steps, 1.0 min" in out and "in all: 2 steps, 0.10 h" in out
