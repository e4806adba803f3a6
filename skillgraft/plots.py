"""Every figure of the book, drawn from the tidy frames that the chapters (:mod:`skillgraft.chapters`) return.

Each function takes a DataFrame (schema in its docstring), returns a matplotlib
``Figure`` with a title, axis labels and a legend, so that it reads without the text,
and never shows it. One colour per variant, :data:`VARIANT_COLORS` (Okabe–Ito based,
colour-blind safe), is used in every figure so that "graft" looks the same throughout
the book. The backend is left to the caller (notebooks, or ``MPLBACKEND=Agg`` in tests).
"""
from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .metrics import rank_correlation

__all__ = [
    "VARIANT_COLORS", "MODULE_COLORS", "variant_palette",
    "accuracy_vs_sparsity", "accuracy_by_task", "mask_location", "reliability_diagrams", "metric_bars",
    "ood_accuracy", "heatmap", "heatmaps", "similarity_vs_overlap", "VERDICT_COLORS", "forest", "claims_matrix",
]

log = logging.getLogger(__name__)

VARIANT_COLORS: dict[str, str] = {
    "zero-shot": "#999999",      # grey: the pre-trained model, a reference
    "fine-tuned": "#0072B2",     # blue
    "fine-tuned+TS": "#56B4E9",  # sky blue: fine-tuned with temperature scaling
    "graft": "#D55E00",          # vermillion: the paper's localized graft
    "top-movement": "#E69F00",   # orange: largest |δ| baseline
    "random": "#8C510A",         # brown: random mask baseline
    "stitched": "#CC79A7",       # reddish purple
    "sequential": "#000000",     # black
    "multitask": "#009E73",      # bluish green
}
MODULE_COLORS: dict[str, str] = {"attention": "#0072B2", "mlp": "#E69F00", "norm": "#999999"}
_EXTRA = sns.color_palette("dark", 10).as_hex()  # for variants or modules not listed above
_PANEL = (3.6, 2.9)  # inches per panel (width, height)
_WIDTH = 6.2         # inches: at most; a phone shows a figure at ~370 px, so the text must not shrink far
_MAX_COLS = 2        # panels per row before a grid wraps
_NARROW = 2.3        # inches per panel of a grid of small square panels (reliability diagrams, heatmaps)
_MARKERS = {"graft": ("o", "-"), "top-movement": ("s", "--"), "random": ("^", ":")}  # lines that coincide stay apart
_LABELS = {"ece": "ECE", "nll": "NLL", "brier": "Brier score", "accuracy": "accuracy"}  # axis names of metric columns


BOOK_STYLE = {"font.size": 11, "axes.titlesize": 11.5, "axes.labelsize": 11, "xtick.labelsize": 10,
              "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12}


def book_style() -> None:
    """The book's type sizes for figures (what :func:`skillgraft.notebook.setup` sets): legible at
    the width a phone shows a figure. Importing this module changes no setting."""
    plt.rcParams.update(BOOK_STYLE)


# ----------------------------------------------------------------------------- helpers
def _require(df, columns: Iterable[str], where: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: frame lacks column(s) {missing}; expected columns {list(columns)}, got {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{where}: frame is empty")
    return df


def _order(values: Iterable, preferred: Sequence = ()) -> list:
    """Unique values: those in ``preferred`` first (in its order), then the rest as they appear."""
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _colors(keys: Sequence, table: Mapping[str, str]) -> dict:
    extra = iter(_EXTRA * (1 + len(keys) // len(_EXTRA)))
    return {k: table[k] if k in table else next(extra) for k in keys}


def variant_palette(variants: Iterable[str]) -> dict[str, str]:
    """Colours for ``variants``: :data:`VARIANT_COLORS` where listed, a fallback otherwise."""
    return _colors(_order(variants, list(VARIANT_COLORS)), VARIANT_COLORS)


def _wrap(text: str, width: float, size: float | None = None) -> str:
    """``text`` broken into lines that fit ``width`` inches at font ``size`` (points; the
    figure title's by default), so that no title widens its figure past the page."""
    size = size or plt.rcParams["figure.titlesize"]
    size = size if isinstance(size, (int, float)) else 12
    chars = max(16, int(width * 72 / (0.52 * size)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _grid(n_rows: int, n_cols: int, title: str, width: float | None = None, **kw) -> tuple[Figure, np.ndarray]:
    width = width or min(_PANEL[0] * n_cols, _WIDTH)
    height = _PANEL[1] * n_rows * (width / (_PANEL[0] * n_cols)) ** 0.5 + 0.6
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False, layout="constrained", **kw)
    fig.suptitle(_wrap(title, width))
    return fig, axes


def _facets(n: int, title: str, width: float | None = None, **kw) -> tuple[Figure, list]:
    """A figure of ``n`` panels wrapped into rows of at most :data:`_MAX_COLS` (so eight tasks never squeeze into
    one row and the text keeps its size at the book's narrowest width); unused cells hidden. Returns the figure
    and the ``n`` axes in reading order."""
    n_cols = max(1, min(n, _MAX_COLS))
    fig, axes = _grid(-(-n // n_cols), n_cols, title, width=width, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _outer_labels(axes: list, n_cols: int, xlabel: str, ylabel: str) -> None:
    """Axis labels on the outer panels only: the y label on the first column, the x label on the last row."""
    n = len(axes)
    for i, ax in enumerate(axes):
        ax.set_ylabel(ylabel if i % n_cols == 0 else "")
        ax.set_xlabel(xlabel if i >= n - n_cols else "")


def _figure_legend(fig: Figure, axes) -> None:
    """One legend for the whole figure, below the panels, from the labelled artists of all axes."""
    handles = {}
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:  # as many columns as fit the figure's width, so the legend never widens it
        longest = max(len(str(k)) for k in handles)
        fits = int(fig.get_figwidth() / (0.35 + 0.085 * longest))
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=max(1, min(len(handles), fits)),
                   frameon=False)


# ----------------------------------------------------------------------------- single-task grafting
def accuracy_vs_sparsity(df: pd.DataFrame, variants: Sequence[str] = ("graft", "top-movement", "random"),
                         references: Sequence[str] = ("fine-tuned", "zero-shot"), title: str | None = None) -> Figure:
    """Test accuracy against mask sparsity, one panel per task.

    Frame: the single-task results frame, columns ``task, seed, variant, sparsity``
    (fraction |γ|/N of graftable parameters; NaN for variants without a mask) and
    ``accuracy``. Mask ``variants`` are drawn as mean lines with a ±1 sd band over seeds;
    ``references`` (no mask) as dashed horizontal lines at their mean over seeds.
    """
    _require(df, ["task", "seed", "variant", "sparsity", "accuracy"], "accuracy_vs_sparsity")
    masked = df[df["variant"].isin(variants) & df["sparsity"].notna()]
    if masked.empty:
        raise ValueError(f"accuracy_vs_sparsity: no rows with a sparsity for variants {list(variants)}; "
                         f"variants present: {sorted(df['variant'].unique())}")
    tasks = _order(df["task"])
    colors = variant_palette(list(df["variant"]))
    n_seeds = df["seed"].nunique()
    cols = min(len(tasks), _MAX_COLS)
    rows = -(-len(tasks) // cols)
    fig, axes = _grid(rows, cols, title or f"Accuracy of masked models vs sparsity (mean ± sd over {n_seeds} seed(s))")
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.ravel(), tasks):
        sub = df[df["task"] == task]
        for v in _order(masked["variant"], variants):
            g = sub[(sub["variant"] == v) & sub["sparsity"].notna()].groupby("sparsity")["accuracy"].agg(["mean", "std"])
            if g.empty:
                continue
            x, sd = g.index.to_numpy() * 100, g["std"].fillna(0).to_numpy()  # percent of graftable parameters
            marker, style = _MARKERS.get(v, ("o", "-"))
            ax.plot(x, g["mean"], marker=marker, linestyle=style, markersize=7 if v == "graft" else 6,
                    markerfacecolor="white" if v != "graft" else colors[v], markeredgewidth=1.5,
                    color=colors[v], label=v, zorder=4 if v == "graft" else 3)
            ax.fill_between(x, g["mean"] - sd, g["mean"] + sd, color=colors[v], alpha=0.2, linewidth=0)
        for v, style in zip(references, ("--", (0, (1, 1.5)))):  # above the mask lines, told apart by their dashes
            ref = sub.loc[sub["variant"] == v, "accuracy"]
            if len(ref):
                ax.axhline(ref.mean(), color=colors.get(v, "black"), linestyle=style, linewidth=2, zorder=5,
                           label=f"{v} (mean)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))  # decades only: their labels never run into each other
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set(title=task, xlabel="mask size (% of graftable parameters)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return fig


def accuracy_by_task(df: pd.DataFrame, variants: Sequence[str] = ("zero-shot", "fine-tuned", "graft", "top-movement",
                                                                  "random"), title: str | None = None) -> Figure:
    """Test accuracy of each variant on each task, one row per task (mean over seeds, a bar of ±1 sd):
    a grid of many tasks reads on one narrow figure. Frame: columns ``task, seed, variant, accuracy``."""
    _require(df, ["task", "seed", "variant", "accuracy"], "accuracy_by_task")
    sub = df[df["variant"].isin(variants)]
    if sub.empty:
        raise ValueError(f"accuracy_by_task: no rows of variants {list(variants)}; present: {sorted(df.variant.unique())}")
    tasks, present = _order(sub["task"]), _order(sub["variant"], variants)
    colors = variant_palette(present)
    stats = sub.groupby(["task", "variant"])["accuracy"].agg(["mean", "std"])
    fig, ax = plt.subplots(figsize=(_WIDTH * 0.8, 1.2 + 0.45 * len(tasks)), layout="constrained")
    offsets = np.linspace(-0.28, 0.28, len(present)) if len(present) > 1 else [0.0]
    for off, v in zip(offsets, present):
        marker, _ = _MARKERS.get(v, ("o", "-"))
        for i, task in enumerate(tasks):
            if (task, v) not in stats.index:
                continue
            m, sd = stats.loc[(task, v)]
            ax.errorbar(m, i + off, xerr=0 if np.isnan(sd) else sd, fmt=marker, color=colors[v], ms=6,
                        markerfacecolor="white" if v in ("top-movement", "random") else colors[v],
                        label=v if i == 0 else None, capsize=2)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_ylim(len(tasks) - 0.5, -0.5)
    ax.set_xlabel("test accuracy")
    ax.grid(axis="x", alpha=0.3)
    n_seeds = sub["seed"].nunique()
    ax.set_title(_wrap(title or f"Test accuracy by task (mean ± sd over {n_seeds} seed(s))", _WIDTH * 0.8))
    _figure_legend(fig, [ax])
    return fig


def mask_location(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Where the mask sits: share of mask entries per layer, stacked by module, one panel per task.

    Frame: columns ``task, layer`` (int), ``module`` ("attention" | "mlp" | "norm") and
    ``share`` (fraction of the mask; sums to 1 per task and seed). With a ``seed``
    column, shares are averaged over seeds (a missing layer counts as 0).
    """
    _require(df, ["task", "layer", "module", "share"], "mask_location")
    tasks, layers = _order(df["task"]), sorted(df["layer"].unique())
    modules = _order(df["module"], list(MODULE_COLORS))
    colors = _colors(modules, MODULE_COLORS)
    fig, axes = _facets(len(tasks), title or "Where the graft mask sits: share of its entries per layer and module",
                        sharey=True)
    for ax, task in zip(axes, tasks):
        sub = df[df["task"] == task].assign(seed=df["seed"] if "seed" in df else 0)
        seeds = sub["seed"].unique()
        table = (sub.groupby(["seed", "layer", "module"])["share"].sum().unstack("module")
                 .reindex(pd.MultiIndex.from_product([seeds, layers], names=["seed", "layer"]))
                 .reindex(columns=modules).fillna(0.0).groupby("layer").mean())  # (layers, modules)
        bottom = np.zeros(len(layers))
        for m in modules:
            ax.bar(layers, table[m], bottom=bottom, color=colors[m], label=m, width=0.8)
            bottom += table[m].to_numpy()
        ax.set(title=task)
        ax.set_xticks(layers if len(layers) <= 12 else [l for l in layers if l % 10 == 0])
        ax.grid(axis="y", alpha=0.3)
    _outer_labels(axes, min(len(tasks), _MAX_COLS), "layer", "share of mask entries")
    _figure_legend(fig, axes)
    return fig


# ----------------------------------------------------------------------------- calibration
def _pool_bins(sub: pd.DataFrame) -> pd.DataFrame:
    """Merge rows of the same bin (e.g. seeds), weighting confidence and accuracy by count."""
    w = sub.assign(cw=sub["confidence"].fillna(0) * sub["count"], aw=sub["accuracy"].fillna(0) * sub["count"])
    g = w.groupby("bin").agg(lower=("lower", "first"), upper=("upper", "first"), count=("count", "sum"),
                             cw=("cw", "sum"), aw=("aw", "sum"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return g.assign(confidence=g["cw"] / g["count"], accuracy=g["aw"] / g["count"]).reset_index()


def reliability_diagrams(df: pd.DataFrame, ece: Mapping | None = None, title: str | None = None) -> Figure:
    """Reliability diagrams: rows = tasks, columns = variants.

    Frame: columns ``task, variant, bin, lower, upper, count, confidence, accuracy``
    (one :func:`skillgraft.metrics.reliability_bins` frame per task and variant, stacked;
    rows of several seeds are pooled by count). Bars show the accuracy per confidence
    bin, hatched bars the gap to the bin's mean confidence, the dashed line perfect
    calibration. Each title carries the ECE: from ``ece`` (a mapping
    ``{(task, variant): value}``), else the mean of an ``ece`` column, else computed
    from the pooled bins.
    """
    _require(df, ["task", "variant", "bin", "lower", "upper", "count", "confidence", "accuracy"], "reliability_diagrams")
    tasks, variants = _order(df["task"]), _order(df["variant"], list(VARIANT_COLORS))
    colors = variant_palette(variants)
    panels = [(t, v) for t in tasks for v in variants]
    n_cols = min(len(panels), _MAX_COLS)
    n_rows = -(-len(panels) // n_cols)
    fig, axes = _grid(n_rows, n_cols, title or "Reliability diagrams (10 equal-width bins of top-class confidence)",
                      width=min(_WIDTH, _NARROW * n_cols + 0.3), sharex=True, sharey=True)
    flat = list(axes.ravel())
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, (task, variant) in zip(flat, panels):
        sub = df[(df["task"] == task) & (df["variant"] == variant)]
        ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, zorder=3, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1))
        name = variant if len(tasks) == 1 else f"{task} · {variant}"
        if sub.empty:
            ax.set_title(f"{name}\n(no data)")
            continue
        b = _pool_bins(sub)
        full = b[b["count"] > 0]
        width = (full["upper"] - full["lower"]).to_numpy()
        ax.bar(full["lower"], full["accuracy"], width=width, align="edge", color=colors[variant],
               edgecolor="black", linewidth=0.5, label="accuracy in bin")
        ax.bar(full["lower"], full["confidence"] - full["accuracy"], bottom=full["accuracy"], width=width,
               align="edge", facecolor="none", edgecolor="#333333", hatch="///", linewidth=0.5,
               label="gap to mean confidence")
        if ece is not None and (task, variant) in ece:
            value = ece[(task, variant)]
        elif "ece" in sub:
            value = sub["ece"].mean()
        else:
            value = float(np.sum(full["count"] * np.abs(full["accuracy"] - full["confidence"])) / b["count"].sum())
        ax.set_title(f"{name}\nECE = {value:.3f}")
    for r in range(n_rows):
        axes[r, 0].set_ylabel("accuracy")
    for ax in flat[:len(panels)][-n_cols:]:  # the lowest panel of each column carries the x axis
        ax.set_xlabel("confidence")
        ax.xaxis.set_tick_params(labelbottom=True)
    if len(tasks) == 1:
        fig.suptitle(f"{fig.get_suptitle()}: {tasks[0]}")
    _figure_legend(fig, axes)
    return fig


def metric_bars(df: pd.DataFrame, metric: str, x: str = "variant", hue: str | None = None,
                col: str | None = "task", title: str | None = None, sharey: bool = True) -> Figure:
    """Grouped bars of ``metric``: mean over seeds, ±1 sd whiskers, one dot per row (seed).

    Frame: tidy, with columns ``metric``, ``x`` and, if given, ``hue`` and ``col`` (one
    panel per value of ``col``). Used for ECE / Brier / NLL by variant and for OOD
    accuracy per target set. Variants keep their colours from :data:`VARIANT_COLORS`.
    """
    _require(df, [c for c in (metric, x, hue, col) if c is not None], "metric_bars")
    colour_by = hue or x
    preferred = list(VARIANT_COLORS) if colour_by == "variant" else []
    hue_order = _order(df[colour_by], preferred)
    palette = variant_palette(hue_order) if colour_by == "variant" else dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order))))
    x_order = _order(df[x], list(VARIANT_COLORS) if x == "variant" else [])
    panels = _order(df[col]) if col else [None]
    label = _LABELS.get(metric, metric.replace("_", " "))
    fig, axes = _facets(len(panels), title or f"{label} by {x} (bars: mean, whiskers: ±1 sd, dots: seeds)",
                        sharey=sharey)
    for ax, value in zip(axes, panels):
        sub = df if value is None else df[df[col] == value]
        here = set(sub[x])  # a panel shows only its own categories (a source's own targets)
        common = dict(data=sub, x=x, y=metric, hue=colour_by, order=[v for v in x_order if v in here],
                      hue_order=hue_order, ax=ax)
        sns.barplot(**common, palette=palette, errorbar="sd", capsize=0.1, legend=hue is not None)
        sns.stripplot(**common, palette={h: "black" for h in hue_order}, dodge=hue is not None, size=3,
                      alpha=0.6, legend=False)
        ax.set(title=str(value) if value is not None else label)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    _outer_labels(axes, min(len(panels), _MAX_COLS), "", label)
    _figure_legend(fig, axes)
    return fig


def ood_accuracy(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy on each evaluation set for models trained on a source task, one panel per source.

    Frame: columns ``source, target, variant, accuracy`` (and ``seed``; optional
    boolean ``in_distribution``, else a target equal to its source counts as in-distribution).
    Per target, each variant's mean ± sd over seeds (markers with whiskers; small dots = seeds),
    on an accuracy axis fitted to the data so that differences of a point or two show; the
    in-distribution target comes first, on a shaded background, with its tick label marked.
    """
    _require(df, ["source", "target", "variant", "accuracy"], "ood_accuracy")
    sources = _order(df["source"])
    variants = _order(df["variant"], list(VARIANT_COLORS))
    palette = variant_palette(variants)
    fig, axes = _facets(len(sources), title or "Out-of-distribution accuracy (shaded: in-distribution test set)",
                        sharey=True)
    for ax, source in zip(axes, sources):
        sub = df[df["source"] == source]
        is_id = sub["in_distribution"].astype(bool) if "in_distribution" in sub else sub["target"] == source
        in_dist = _order(sub.loc[is_id, "target"])
        targets = in_dist + [t for t in _order(sub["target"]) if t not in in_dist]
        for i, t in enumerate(targets):
            if t in in_dist:
                ax.axvspan(i - 0.5, i + 0.5, color="#E8E8E8", zorder=0)
        common = dict(data=sub, x="target", y="accuracy", hue="variant", order=targets, hue_order=variants, ax=ax)
        sns.pointplot(**common, palette=palette, errorbar="sd", dodge=0.45 if len(variants) > 1 else False,
                      linestyle="none", capsize=0.08,
                      markers=["o", "s", "D", "^", "v"][:len(variants)], markersize=6, err_kws={"linewidth": 1.5})
        sns.stripplot(**common, palette={v: "black" for v in variants}, dodge=True, size=2.5, alpha=0.5,
                      legend=False, zorder=0)
        ax.set_xticks(range(len(targets)), [f"{t} (in-dist.)" if t in in_dist else t for t in targets],
                      rotation=35, ha="right", rotation_mode="anchor")
        for tick, t in zip(ax.get_xticklabels(), targets):
            tick.set_fontweight("bold" if t in in_dist else "normal")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}"))
        ax.set(title=f"trained on {source}")
        ax.grid(axis="y", alpha=0.3)
    _outer_labels(axes, min(len(sources), _MAX_COLS), "evaluated on", "test accuracy")
    _figure_legend(fig, axes)
    return fig


# ----------------------------------------------------------------------------- matrices
def _check_matrix(matrix, where: str) -> pd.DataFrame:
    if not isinstance(matrix, pd.DataFrame) or matrix.empty:
        raise ValueError(f"{where}: expected a non-empty DataFrame (rows and columns labelled); got {type(matrix).__name__}")
    return matrix.astype(float)


def _draw_matrix(ax, matrix: pd.DataFrame, fmt: str, vmin, vmax, cmap, cbar: bool) -> None:
    sns.heatmap(matrix, ax=ax, annot=True, fmt=fmt, vmin=vmin, vmax=vmax, cmap=cmap, cbar=cbar,
                square=True, linewidths=0.5, linecolor="white", annot_kws={"fontsize": 11 if max(matrix.shape) <= 4 else 9})
    ax.set_xlabel(matrix.columns.name or "")
    ax.set_ylabel(matrix.index.name or "")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)


def heatmap(matrix: pd.DataFrame, title: str, fmt: str = ".2f", vmin: float | None = None,
            vmax: float | None = None, cmap: str = "viridis") -> Figure:
    """Annotated heatmap of a labelled matrix (overlap, cross-graft or continual accuracy).

    Row and column labels come from the index and columns; axis titles from their
    ``.name``. NaN cells (e.g. tasks not yet seen) stay blank. Two axes: matrix and colour bar.
    """
    matrix = _check_matrix(matrix, "heatmap")
    size = 1.0 + 0.7 * max(matrix.shape)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    _draw_matrix(ax, matrix, fmt, vmin, vmax, cmap, cbar=True)
    ax.set_title(_wrap(title, size + 1.2, plt.rcParams["axes.titlesize"]))
    return fig


def heatmaps(matrices: Mapping[str, pd.DataFrame], title: str, fmt: str = ".2f", vmin: float | None = None,
             vmax: float | None = None, cmap: str = "viridis") -> Figure:
    """Several labelled matrices side by side, one panel each (titled by key), sharing one colour scale.

    ``vmin``/``vmax`` default to the range over all matrices. Axes: one per matrix plus the colour bar.
    """
    if not isinstance(matrices, Mapping) or not matrices:
        raise ValueError("heatmaps: expected a non-empty dict {panel title: DataFrame}")
    mats = {k: _check_matrix(m, f"heatmaps[{k!r}]") for k, m in matrices.items()}
    values = np.concatenate([m.to_numpy().ravel() for m in mats.values()])
    vmin = float(np.nanmin(values)) if vmin is None else vmin
    vmax = float(np.nanmax(values)) if vmax is None else vmax
    cells = max(max(m.shape) for m in mats.values())
    # two small panels a row (three would be too small to read on a phone); a panel of more than four
    # rows or columns takes a row of its own, so that its annotated cells stay legible
    n_cols = min(len(mats), _MAX_COLS if cells <= 4 else 1)
    n_rows = -(-len(mats) // n_cols)
    size = min(1.0 + 0.7 * cells, (_NARROW * _MAX_COLS - 0.8) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + 0.8, (size + 0.6) * n_rows + 0.4),
                             layout="constrained", squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[len(mats):]:
        fig.delaxes(ax)
    for ax, (name, m) in zip(flat, mats.items()):
        _draw_matrix(ax, m, fmt, vmin, vmax, cmap, cbar=False)
        # narrower than the panel: a title centred on it must not reach the colour bar beside the last column
        ax.set_title(_wrap(name, size * 0.8, 10.5), fontsize=10.5)
    fig.colorbar(flat[0].collections[0], ax=flat[:len(mats)], shrink=0.8)
    fig.suptitle(_wrap(title, size * n_cols + 0.8))
    return fig


def similarity_vs_overlap(df: pd.DataFrame, title: str | None = None, xlabel: str = "task similarity",
                          ylabel: str = "region overlap") -> Figure:
    """Scatter of task-pair similarity against region overlap, points numbered, the numbers keyed by pair below.

    Frame: columns ``pair, similarity, overlap`` and optionally ``kind`` (e.g. "sentiment–topic":
    the two tasks' families). Points are coloured by whether the two tasks share a family (a kind
    "x–x") or not, the comparison the claim is about; a ``kind`` not of that form colours by
    itself. Each point's number goes where it covers no other point or number
    (:func:`_number_points`). The title reports Spearman's rho over all pairs.
    """
    _require(df, ["pair", "similarity", "overlap"], "similarity_vs_overlap")
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    hue = None
    if "kind" in df:
        parts = df["kind"].astype(str).str.split("–")
        if parts.map(len).eq(2).all():
            df = df.assign(families=np.where(parts.str[0] == parts.str[1], "same family", "across families"))
            hue = "families"
        else:
            hue = "kind"
    order = [k for k in ("same family", "across families") if hue == "families" and k in set(df[hue])] or None
    sns.scatterplot(data=df, x="similarity", y="overlap", hue=hue, hue_order=order, s=50, ax=ax,
                    palette=sns.color_palette("colorblind", df[hue].nunique()) if hue else None)
    ax.margins(x=0.1, y=0.15)
    # points are numbered, and the numbers keyed below the axes: names of many pairs would pile up
    _number_points(fig, ax, df["similarity"].to_numpy(float), df["overlap"].to_numpy(float))
    key = ",  ".join(f"{n} {pair}" for n, pair in enumerate(df["pair"], start=1))
    fig.text(0.5, 0, _wrap(key, 5.2, 9), ha="center", va="top", fontsize=9, transform=fig.transFigure)
    head = title or "Region overlap vs task similarity"
    if len(df) >= 3:
        rc = rank_correlation(df["similarity"], df["overlap"])
        p = "p < 0.001" if rc.pvalue < 1e-3 else f"p = {rc.pvalue:.2g}"
        head += f"\nSpearman ρ = {rc.rho:.2f} ({p}, n = {rc.n} pairs)"
    else:
        head += f"\n(n = {len(df)} pairs: too few for a rank correlation)"
    ax.set(title=head, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig


def _number_points(fig: Figure, ax, x: np.ndarray, y: np.ndarray, fontsize: float = 9) -> None:
    """Number the points 1..n, each number beside its point where it covers neither another
    point nor a number already placed (tried: above right, below right, above left, below left;
    the least crowded if none is free)."""
    fig.canvas.draw()  # the layout decides where the data fall on the figure
    at = ax.transData.transform(np.column_stack([x, y]))
    px = fig.dpi / 72  # pixels per point
    height, marker = fontsize * px, 4 * px
    boxes: list[tuple[float, float, float, float]] = []

    def clash(box) -> float:
        x0, y0, x1, y1 = box
        hits = sum(x0 - marker < p[0] < x1 + marker and y0 - marker < p[1] < y1 + marker for p in at)
        return hits + sum(not (x1 < b[0] or b[2] < x0 or y1 < b[1] or b[3] < y0) for b in boxes)

    for n, (p, xv, yv) in enumerate(zip(at, x, y), start=1):
        wide = 0.62 * fontsize * len(str(n))  # the number's width, in points
        options = []
        for dx, dy in ((4, 3), (4, -3 - fontsize), (-4 - wide, 3), (-4 - wide, -3 - fontsize)):
            x0, y0 = p[0] + dx * px, p[1] + dy * px
            box = (x0, y0, x0 + wide * px, y0 + height)
            options.append((clash(box), (dx, dy), box))
        _, offset, box = min(options, key=lambda o: o[0])  # the first free place, else the least crowded
        boxes.append(box)
        ax.annotate(str(n), (xv, yv), xytext=offset, textcoords="offset points", fontsize=fontsize,
                    annotation_clip=False)


# ----------------------------------------------------------------------------- many tasks
VERDICT_COLORS: dict[str, str] = {"holds": "#009E73", "fails": "#D55E00", "inconclusive": "#E69F00",
                                  "not testable here": "#DDDDDD"}


def forest(df: pd.DataFrame, title: str, xlabel: str, threshold: float = 0.0, scale: float = 1.0) -> Figure:
    """A forest plot: one row per ``label`` (tasks, then a row ``pooled``), its ``estimate`` with the
    interval ``low``–``high`` (times ``scale``), coloured by ``verdict``; a dashed line at the claim's
    ``threshold``. Columns: label, estimate, low, high, verdict."""
    _require(df, ["label", "estimate", "low", "high", "verdict"], "forest")
    rows = df.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(_WIDTH, 0.8 + 0.38 * len(rows)), layout="constrained")
    y = np.arange(len(rows))[::-1]
    for yi, (_, r) in zip(y, rows.iterrows()):
        colour = VERDICT_COLORS.get(r.verdict, "#000000")
        pooled = r.label == "pooled"
        ax.plot([scale * r.low, scale * r.high], [yi, yi], color=colour, lw=3 if pooled else 2)
        ax.plot(scale * r.estimate, yi, marker="D" if pooled else "o", color=colour, ms=8 if pooled else 6)
    ax.axvline(scale * threshold, color="#555555", ls="--", lw=1)
    ax.set_yticks(y, [f"{r.label}  ({r.verdict})" for _, r in rows.iterrows()])
    ax.set_xlabel(xlabel)
    ax.set_title(_wrap(title, _WIDTH))
    return fig


def claims_matrix(df: pd.DataFrame, title: str) -> Figure:
    """Claims × tasks: each cell the verdict of a claim on a task, as colour and text ("–" where the
    claim was not run on that task); claims sorted, tasks in the order they come. Columns: claim, task,
    verdict."""
    _require(df, ["claim", "task", "verdict"], "claims_matrix")
    claims, tasks = sorted(set(df.claim)), _order(df.task)  # claims in their order (C1 … C5), tasks as they come
    grid = df.pivot_table(index="claim", columns="task", values="verdict", aggfunc="first").reindex(
        index=claims, columns=tasks)
    width = min(_WIDTH, 1.2 + 0.75 * len(tasks))
    fig, ax = plt.subplots(figsize=(width, 0.9 + 0.5 * len(claims)), layout="constrained")
    short = {"holds": "holds", "fails": "fails", "inconclusive": "incon.", "not testable here": "n/t"}
    for i, claim in enumerate(claims):
        for j, task in enumerate(tasks):
            v = grid.loc[claim, task]
            known = isinstance(v, str)
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=VERDICT_COLORS.get(v, "#FFFFFF") if known else "#FFFFFF",
                                       ec="white", lw=2))
            ax.text(j + 0.5, i + 0.5, short.get(v, v) if known else "–", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(tasks))
    ax.set_ylim(len(claims), 0)
    ax.set_xticks(np.arange(len(tasks)) + 0.5, tasks, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(claims)) + 0.5, claims)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(_wrap(title + " (n/t: not testable here)", width))
    return fig
