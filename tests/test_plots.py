"""Tests for skillgraft.plots: each figure builds from a small synthetic frame, is titled, and saves as PNG."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from skillgraft import metrics, plots  # noqa: E402

TASKS = ["sst2", "agnews"]
SEEDS = [13, 21, 42]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _titles(fig) -> list[str]:
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return [sup] + [ax.get_title() for ax in fig.axes if ax.get_title()]


MAX_WIDTH = 6.6  # inches, as the book shows it (tight box): wider figures shrink their text on a phone


def _save(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    assert path.exists() and path.stat().st_size > 0
    # the notebooks' inline backend saves with a tight box: titles and legends must not widen it
    fig.savefig(tmp_path / f"{name}.svg", bbox_inches="tight")
    text = (tmp_path / f"{name}.svg").read_text()
    width = float(re.search(r'width="([\d.]+)pt"', text).group(1)) / 72
    assert width <= MAX_WIDTH, f"{name} is {width:.2f} in wide as shown"
    return path


def _single_task_frame():
    """The single-task results frame: zero-shot, fine-tuned and three mask variants at three sparsities."""
    rng = np.random.default_rng(0)
    rows = []
    for task in TASKS:
        for seed in SEEDS:
            rows.append(dict(task=task, seed=seed, variant="zero-shot", sparsity=np.nan, mask_size=np.nan, accuracy=0.6))
            rows.append(dict(task=task, seed=seed, variant="fine-tuned", sparsity=np.nan, mask_size=np.nan, accuracy=0.9))
            for variant, base in [("graft", 0.85), ("top-movement", 0.8), ("random", 0.62)]:
                for s in (1e-5, 1e-4, 1e-3):
                    rows.append(dict(task=task, seed=seed, variant=variant, sparsity=s, mask_size=s * 85e6,
                                     accuracy=base + 0.02 * np.log10(s / 1e-5) + rng.normal(0, 0.01)))
    df = pd.DataFrame(rows)
    return df.assign(ece=rng.uniform(0, 0.2, len(df)), brier=rng.uniform(0.1, 0.3, len(df)), nll=rng.uniform(0.3, 0.7, len(df)))


@pytest.fixture
def single_task():
    return _single_task_frame()


def test_variant_colors_cover_all_variants():
    expected = {"zero-shot", "fine-tuned", "fine-tuned+TS", "graft", "top-movement", "random",
                "stitched", "sequential", "multitask"}
    assert set(plots.VARIANT_COLORS) == expected
    assert len(set(plots.VARIANT_COLORS.values())) == len(expected)
    pal = plots.variant_palette(["graft", "mystery"])
    assert pal["graft"] == plots.VARIANT_COLORS["graft"] and pal["mystery"] not in plots.VARIANT_COLORS.values()


def test_accuracy_vs_sparsity(single_task, tmp_path):
    fig = plots.accuracy_vs_sparsity(single_task)
    assert len(fig.axes) == len(TASKS)
    assert all(_titles(fig)) and {ax.get_title() for ax in fig.axes} == set(TASKS)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    # graft line: x in percent, in the variant's colour; references are horizontal lines at the seed mean
    assert np.allclose(lines["graft"].get_xdata(), [1e-3, 1e-2, 1e-1])
    assert to_hex(lines["graft"].get_color()) == plots.VARIANT_COLORS["graft"].lower()
    assert np.allclose(lines["fine-tuned (mean)"].get_ydata(), 0.9)
    assert fig.legends, "figure legend missing"
    _save(fig, tmp_path, "accuracy_vs_sparsity")


def test_accuracy_vs_sparsity_errors(single_task):
    with pytest.raises(ValueError, match="lacks column"):
        plots.accuracy_vs_sparsity(single_task.drop(columns="sparsity"))
    with pytest.raises(ValueError, match="no rows with a sparsity"):
        plots.accuracy_vs_sparsity(single_task, variants=("stitched",))


def test_mask_location(tmp_path):
    rows = []
    for task in TASKS:
        for seed in (1, 2):
            shares = np.random.default_rng(seed).dirichlet(np.ones(12))  # 4 layers × 3 modules
            for k, (layer, module) in enumerate((l, m) for l in range(4) for m in ("attention", "mlp", "norm")):
                rows.append(dict(task=task, seed=seed, layer=layer, module=module, share=shares[k]))
    df = pd.DataFrame(rows)
    fig = plots.mask_location(df)
    assert len(fig.axes) == len(TASKS) and all(_titles(fig))
    # stacked bars: the tops of the last module's bars sum to 1 per task (shares averaged over seeds)
    bars = [p for p in fig.axes[0].patches]
    tops = [p.get_y() + p.get_height() for p in bars[-4:]]
    assert sum(tops) == pytest.approx(1.0)
    _save(fig, tmp_path, "mask_location")


def _bins_frame():
    rng = np.random.default_rng(1)
    frames = []
    for task in TASKS:
        for variant, temp in [("fine-tuned", 0.4), ("graft", 1.0)]:
            z = rng.normal(scale=2, size=(400, 2))
            labels = (rng.random(400) > metrics.softmax(z)[:, 0]).astype(int)
            probs = metrics.softmax(z, temperature=temp)
            frames.append(metrics.reliability_bins(probs, labels).assign(task=task, variant=variant))
    return pd.concat(frames, ignore_index=True)


def test_reliability_diagrams(tmp_path):
    df = _bins_frame()
    fig = plots.reliability_diagrams(df)
    shown = [ax for ax in fig.axes if ax.get_visible()]  # one panel per task and variant, 2 to a row
    assert len(shown) == 2 * 2 and len(fig.axes) == 4 and all(ax.get_title() for ax in shown)
    assert all("ECE = " in ax.get_title() for ax in shown)
    assert fig.get_figwidth() <= 6.5  # narrow enough that a phone does not shrink its text far
    fig2 = plots.reliability_diagrams(df, ece={("sst2", "graft"): 0.123})
    assert "ECE = 0.123" in fig2.axes[1].get_title() and "sst2 · graft" in fig2.axes[1].get_title()
    _save(fig, tmp_path, "reliability")


def test_reliability_diagrams_ece_from_bins_matches_metrics():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1, 1], size=300)
    labels = rng.integers(0, 3, 300)
    df = metrics.reliability_bins(probs, labels).assign(task="t", variant="graft")
    fig = plots.reliability_diagrams(df)
    assert f"ECE = {metrics.ece(probs, labels):.3f}" in fig.axes[0].get_title()


def test_metric_bars(single_task, tmp_path):
    df = single_task[single_task["sparsity"].isna() | (single_task["sparsity"] == 1e-4)]
    fig = plots.metric_bars(df, "ece")
    assert len(fig.axes) == len(TASKS) and all(_titles(fig))
    fig = plots.metric_bars(df, "brier", x="task", hue="variant", col=None)
    assert len(fig.axes) == 1 and fig.legends
    _save(fig, tmp_path, "metric_bars")
    with pytest.raises(ValueError, match="calibration_error"):
        plots.metric_bars(df, "calibration_error")


def test_ood_accuracy(tmp_path):
    rng = np.random.default_rng(3)
    rows = [dict(source=s, target=t, variant=v, seed=seed, accuracy=rng.uniform(0.5, 0.9))
            for s, targets in [("sst2", ["imdb", "sst2", "yelp"]), ("mnli", ["mnli", "snli", "hans"])]
            for t in targets for v in ("fine-tuned", "graft") for seed in SEEDS]
    fig = plots.ood_accuracy(pd.DataFrame(rows))
    assert len(fig.axes) == 2 and all(_titles(fig))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[0] == "sst2 (in-dist.)" and ticks[1:] == ["imdb", "yelp"]
    _save(fig, tmp_path, "ood")
    # many panels wrap into rows of at most two, with the axis labels on the outer panels only
    many = pd.DataFrame([dict(source=s, target=t, variant="graft", seed=13, accuracy=0.7)
                         for s in ("a", "b", "c") for t in (s, "x")])
    fig = plots.ood_accuracy(many)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(shown) == 3 and len({round(ax.get_position().y0, 3) for ax in shown}) == 2
    assert [bool(ax.get_ylabel()) for ax in shown] == [True, False, True]


def test_heatmap_and_heatmaps(tmp_path):
    names = ["sst2", "agnews", "trec"]
    a = pd.DataFrame(np.eye(3) * 0.9 + 0.05, index=pd.Index(names, name="mask i"), columns=pd.Index(names, name="mask j"))
    b = a * 0.5
    fig = plots.heatmap(a, "Overlap |γ_i ∩ γ_j| / |γ_j|")
    assert len(fig.axes) == 2 and fig.axes[0].get_title()
    assert len(fig.axes[0].texts) == 9  # one annotation per cell
    _save(fig, tmp_path, "heatmap")
    fig = plots.heatmaps({"observed": a, "random": b}, "Observed vs chance overlap")
    assert len(fig.axes) == 3 and all(_titles(fig))
    # shared colour scale over both matrices
    for ax in fig.axes[:2]:
        assert ax.collections[0].get_clim() == pytest.approx((0.025, 0.95))
    _save(fig, tmp_path, "heatmaps")
    with pytest.raises(ValueError, match="non-empty"):
        plots.heatmaps({}, "nothing")


def test_similarity_vs_overlap(tmp_path):
    df = pd.DataFrame(dict(pair=["sst2–mr", "sst2–cr", "sst2–agnews", "mr–trec"],
                           similarity=[0.9, 0.8, 0.3, 0.1], overlap=[0.2, 0.15, 0.02, 0.01],
                           kind=["sentiment–sentiment"] * 2 + ["sentiment–topic"] * 2))
    fig = plots.similarity_vs_overlap(df)
    assert len(fig.axes) == 1
    assert "Spearman ρ = 1.00" in fig.axes[0].get_title()
    assert len(fig.axes[0].texts) == 4  # every pair labelled
    _save(fig, tmp_path, "similarity")


def test_forest_marks_each_task_and_the_pool(tmp_path):
    df = pd.DataFrame(dict(label=["mr", "sms", "pooled"], estimate=[0.99, 0.96, 0.975], low=[0.96, 0.93, 0.955],
                           high=[1.02, 0.99, 0.99], verdict=["holds", "inconclusive", "holds"]))
    fig = plots.forest(df, "Recovery, graft / fine-tuned accuracy", "recovery (%)", threshold=0.95, scale=100)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mr  (holds)", "sms  (inconclusive)", "pooled  (holds)"]
    assert [t.get_position()[1] for t in ax.get_yticklabels()] == [2, 1, 0]  # the first task on top, the pool last
    lines = [l for l in ax.get_lines() if len(l.get_xdata()) == 2 and l.get_xdata()[0] != l.get_xdata()[1]]
    assert sorted(tuple(np.round(l.get_xdata(), 6)) for l in lines) == [(93.0, 99.0), (95.5, 99.0), (96.0, 102.0)]
    assert ax.get_lines()[-1].get_xdata()[0] == pytest.approx(95.0)  # the claim's threshold
    _save(fig, tmp_path, "forest")
    with pytest.raises(ValueError, match="lacks column"):
        plots.forest(df.drop(columns="verdict"), "x", "y")


def test_claims_matrix_colours_and_names_every_cell(tmp_path):
    df = pd.DataFrame(dict(claim=["C1", "C1", "C2"], task=["mr", "sms", "mr"],
                           verdict=["holds", "not testable here", "fails"]))
    fig = plots.claims_matrix(df, "Verdicts by task")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["fails", "holds", "n/t", "–"]  # C2 was not run on sms
    colours = {p.get_facecolor()[:3] for p in fig.axes[0].patches}
    assert len(colours) == 4  # holds, fails, not testable, not run
    _save(fig, tmp_path, "claims")


def test_accuracy_by_task_one_row_per_task(single_task, tmp_path):
    fig = plots.accuracy_by_task(single_task)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(dict.fromkeys(single_task.task))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "graft" in labels and "fine-tuned" in labels
    _save(fig, tmp_path, "by_task")
    with pytest.raises(ValueError, match="no rows of variants"):
        plots.accuracy_by_task(single_task, variants=("nothing",))


def test_similarity_vs_overlap_keys_numbered_points():
    pairs = [f"t{i}–t{j}" for i in range(6) for j in range(i + 1, 6)]  # 15 pairs
    df = pd.DataFrame(dict(pair=pairs, similarity=np.linspace(0, 1, 15), overlap=np.linspace(0.1, 0.3, 15)))
    fig = plots.similarity_vs_overlap(df)
    assert [t.get_text() for t in fig.axes[0].texts] == [str(n) for n in range(1, 16)]
    assert "15 t4–t5" in fig.texts[0].get_text() and "1 t0–t1" in fig.texts[0].get_text()


def test_similarity_vs_overlap_colours_pairs_by_shared_family_and_keeps_numbers_apart():
    df = pd.DataFrame(dict(pair=["mr–cr", "mr–trec", "cr–trec", "trec–sms"], similarity=[0.4, 0.1, 0.1, 0.2],
                           overlap=[0.35, 0.2, 0.2, 0.25],
                           kind=["sentiment–sentiment", "question–sentiment", "question–sentiment", "question–spam"]))
    fig = plots.similarity_vs_overlap(df)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["same family", "across families"]
    offsets = [t.xyann for t in ax.texts]
    assert offsets[1] != offsets[2]  # two pairs on one point: their numbers do not overlap
