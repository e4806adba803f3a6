"""The published layer: resolution order, thread counts, refused entries, the staleness guard, the spot check."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging

import numpy as np
import pytest
import torch

from skillgraft import published as pub
from skillgraft import publishing, recipes, store as store_module
from skillgraft.lab import Lab, Variant
from skillgraft.store import Store
from skillgraft.sweep import torch_threads
from test_tasks import corpora  # noqa: F401  (fixture: small corpora under a fresh SKILLGRAFT_HOME)


@pytest.fixture(autouse=True)
def two_threads():
    """Published entries here are made with two torch threads, whatever the environment sets."""
    with torch_threads(2):
        yield


@pytest.fixture
def params(corpora, tiny_llama_dir):  # noqa: F811
    yield dict(model=str(tiny_llama_dir), device="cpu", precision="fp32", tasks=["mr"], seeds=[13, 21], k=4,
               test_size=12, max_length=32, sparsities=[0.05], claim_sparsity=0.05, ft_optimizer="sgd", ft_lr=0.05,
               ft_steps=4, ft_eval_every=2, ft_batch_size=4, graft_lr=1e4, graft_epochs=1, graft_sigmoid_bias=10.0,
               graft_start="grow", compare_seeds=1)


def _publish(tmp_path, params, threads=2):
    root = tmp_path / "results"
    with torch_threads(threads):
        report = publishing.publish(root, {"01_single_task_grafting": (None, params)})
    return root, report


def _lab(params, root, store_root, threads=1):
    with torch_threads(threads):
        return Lab(params["model"], max_length=params["max_length"], test_size=params["test_size"],
                   store=Store(store_root), published=root)


def _chain(lab, params, seed=13):
    from skillgraft.chapters.common import Setting
    setting = Setting.from_params(**params)
    dspec = lab.fine_tune("mr", params["k"], seed, setting.finetune)
    gspec = lab.graft(dspec, "mr", float("nan"), setting.graft)
    return setting, dspec, gspec


def _no_compute(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed a published step")
    monkeypatch.setattr(recipes, "finetune", boom)
    monkeypatch.setattr(recipes, "localize", boom)


def test_publish_writes_small_entries_without_deltas_and_is_idempotent(tmp_path, params):
    root, report = _publish(tmp_path, params)
    manifest = json.loads((root / pub.MANIFEST).read_text())
    kinds = {name.split("/")[0] for name in manifest["entries"]}
    assert kinds == {"delta", "mask", "probs", "location"} and manifest["threads"] == 2
    assert report.added and not report.replaced and not report.dropped
    delta = next(n for n in manifest["entries"] if n.startswith("delta/"))
    body = json.loads(gzip.decompress((root / manifest["entries"][delta]["file"]).read_bytes()))
    assert body["tensors"] == {} and body["record"]["complete"] is False and body["record"]["data"]["history"]
    assert body["provenance"]["threads"] == 2 and body["provenance"]["code"] == body["record"]["code"]
    with torch_threads(2):
        again = publishing.publish(root, {"01_single_task_grafting": (None, params)})
    assert again.kept == len(manifest["entries"]) and not (again.added or again.replaced or again.dropped)


def test_resolution_order_store_then_published_then_compute(tmp_path, params, monkeypatch):
    root, _ = _publish(tmp_path, params)
    lab = _lab(params, root, tmp_path / "empty", threads=2)
    setting, dspec, gspec = _chain(lab, params)
    _no_compute(monkeypatch)
    probs, labels = lab.predict("mr", Variant("graft", dspec, gspec))      # published
    assert lab.origin(lab._same_mask(gspec)) == "published" and lab.origin(dspec) == "published (metadata)"
    assert lab.meta(dspec)["history"] and not (tmp_path / "empty").exists()  # nothing was written locally
    local = Store(tmp_path / "local")
    recipe = recipes.Prediction(lab.env, "mr", (lab.classifier("mr").prompt.template,
                                               tuple(lab.classifier("mr").prompt.label_words)), delta=dspec,
                                mask=lab._same_mask(gspec))
    local.save(recipe, {"probs": torch.zeros(len(labels), 2), "labels": torch.as_tensor(labels)})
    lab.store, lab.memory = local, {pool: {} for pool in lab.memory}
    assert float(lab.predict("mr", Variant("graft", dspec, gspec))[0].sum()) == 0.0  # the local store comes first
    with pytest.raises(AssertionError, match="computed a published step"):       # not published: computed
        lab.resolve(recipes.FineTune(lab.env, "mr", params["k"], 99, setting.finetune))


def test_an_entry_published_with_two_threads_is_found_with_one(tmp_path, params, monkeypatch):
    root, _ = _publish(tmp_path, params, threads=2)
    lab = _lab(params, root, tmp_path / "store", threads=1)
    assert lab.threads == 1
    _, dspec, gspec = _chain(lab, params)
    assert dspec.env.threads == 1 and lab.published.name(dspec, 1).endswith(pub.with_threads(dspec, 2).key)
    _no_compute(monkeypatch)
    assert lab.mask(gspec).count == lab.meta(gspec)["count"]
    gpu = _lab(params, root, tmp_path / "store", threads=1)
    assert gpu.published.name(dspec, 0).endswith(dspec.key)  # a GPU lab (0 threads) looks up its own keys: computes


def test_a_corrupt_entry_is_refused_with_its_path_and_recomputed(tmp_path, params, caplog, monkeypatch):
    root, _ = _publish(tmp_path, params)
    lab = _lab(params, root, tmp_path / "store", threads=2)
    _, dspec, gspec = _chain(lab, params)
    name = f"mask/{gspec.key}"
    layer = pub.Published(root)
    path = root / layer.entries[name]["file"]
    # one byte of the content changed in a file that is still valid gzip and valid JSON: only the sha256 refuses it
    import gzip
    text = gzip.decompress(path.read_bytes())
    at = text.index(b'"count":') + len(b'"count":')
    changed = text[:at] + bytes([text[at] ^ 1]) + text[at + 1:]   # one digit of the graft's count, another digit
    path.write_bytes(gzip.compress(changed, mtime=0))
    assert json.loads(gzip.decompress(path.read_bytes()))                  # readable as an entry
    with caplog.at_level(logging.WARNING):
        assert pub.Published(root).body(name) is None
    assert str(path) in caplog.text and "is refused" in caplog.text
    problems = publishing.check(root, {"01_single_task_grafting": (None, params)})
    assert any(str(path) in p and "fails its sha256" in p for p in problems)
    lab.published = pub.Published(root)
    assert lab.origin(gspec) == "compute"
    computed = []
    real = recipes.localize
    monkeypatch.setattr(recipes, "localize", lambda *a, **k: computed.append(1) or real(*a, **k))
    lab.mask(gspec)
    assert computed == [1]                                      # localized again, into the local store
    assert (tmp_path / "store" / "mask" / gspec.key).is_dir()


def test_the_staleness_guard_names_changed_code_and_parameters(tmp_path, params, monkeypatch):
    which = {"01_single_task_grafting": (None, params)}
    root, _ = _publish(tmp_path, params)
    assert publishing.check(root, which) == []
    assert "not published" in publishing.check(root, {**which, "02_calibration": (None, params)})[-1]
    moved = {**params, "seeds": [13]}
    assert publishing.check(root, {"01_single_task_grafting": (None, moved)}) == [
        "01_single_task_grafting: its parameters changed since publishing (seeds)"]
    real = store_module._current_code
    monkeypatch.setattr(store_module, "_current_code",
                        lambda modules: "changed" if "localization" in modules else real(modules))
    problems = publishing.check(root, which)
    assert problems and all("made by other code" in p for p in problems)
    assert any(p.startswith("mask/") for p in problems)
    assert any(p.startswith("location/") for p in problems)  # made from a graft: stale through its input
    assert not any(p.startswith("delta/") for p in problems)  # fine-tunes do not run the localization code
    assert publishing.check(tmp_path / "nowhere", which)[0].startswith("no published results at")


def test_the_spot_check_passes_then_fails_on_a_tampered_value(tmp_path, params):
    root, _ = _publish(tmp_path, params)
    with torch_threads(2):
        assert publishing.spot_check(root, chain=1, params=params) == []
    real = pub.machine
    with torch_threads(2), pytest.MonkeyPatch.context() as mp:  # another CPU: compared within the tolerance
        mp.setattr(pub, "machine", lambda: {**real(), "cpu": "another CPU", "fingerprint": "0" * 16})
        assert publishing.spot_check(root, chain=1, params=params) == []
    layer = pub.Published(root)
    lab = _lab(params, root, tmp_path / "s", threads=2)
    _, dspec, gspec = _chain(lab, params, seed=21)
    graft = lab._same_mask(gspec)  # the chain's graft predictions (a graft kept at its base patch is that mask)
    name = next(n for n in layer.entries if n.startswith("probs/") and layer.body(n)["record"]["spec"]["mask"]
                and layer.body(n)["record"]["spec"]["mask"]["key"] == graft.key)
    tamper(root, name, (3, 0), 0.25)
    with torch_threads(2):
        differences = publishing.spot_check(root, chain=1, params=params)
    assert len(differences) == 1 and "probabilities" in str(differences[0])
    assert "1 of 24 values differ" in str(differences[0]) and "at (3, 0)" in str(differences[0])


def tamper(root, name, at, by):
    """Add ``by`` to the published probability ``at`` of entry ``name``, and publish its sha256:
    a consistent entry, whose checksum passes, but not what the code computes."""
    layer = pub.Published(root)
    body = layer.body(name)
    probs = pub._decode(body["tensors"])["probs"]
    probs[at] += by
    body["tensors"]["probs"] = pub._encode({"probs": probs})["probs"]
    data = gzip.compress(json.dumps(body).encode())
    (root / layer.entries[name]["file"]).write_bytes(data)
    manifest = json.loads((root / pub.MANIFEST).read_text())
    manifest["entries"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (root / pub.MANIFEST).write_text(json.dumps(manifest))


def test_the_dry_run_says_where_each_step_comes_from(tmp_path, params, monkeypatch):
    import nbformat

    root, _ = _publish(tmp_path, params)
    monkeypatch.setenv("SKILLGRAFT_RESULTS", str(root))
    monkeypatch.setenv("SKILLGRAFT_STORE", str(tmp_path / "empty-store"))  # a fresh clone: only the published layer
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()),
                                          metadata={"tags": ["parameters"]})]
    path = tmp_path / "01_single_task_grafting.ipynb"
    nbformat.write(nb, path)
    with torch_threads(2):
        text = publishing.plan_report(path, {})
        assert "min of fine-tuning steps" not in text and "  published" in text and "  compute " not in text
        more = publishing.plan_report(path, {"seeds": [13, 21, 42]})  # a new seed: its fine-tune is to be computed
    assert "  compute                fine-tuning mr, seed 42  ~" in more and "min of fine-tuning steps" in more


def test_publishing_one_page_keeps_the_others(tmp_path, params):
    root, first = _publish(tmp_path, params)
    survey = {**params, "tasks": ["mr"], "seed": 13, "reference": "mr"}
    with torch_threads(2):
        report = publishing.publish(root, {"survey": (None, survey)})
    manifest = json.loads((root / pub.MANIFEST).read_text())
    assert set(manifest["chapters"]) == {"01_single_task_grafting", "survey"} and not report.dropped
    chapter = manifest["chapters"]["01_single_task_grafting"]["entries"]
    assert chapter and set(chapter) <= set(manifest["entries"])
    assert set(manifest["chapters"]["survey"]["entries"]) & set(chapter)  # the survey shares seed 13's fine-tune
    assert publishing.check(root, {"01_single_task_grafting": (None, params), "survey": (None, survey)}) == []


def test_the_days_spot_check_rotates_through_the_shortest_chains():
    grid = {"tasks": ["trec", "mr", "bbc", "sms"], "seeds": [13, 21]}
    assert publishing.chains(grid)[:2] == [("trec", 13), ("trec", 21)]
    # trec (6 classes) and bbc (5) fine-tune three and 2.5 times as long as the two-class tasks
    assert publishing.daily(grid) == [("mr", 13), ("mr", 21), ("sms", 13), ("sms", 21)]
    assert publishing.daily({"tasks": ["trec", "bbc"], "seeds": [13]}) == [("bbc", 13)]


def test_publishing_the_store_as_it_is_keeps_what_is_published_and_skips_stale_entries(tmp_path, params,
                                                                                       monkeypatch):
    root, _ = _publish(tmp_path, params)
    before = set(json.loads((root / pub.MANIFEST).read_text())["entries"])
    store_root = tmp_path / "sweep-store"
    lab = _lab(params, root, store_root, threads=2)
    _, dspec, gspec = _chain(lab, {**params, "k": 3})  # a chain no page resolves, as a sweep of a larger grid would
    lab.predict("mr", Variant("graft", dspec, gspec))  # computes the fine-tune, the graft and its predictions
    monkeypatch.setenv("SKILLGRAFT_STORE", str(store_root))
    stored = {f"{e['kind']}/{e['key']}" for e in Store(store_root).entries()}
    report = publishing.snapshot(root)
    manifest = json.loads((root / pub.MANIFEST).read_text())
    assert stored - before and set(report.added) == stored - before and not report.dropped
    assert set(manifest["entries"]) == before | stored
    assert manifest["entries"][f"delta/{dspec.key}"]["recipe"] == "FineTune"
    assert pub.Published(root).check() == ([], [])  # every file whole
    with torch_threads(2), pytest.MonkeyPatch.context() as mp:  # read back with the store empty: nothing computed
        _no_compute(mp)
        fresh = _lab(params, root, tmp_path / "empty", threads=2)
        assert fresh.meta(dspec)["history"] and fresh.mask(gspec) is not None
    page = set(manifest["chapters"]["01_single_task_grafting"]["entries"])
    with torch_threads(2):  # the page republished with one seed: what only seed 21 used goes, the sweep's stays
        narrowed = publishing.publish(root, {"01_single_task_grafting": (None, {**params, "seeds": [13]})})
    manifest = json.loads((root / pub.MANIFEST).read_text())
    now = set(manifest["chapters"]["01_single_task_grafting"]["entries"])
    assert narrowed.dropped and set(narrowed.dropped) == page - now - stored
    assert stored <= set(manifest["entries"])
    monkeypatch.setattr(store_module, "_current_code", lambda modules: "changed")  # entries of other code
    again = publishing.snapshot(root)
    assert not again.added and again.kept == len(manifest["entries"])


def test_publish_stored_is_given_alone(tmp_path):
    from skillgraft import cli
    for argv in (["publish", "--stored", "--check"], ["publish", "--stored", "01"]):
        assert cli.main(argv + ["--root", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_published_entries_keep_what_each_step_cost_and_the_report_charges_it_to_its_chain(tmp_path, params):
    from skillgraft import costs

    root, _ = _publish(tmp_path, params)
    entries = json.loads((root / pub.MANIFEST).read_text())["entries"]
    timed = {n: e["seconds"] for n, e in entries.items() if "seconds" in e}
    assert set(timed) == set(entries) and all(v >= 0 for v in timed.values())  # every step was computed here
    table = costs.entry_costs(root).set_index("name")
    graft = next(n for n in entries if n.startswith("mask/"))
    assert table.loc[graft, "chain"] in ("fine-tuning mr, seed 13", "fine-tuning mr, seed 21")
    chains = costs.chain_costs(table.reset_index())
    assert set(chains.chain) == {"fine-tuning mr, seed 13", "fine-tuning mr, seed 21", "zero-shot"}
    assert chains.total.sum() * 60 == pytest.approx(sum(timed.values()))
    assert chains.steps.sum() == len(entries) and chains.untimed.sum() == 0
    text = costs.report(root)
    assert f"In all: {len(entries)} published steps, {len(entries)} of them timed" in text
    page = json.loads((root / pub.MANIFEST).read_text())["chapters"]["01_single_task_grafting"]["entries"]
    assert f"The book's pages resolve {len(page)} of these steps" in text
    assert f"takes {sum(timed[n] for n in page) / 3600:.2f} h of wall time at these costs." in text
    # what a chapter states of its own cost: the page's steps summed, per chain the median and the largest
    cost = costs.page_cost(root, "01_single_task_grafting")
    assert cost["seconds"] == pytest.approx(sum(timed[n] for n in page)) and cost["steps"] == len(page)
    per_chain = chains[chains.chain != "zero-shot"].set_index("chain").total * 60
    assert cost["chain_max"] == pytest.approx(per_chain.max()) and cost["largest"] == per_chain.idxmax()
    assert costs.page_cost(root, "02_calibration") is None
    from skillgraft import notebook
    sentence = notebook.cost_sentence("01_single_task_grafting", root)
    assert sentence.startswith("computed from nothing, its defaults cost about") and f"the {len(page)} published" in sentence


def test_the_cost_report_names_a_chain_by_its_fine_tune_and_what_of_its_trainer_differs():
    from skillgraft import costs

    spec = {"mode": "single", "tasks": ["mr"], "seed": 13,
            "finetune": {"optimizer": "sgd", "max_grad_norm": None, "ties": "later", "steps": 80}}
    assert costs.chain_name(spec) == "fine-tuning mr, seed 13"
    odd = {**spec, "finetune": {"optimizer": "adamw", "max_grad_norm": 1.0, "ties": "first"}}
    assert costs.chain_name(odd) == "fine-tuning mr, seed 13 (adamw, clipped at 1.0, ties to the first check)"
    assert costs.chain_name({**spec, "mode": "sequential", "tasks": ["mr", "trec"]}) == \
        "sequential fine-tuning mr → trec, seed 13"
    assert costs.chain_name({**spec, "mode": "multitask", "tasks": ["mr", "cr"]}).startswith("multi-task fine-tuning mr + cr")
