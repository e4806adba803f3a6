"""`make reproduce`: parts recomputed from nothing, compared with the published layer, recorded in its ledger."""
from __future__ import annotations

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
    with torch_threads(2):
        assert reproduce.reproduce(root, store, [part], io.StringIO()) == []
    record = reproduce.ledger(root)["parts"]["mr"]
    layer = pub.Published(root)
    assert record["entries"] and set(record["entries"]) == layer.claimed()  # every entry the page uses, compared
    assert record["bit_for_bit"] == len(record["entries"]) and record["within_tolerance"] == 0
    assert record["compute_seconds"] > 0 and record["threads"] == 2
    assert all(layer.entries[n]["sha256"] == sha for n, sha in record["entries"].items())
    assert reproduce.check(root, [part]) == []
    assert "1 parts reproduced from nothing" in reproduce.summary(root)
    _no_compute(monkeypatch)  # a current record: the part is not computed again
    out = io.StringIO()
    with torch_threads(2):
        assert reproduce.reproduce(root, tmp_path / "another-empty-store", [part], out) == []
    assert "current" in out.getvalue()
    # another parameter is another experiment: the record no longer proves it
    assert reproduce.check(root, [_part(params, seeds=[13])]) == [
        "mr: its pages' parameters changed since it was reproduced"]


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
