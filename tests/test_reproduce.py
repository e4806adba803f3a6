"""`make reproduce`: parts recomputed from nothing, compared with the published layer, recorded in its ledger."""
from __future__ import annotations

import gzip
import hashlib
import io
import json

import pytest

from skillgraft import cli, published as pub, publishing, recipes, reproduce
from skillgraft.sweep import torch_threads
from test_published import _no_compute, _publish, params, tamper, two_threads  # noqa: F401  (fixtures)
from test_tasks import corpora  # noqa: F401  (fixture: small corpora under a fresh SKILLGRAFT_HOME)


def _part(params, **changed):
    return reproduce.Part("mr", {"01_single_task_grafting": (None, {**params, **changed})})


def test_a_part_recomputed_from_nothing_is_recorded_then_skipped(tmp_path, params, monkeypatch):
    root, _ = _publish(tmp_path, params)
    part = _part(params)
    assert reproduce.check(root, [part]) == ["mr: not reproduced"]
    store = tmp_path / "reproduce"
    shown = io.StringIO()
    with torch_threads(2):
        assert reproduce.reproduce(root, store, [part], shown) == []
    # what a person sees while a part computes: what is left, the stages its steps report, the part's end (the
    # steps here are quicker than the watcher's polling, so only the end line is certain; it knows they ran)
    assert "reproduce: mr: then nothing left" in shown.getvalue()
    assert "[reproduce mr] done in" in shown.getvalue() and "no fine-tune, graft or prediction computed" not in \
        shown.getvalue()
    record = reproduce.ledger(root)["parts"]["mr"]
    layer = pub.Published(root)
    assert record["entries"] and set(record["entries"]) == layer.claimed()  # every entry the page uses, compared
    assert record["bit_for_bit"] == len(record["entries"]) and record["within_tolerance"] == 0
    steps = pub.cost_lines(store)  # the part's steps, each computed once into its own store
    assert steps and {s["key"] for s in steps} <= {n.split("/", 1)[1] for n in record["entries"]}
    assert record["compute_seconds"] == round(sum(s["seconds"] for s in steps), 1) and record["threads"] == 2
    assert {n.split("/", 1)[1] for n in record["step_seconds"]} == {s["key"] for s in steps}  # each step, by name
    assert all(layer.entries[n]["sha256"] == sha for n, sha in record["entries"].items())
    assert record["largest"] == {"accuracy": 0.0, "mask_size": 0.0, "mean_abs_prob": 0.0}  # bit for bit
    assert reproduce.check(root, [part]) == []
    assert "1 part(s) reproduced from nothing (mr)" in reproduce.summary(root)
    _no_compute(monkeypatch)  # a current record: the part is not computed again
    out = io.StringIO()
    with torch_threads(2):
        assert reproduce.reproduce(root, tmp_path / "another-empty-store", [part], out) == []
    assert "current" in out.getvalue()
    # another parameter is another experiment: the record no longer proves it
    assert reproduce.check(root, [_part(params, seeds=[13])]) == [
        "mr: its pages' parameters changed since it was reproduced"]


def test_the_summary_counts_a_step_two_parts_share_once():
    book = {"04": {"step_seconds": {"delta/a": 100.0, "probs/b": 1.0}, "compute_seconds": 101.0},
            "cr": {"step_seconds": {"delta/a": 100.0, "probs/c": 2.0}, "compute_seconds": 102.0},
            "old": {"compute_seconds": 5.0}}  # a record without its steps counts whole
    assert reproduce.compute_seconds(book) == 108.0  # the shared fine-tune once, not 208


def test_a_published_value_that_the_recomputation_does_not_give_is_reported_and_not_recorded(tmp_path, params):
    root, _ = _publish(tmp_path, params)
    part = _part(params)
    tamper(root, next(n for n in sorted(pub.Published(root).entries) if n.startswith("probs/")), (0, 1), 0.125)
    with torch_threads(2):
        differences = reproduce.reproduce(root, tmp_path / "reproduce", [part], io.StringIO())
    assert len(differences) == 1 and "probabilities" in str(differences[0]) and "at (0, 1)" in str(differences[0])
    assert reproduce.ledger(root)["parts"] == {} and reproduce.check(root, [part]) == ["mr: not reproduced"]


def test_a_republished_entry_makes_its_part_stale(tmp_path, params):
    root, _ = _publish(tmp_path, params)
    part = _part(params)
    with torch_threads(2):
        assert reproduce.reproduce(root, tmp_path / "reproduce", [part], io.StringIO()) == []
    manifest = json.loads((root / pub.MANIFEST).read_text())
    name = sorted(manifest["entries"])[0]
    manifest["entries"][name]["sha256"] = "0" * 64
    (root / pub.MANIFEST).write_text(json.dumps(manifest))
    (why,) = reproduce.check(root, [part])
    assert why.startswith("mr: 1 of its entries were republished or dropped") and name in why


def test_the_ledger_leaves_the_published_layer_as_it_was(tmp_path, params):
    root, _ = _publish(tmp_path, params)
    before = (root / pub.MANIFEST).read_bytes()
    with torch_threads(2):
        assert reproduce.reproduce(root, tmp_path / "reproduce", [_part(params)], io.StringIO()) == []
        publishing.publish(root, {"01_single_task_grafting": (None, params)})  # an idempotent publish keeps the ledger
    assert (root / pub.MANIFEST).read_bytes() == before and (root / reproduce.LEDGER).is_file()


def test_the_repositorys_parts_are_the_grids_units_then_the_survey():
    labels = [p.label for p in reproduce.parts()]
    assert labels[0] == "04" and labels[-1] == "survey" and "mr" in labels
    pages = {name for p in reproduce.parts() for name in p.pages}
    assert pages == set(publishing.PAGES)  # every page with an experiment is in some part


def test_the_command_refuses_an_unknown_part_and_the_check_fails_while_parts_are_missing(tmp_path, params, capsys):
    assert cli.main(["reproduce", "no-such-part", "--root", str(tmp_path)]) == 2
    assert "no part 'no-such-part'; accepted: 04, mr" in capsys.readouterr().err
    root, _ = _publish(tmp_path, params)
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "--check", "--root", str(root)])
    assert "not yet reproduced from nothing" in str(exc.value) and "04: not reproduced" in str(exc.value)


def _move(root, name, new_key, change):
    """Publish entry ``name`` under ``new_key`` with ``change`` made to its record: as another CPU would,
    whose numbers moved a step's key (a baseline the size of a graft one entry larger)."""
    manifest = json.loads((root / pub.MANIFEST).read_text())
    info = manifest["entries"].pop(name)
    body = json.loads(gzip.decompress((root / info["file"]).read_bytes()))
    change(body["record"])
    data = gzip.compress(json.dumps(body).encode())
    new = f"{name.split('/')[0]}/{new_key}"
    (root / f"{new}-moved.json.gz").write_bytes(data)
    manifest["entries"][new] = {**info, "file": f"{new}-moved.json.gz", "sha256": hashlib.sha256(data).hexdigest()}
    for page in manifest["chapters"].values():
        page["entries"] = [new if e == name else e for e in page["entries"]]
    (root / pub.MANIFEST).write_text(json.dumps(manifest))
    return new


def test_on_another_cpu_a_step_whose_key_moved_is_compared_with_its_twin(tmp_path, params, monkeypatch):
    root, _ = _publish(tmp_path, params)
    layer = pub.Published(root)
    old = next(n for n, e in sorted(layer.entries.items()) if e["recipe"] == "TopMovement")
    mask = _move(root, old, "f" * 64, lambda r: r["spec"].update(sparsity=r["spec"]["sparsity"] * 1.001))

    def repoint(record):
        record["spec"]["mask"]["key"] = "f" * 64
        record["inputs"] = [mask if i == old else i for i in record["inputs"]]

    made_from = [n for n in sorted(layer.entries) if n.startswith("probs/")
                 and (layer.body(n)["record"]["spec"].get("mask") or {}).get("key") == old.split("/")[1]]
    assert made_from  # the baseline's predictions: their keys move with it
    moved = [mask] + [_move(root, n, f"{i:x}" * 64, repoint) for i, n in enumerate(made_from, start=10)]
    part = _part(params)
    with torch_threads(2):  # on the CPU the layer was published from, keys must match
        differences = reproduce.reproduce(root, tmp_path / "reproduce", [part], io.StringIO())
    assert len(differences) == len(moved)  # the baseline and its predictions
    assert all("not published under its key on the machine kind it was published from" in str(d) for d in differences)
    assert reproduce.ledger(root)["parts"] == {}
    real = pub.machine
    monkeypatch.setattr(pub, "machine", lambda: {**real(), "cpu": "another CPU", "fingerprint": "0" * 16})
    with torch_threads(2):
        assert reproduce.reproduce(root, tmp_path / "reproduce", [part], io.StringIO()) == []
    record = reproduce.ledger(root)["parts"]["mr"]
    assert set(moved) <= set(record["entries"]) and old not in record["entries"]
    assert record["bit_for_bit"] == 0 and record["within_tolerance"] == len(record["entries"])
    assert "0 of them bit for bit" in reproduce.summary(root) and "another CPU" in reproduce.summary(root)
    assert reproduce.check(root, [part]) == []
    with torch_threads(2):  # twice the size is not the same baseline
        _move(root, mask, "a" * 64, lambda r: r["spec"].update(sparsity=r["spec"]["sparsity"] * 2))
        (root / reproduce.LEDGER).unlink()
        differences = reproduce.reproduce(root, tmp_path / "reproduce", [part], io.StringIO())
    assert differences and all("is not published" in str(d) for d in differences)


def test_the_reproductions_table_renders_each_part_of_the_ledger(tmp_path):
    """The book's Reproductions page: one row per part, recorded or not, with what its record says."""
    import json
    import shutil

    from skillgraft import reproduce
    from skillgraft.parameters import repo_root

    results = tmp_path / "results"
    shutil.copytree(repo_root() / "results", results)
    text = reproduce.table(results)
    lines = text.strip().splitlines()
    labels = [p.label for p in reproduce.parts()]
    assert len(lines) == 2 + len(labels)
    assert all(line.count(" | ") == 7 for line in lines[2:])          # eight cells: no pipe inside one
    book = json.loads((results / "REPRODUCED.json").read_text())["parts"]
    for label, line in zip(labels, lines[2:]):
        assert line.startswith(f"| {label} | ")
        assert ("| not reproduced |" in line) == (label not in book)
    # a republished entry makes its part's record stale, and the table says so
    book_04 = book["04"]
    name = next(iter(book_04["entries"]))
    ledger = json.loads((results / "REPRODUCED.json").read_text())
    ledger["parts"]["04"]["entries"][name] = "0" * 64
    (results / "REPRODUCED.json").write_text(json.dumps(ledger))
    assert "were republished or dropped since it was reproduced" in reproduce.table(results).splitlines()[2]


def test_a_twin_differs_only_in_its_sparsity_within_the_tolerance():
    from skillgraft.reproduce import _like

    spec = {"delta": {"recipe": "FineTune", "key": "a"}, "sparsity": 1.0e-5, "graft": {"lr": 1e8, "seed": 0}}
    assert _like({**spec, "sparsity": 1.05e-5}, spec, {})                       # a graft one entry larger
    assert not _like({**spec, "sparsity": 1.2e-5}, spec, {})
    assert not _like({**spec, "graft": {"lr": 1.05e8, "seed": 0}}, spec, {})     # another learning rate: no twin
    assert _like({**spec, "delta": {"recipe": "FineTune", "key": "b"}}, spec, {"b": "a"})
