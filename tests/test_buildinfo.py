"""The book carries its own source: the build's archive of its commit, linked with its sha256."""
import hashlib
import importlib.util
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _buildinfo():
    spec = importlib.util.spec_from_file_location("buildinfo", ROOT / "book" / "_ext" / "buildinfo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_source_archive_holds_the_commit_with_its_results_and_notebooks(tmp_path):
    buildinfo = _buildinfo()
    if not buildinfo._git("rev-parse", "HEAD"):  # an unpacked archive: no commit to archive
        assert buildinfo.source_archive(tmp_path) is None
        return
    archive = buildinfo.source_archive(tmp_path)
    assert archive is not None and archive["path"].is_file()
    assert archive["sha256"] == hashlib.sha256(archive["path"].read_bytes()).hexdigest()
    prefix = f"skillgraft-{archive['commit'][:12]}/"
    with tarfile.open(archive["path"]) as tar:
        names = set(tar.getnames())
    for needed in ("results/MANIFEST.json", "notebooks/01_single_task_grafting.ipynb", "skillgraft/plan.py",
                   "Makefile", "CITATION.cff"):
        assert prefix + needed in names, needed
    links = buildinfo.source_links(archive)
    assert archive["name"] in links and archive["sha256"] in links and archive["commit"] in links
    assert "without a git checkout" not in links
    assert "outside a git checkout" in buildinfo.source_links(None)
