"""No measurement typed by hand in the pages that state results: every number a sentence of a
chapter, the results page, the introduction, the teaching page, the survey or the answers page
states is glued from the run that measured it (``{glue:text}``) or computed in a cell; what prose
may state is the paper's own numbers and the verdict rules' fixed thresholds.

The method, engineering and rerunning pages state no benchmark number either: they include the
benchmarks' reports (``benchmarks/results``) as written. The data page is not scanned: its
numbers are the pinned assets' versions and sizes, part of their specification."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")) + [
    ROOT / "book" / name for name in ("results.ipynb", "intro.md", "teaching.md", "survey.ipynb", "answers.ipynb",
                                      "method.md", "engineering.md", "rerunning.md", "execution.md")]

# The paper's numbers (0.01% of the parameters, >95% recovery, 40-90% lower ECE) and the rules'
# fixed thresholds (fit loss 0.01, "almost disjoint" below 10%, p < 0.05, 95% intervals; the spot
# check's tolerance: mean |Δp| 0.05, accuracy within 2 points, graft size within 10%).
ALLOWED = {"0.01%", "95%", "90%", "40%", "10%", "0.01", "0.05", "2 points"}

MEASUREMENT = re.compile(r"(?<![\w.\-])(\d[\d,]*(?:\.\d+)?\s?(?:%|×|\s(?:times|points?|pt|min|minutes|s|seconds|MB|GB)\b)"
                         r"|\d+\.\d+)")
NOT_PROSE = [re.compile(p, re.S) for p in (r"```.*?```", r"`[^`\n]*`", r"\$\$.*?\$\$", r"\$[^$\n]*\$",
                                           r"\{[a-z:\-]+\}", r"\(\w[\w-]*\)=", r"\[[^\]]*\]\([^)]*\)")]


def prose(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def typed_measurements(text: str) -> list[str]:
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return [m.group(1).strip() for m in MEASUREMENT.finditer(text) if m.group(1).strip() not in ALLOWED]


def test_the_scan_finds_typed_measurements_and_spares_glue_code_and_the_papers_numbers():
    assert typed_measurements("the graft recovers 97.3% of it, 0.87 against 0.92, in 12 min") == ["97.3%", "0.87", "0.92", "12 min"]
    assert typed_measurements("+4.5 points, 3.1 times faster, 425 MB") == ["4.5 points", "3.1 times", "425 MB"]
    assert typed_measurements("{glue:text}`/book/a.ipynb::x:s` and `sparsities = [1e-4, 0.5]` and $o = 0.5$") == []
    assert typed_measurements("about 0.01% of the parameters recover >95%, 40–90% lower; loss ≤ 0.01") == []
    assert typed_measurements("[SmolLM2 v1.5](https://example.org/v1.5) and (ex-1-1)=") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_measurement_is_typed_by_hand(page):
    found = typed_measurements(prose(page))
    assert not found, (f"{page.relative_to(ROOT)} states {found} in its prose: glue the number from the run that "
                       f"measured it ({{glue:text}}), or compute it in a cell")
