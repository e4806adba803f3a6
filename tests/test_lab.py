"""The experiments end to end on a tiny model and small corpora: frames, cached steps, stored masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skillgraft import chapters as ex
from skillgraft import lab as lab_module
from skillgraft.finetune import FinetuneConfig
from skillgraft.localization import GraftConfig
from skillgraft import grafting, masks, recipes
from skillgraft.recipes import TopMovement
from test_tasks import corpora  # noqa: F401  (fixture: small corpora under a fresh SKILLGRAFT_HOME)


@pytest.fixture
def setting(corpora, tiny_llama_dir):  # noqa: F811
    yield ex.Setting(model=str(tiny_llama_dir), k=4, test_size=12, max_length=32,
                     finetune=FinetuneConfig(lr=0.05, steps=4, batch_size=4, eval_every=2),
                     graft=GraftConfig(sparsity=0.05, lr=1e4, epochs=1))


def test_single_task_frame_and_cache(setting, monkeypatch):
    sparsities = [0.01, 0.05]
    first = ex.single_task.single_task(["mr"], [13], sparsities, setting)
    res = first.results
    assert sorted(res.variant.unique()) == ["fine-tuned", "graft", "random", "top-movement", "zero-shot"]
    assert len(res) == 2 + 3 * (len(sparsities) + 1)  # refined at each sparsity, grown once
    n = setting.lab().store.root
    assert n.is_dir()
    for (start, target), grp in res[res.variant.isin(ex.MASK_VARIANTS)].fillna({"target": 0}).groupby(
            ["start", "target"]):  # the baselines have the graft's final size
        sizes = grp.set_index("variant").mask_size
        assert sizes["random"] == sizes["top-movement"] == sizes["graft"]
        assert np.allclose(grp.sparsity, sizes["graft"] / _graftable(setting))
    grafts = first.grafts.set_index(["start", "target"])
    assert len(grafts) == 3 and (grafts.base_size.loc["grow"] <= 1).all()
    assert (grafts["size"] == grafts.base_size + grafts.added - grafts.removed).all()
    assert first.regime.set_index("task").loc["mr", "total_passes"] == pytest.approx(4 * 4 / 8)
    assert first.probs.get(task="mr", seed=13, start="refine", target=0.05, variant="graft").probs.shape[1] == 2
    assert first.probs.get(task="mr", seed=13, start=None, target=np.nan, variant="zero-shot") is not None
    assert res.accuracy.between(0, 1).all() and res.ece.between(0, 1).all()
    assert set(first.locations.module) <= {"attention", "mlp", "norm", "other"}

    # a second run computes nothing: fine-tuning and localization would fail if called
    def boom(*a, **k):
        raise AssertionError("recomputed a cached step")
    monkeypatch.setattr(recipes, "finetune", boom)
    monkeypatch.setattr(recipes, "localize", boom)
    again = ex.single_task.single_task(["mr"], [13], sparsities, setting)
    assert again.results.equals(first.results)


def test_masks_are_stored_as_positions(setting):
    lab = setting.lab()
    dspec = lab.fine_tune("mr", setting.k, 13, setting.finetune)
    mspec = lab.graft(dspec, "mr", 0.05, setting.graft)
    mask = lab.mask(mspec)
    entry = lab.store.load(mspec)
    stored = sum(t.numel() for t in entry.tensors.values())
    assert stored == mask.count < mask.total                  # one integer per grafted entry, not one per parameter
    lab.forget()
    fresh = lab.mask(mspec)                                   # read back from the store, not from memory
    assert fresh.equal(mask) and fresh.count == lab.mask_count(mspec)


def test_baseline_masks_and_similarities_are_read_back_without_the_delta(setting, monkeypatch):
    lab = setting.lab()
    dspec = lab.fine_tune("mr", setting.k, 13, setting.finetune)
    other = lab.fine_tune("mr", setting.k, 21, setting.finetune)
    top, rnd = recipes.TopMovement(dspec, 0.05), recipes.RandomMask(dspec, 0.05, seed=3)
    computed = {"top": lab.mask(top), "random": lab.mask(rnd)}
    cos = lab.resolve(recipes.Similarity(dspec, other))
    assert computed["top"].equal(masks.top_movement(lab.delta(dspec), 0.05))
    assert cos == pytest.approx(float(grafting.cosine(lab.delta(dspec), lab.delta(other))), abs=0)
    fresh = setting.lab()
    fresh.forget()  # read back from the store, not from memory
    monkeypatch.setattr(fresh, "delta", lambda r: (_ for _ in ()).throw(AssertionError("read a delta")))
    assert fresh.mask(top).equal(computed["top"]) and fresh.mask(rnd).equal(computed["random"])
    assert fresh.mask(top).meta["method"] == "top_movement"
    assert fresh.resolve(recipes.Similarity(dspec, other)) == cos  # the same float, from JSON


def _graftable(setting) -> int:
    from skillgraft.models import num_graftable

    return num_graftable(setting.lab().lm.model)


def test_multitask_regions_from_both_base_patches(setting):
    import dataclasses

    setting.graft = dataclasses.replace(setting.graft, base="gradient")
    res = ex.multitask.multitask(["mr", "cr"], 13, 0.05, setting, compare_bases=True)
    assert list(res.overlap.index) == ["mr", "cr"] and np.allclose(np.diag(res.overlap.values), 1.0)
    assert res.alt_base == "movement" and res.alt_overlap.shape == (2, 2)
    # from the official base patch both tasks start from the same top-|δ| patch of the one delta
    assert res.alt_overlap.values[0, 1] >= res.overlap.values[0, 1]
    assert len(res.similarity) == 1 and res.cross_graft.shape == (2, 2)
    assert res.accuracy.set_index("task").region_size.gt(0).all()


def test_multitask_localizes_the_other_base_only_when_asked(setting, monkeypatch):
    calls = []
    real = recipes.localize
    monkeypatch.setattr(recipes, "localize", lambda *a, **k: calls.append(a[-1].base) or real(*a, **k))
    res = ex.multitask.multitask(["mr", "cr"], 13, 0.05, setting)
    # two regions, then the two single-task models' grafts (chapter 01's, from its default base patch)
    assert res.alt_overlap is None and res.alt_base == "" and calls == ["movement"] * 4
    assert res.single_overlap.shape == (2, 2)


def _count_predictions(lab, monkeypatch) -> list:
    """One item per prediction entry ``lab`` writes from now on (each one computed)."""
    calls, real = [], lab.store.save
    monkeypatch.setattr(lab.store, "save", lambda recipe, *a, **k: (calls.append(1) if recipe.kind == "probs"
                                                                    else None) or real(recipe, *a, **k))
    return calls


def test_predictions_are_shared_by_identical_prompts_and_masks(setting, monkeypatch):
    import dataclasses

    lab = setting.lab()
    calls = _count_predictions(lab, monkeypatch)
    assert lab.classifier("mr").prompt == lab.classifier("cr").prompt  # one template for both
    p1, y1 = lab.predict("cr", lab_module.Variant("zero-shot"))
    p2, y2 = lab.predict("cr", lab_module.Variant("zero-shot"), prompt_task="mr")
    assert len(calls) == 1 and np.array_equal(p1, p2) and np.array_equal(y1, y2)
    lab.predict("cr", lab_module.Variant("zero-shot"), prompt_task="tweets3")  # another prompt: computed
    assert len(calls) == 2

    # a step of size 0 cannot move the mask: the graft keeps its base patch, the top-movement mask
    dspec = lab.fine_tune("mr", setting.k, 13, setting.finetune)
    still = dataclasses.replace(setting.graft, lr=0.0)
    graft = lab.graft(dspec, "mr", 0.05, still)
    top = TopMovement(dspec, 0.05)
    assert lab.mask(graft).equal(lab.mask(top)) and lab.store.load_meta(graft)["best_epoch"] == 0
    n = len(calls)
    pg, _ = lab.predict("mr", lab_module.Variant("graft", dspec, graft, 0.05))
    pt, _ = lab.predict("mr", lab_module.Variant("top-movement", dspec, top, 0.05))
    assert len(calls) == n + 1 and np.array_equal(pg, pt)
    # from the gradient base patch the graft is another mask: its predictions are its own
    other = lab.graft(dspec, "mr", 0.05, dataclasses.replace(still, base="gradient"))
    lab.predict("mr", lab_module.Variant("graft", dspec, other, 0.05))
    assert len(calls) == n + 2


def test_continual_shares_its_first_stage(setting):
    lab = setting.lab()
    single = lab.fine_tune("mr", setting.k, 13, setting.finetune)
    assert lab.fine_tune(["mr", "cr"], setting.k, 13, setting.finetune, mode="sequential", stage=0) == single
    first = {n: t.clone() for n, t in lab.delta(single).items()}
    res = ex.continual.continual(["mr", "cr"], 13, 0.05, setting, with_multitask=True)
    assert set(res.matrices) == {"sequential", "graft (task known)", "stitched", "multitask"}
    assert res.matrices["multitask"].shape == (1, 2) and res.summary.method.tolist()[-1] == "multitask"
    r = res.matrices
    assert r["stitched"].iloc[0, 0] == r["graft (task known)"].iloc[0, 0]  # one region: stitching is grafting
    probs, labels = lab.predict("mr", lab_module.Variant("fine-tuned", delta=single))
    assert r["sequential"].iloc[0, 0] == (probs.argmax(1) == labels).mean()
    # the stored single-task delta was not trained again: the sequence went on from it
    assert all(torch.equal(first[n], lab.delta(single)[n]) for n in first)
    # above the diagonal (cr before it is learned) feeds no metric with two tasks: not evaluated
    assert all(np.isnan(r[m].iloc[0, 1]) for m in ("sequential", "stitched", "graft (task known)"))
    assert not res.probs.find(seed=13, method="sequential", stage=0, task=1)
    assert res.probs.find(seed=13, method="sequential", stage=1, task=0)
    stage1 = lab.fine_tune(["mr", "cr"], setting.k, 13, setting.finetune, mode="sequential", stage=1)
    assert lab.store.load_meta(stage1)["history"][0]["task"] == 1
    stage2 = lab.fine_tune(["mr", "cr", "mr"], setting.k, 13, setting.finetune, mode="sequential", stage=2)
    assert lab.store.load_meta(stage2) is None  # another sequence: not computed


def test_computations_report_their_stage(setting, monkeypatch):
    """Each fine-tune, localization and prediction the lab computes names itself for the
    progress display; one served from the store reports nothing."""
    from skillgraft import progress

    seen = []
    monkeypatch.setenv(progress.ENV, "/dev/null")
    monkeypatch.setattr(progress, "_write", lambda path, record: seen.append(record))
    ex.single_task.single_task(["mr"], [13], [0.05], setting, starts=("refine",))
    whats = {r["what"] for r in seen}
    assert "fine-tuning mr, seed 13" in whats and "localizing mr (refine), seed 13" in whats
    assert any(w.startswith("predicting mr test, 12 examples") for w in whats)
    steps = [r for r in seen if r["what"] == "fine-tuning mr, seed 13" and r["total"]]
    assert [r["done"] for r in steps] == [1, 2, 3, 4] and steps[-1]["total"] == 4
    seen.clear()
    ex.single_task.single_task(["mr"], [13], [0.05], setting, starts=("refine",))
    assert seen == []


def test_caveats_name_seeds_fit_equal_masks_and_gain(setting):
    res = ex.single_task.single_task(["mr"], [13, 21], [0.05], setting, starts=("refine",))
    text = ex.common.caveats(res, setting, start="refine")
    assert text.startswith("2 data seeds × 12 test examples per task")
    fits = bool(res.regime["fit"].all())
    assert ("every kept checkpoint fits its train set" in text) == fits
    same = int(res.grafts["equals_top_movement"].sum())
    assert (f"{same} of 2 grafts equal their top-movement mask" in text) == (same > 0)
    acc = res.results.groupby("variant")["accuracy"].mean()
    assert f"fine-tuning gained {100 * (acc['fine-tuned'] - acc['zero-shot']):+.1f} points" in text
    assert ex.common.caveats(res, setting, seeds=[13]).startswith("one data seed (13): no interval")


def test_a_change_to_the_localization_code_recomputes_the_graft_not_the_fine_tune(setting, monkeypatch):
    """With the source of localization changed (its hash, as tests/test_store.py shows a real edit
    changes it), the stored graft is recomputed while the stored fine-tune is read."""
    lab = setting.lab()
    graft = lab.graft(lab.fine_tune("mr", setting.k, 13, setting.finetune), "mr", 0.05, setting.graft)
    lab.mask(graft)
    calls = []
    for name in ("finetune", "localize"):
        real = getattr(recipes, name)
        monkeypatch.setattr(recipes, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    real_hash = recipes.code_hash
    monkeypatch.setattr(recipes, "code_hash", lambda modules, package_dir=None: real_hash(modules, package_dir)
                        + ("+edited" if "localization" in modules else ""))
    lab = setting.lab()
    again = lab.graft(lab.fine_tune("mr", setting.k, 13, setting.finetune), "mr", 0.05, setting.graft)
    assert again.delta.key == graft.delta.key and again.key != graft.key
    assert lab.mask(again).equal(lab.mask(graft)) and calls == ["localize"]  # recomputed, to the same mask


def test_the_other_start_runs_on_the_first_compare_seeds_only(setting):
    res = ex.single_task.single_task(["mr"], [13, 21], [0.05], setting, compare_seeds=1)
    starts = res.grafts.groupby("seed").start.apply(sorted).to_dict()
    assert starts == {13: ["grow", "refine"], 21: ["refine"]}  # the setting's start (refine) on every seed
    assert set(res.results[res.results.seed == 21].start.dropna()) == {"refine"}
    every = ex.single_task.single_task(["mr"], [13, 21], [0.05], setting)
    assert every.grafts.groupby("seed").start.nunique().tolist() == [2, 2]


def test_continual_evaluates_what_its_metrics_read():
    from skillgraft import metrics as mt

    assert [[ex.continual.evaluated(t, j, 2) for j in range(2)] for t in range(2)] == [[True, False], [True, True]]
    grid = [[ex.continual.evaluated(t, j, 3) for j in range(3)] for t in range(3)]
    assert grid == [[True, True, False], [True, True, False], [True, True, True]]
    # forgetting over a matrix with the unevaluated entries blanked equals it over the full matrix
    rng = np.random.default_rng(0)
    for T in (2, 3, 4):
        full = rng.uniform(size=(T, T))
        blank = np.where([[ex.continual.evaluated(t, j, T) for j in range(T)] for t in range(T)], full, np.nan)
        assert mt.forgetting(blank) == mt.forgetting(full)
        assert mt.backward_transfer(blank) == mt.backward_transfer(full)


def test_a_shared_lab_follows_the_store_the_environment_names(setting, tmp_path, monkeypatch):
    first = setting.lab()
    assert setting.lab() is first                        # the model loads once per process
    monkeypatch.setenv("SKILLGRAFT_STORE", str(tmp_path / "other"))
    other = setting.lab()
    assert other is not first and other.store.root == tmp_path / "other"   # never the old store


def test_each_computed_step_records_its_own_wall_time_beside_the_store(setting, monkeypatch):
    """A graft whose fine-tune is not stored computes it first: two lines, the graft's own time
    without the fine-tune's inside it; a step read back records nothing."""
    import json
    import time as time_module

    from skillgraft.published import COSTS

    lab = setting.lab()
    real = recipes.finetune
    monkeypatch.setattr(recipes, "finetune", lambda *a, **k: (time_module.sleep(0.5), real(*a, **k))[1])
    graft = lab.graft(lab.fine_tune("mr", setting.k, 13, setting.finetune), "mr", 0.05, setting.graft)
    start = time_module.perf_counter()
    lab.mask(graft)
    took = time_module.perf_counter() - start
    lines = [json.loads(x) for x in (lab.store.root / COSTS).read_text().splitlines()]
    seconds = {x["kind"]: x["seconds"] for x in lines}
    assert [x["key"] for x in lines] == [graft.delta.key, graft.key]  # the fine-tune first, computed inside
    assert seconds["delta"] >= 0.5 and seconds["mask"] < took - 0.45  # the graft's own time, not the fine-tune's
    assert seconds["delta"] + seconds["mask"] <= took + 0.2
    lab.forget()
    lab.mask(graft)  # read back from the store: no new line
    assert len((lab.store.root / COSTS).read_text().splitlines()) == 2
