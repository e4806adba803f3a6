"""The chapters' one-line setup: a Setting from the parameter cell, "—" for missing values, figures shown once."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from skillgraft import notebook  # noqa: E402


def test_setup_reads_the_parameter_cell_and_styles_missing_values():
    setting = notebook.setup({"k": 8, "graft_start": "grow", "ft_steps": 12, "_private": 1, "unrelated": "x"})
    assert setting.k == 8 and setting.graft.start == "grow" and setting.finetune.steps == 12
    html = pd.DataFrame({"a": [0.5, np.nan]}).style.format({"a": "{:+.3f}"}).to_html()
    assert "+0.500" in html and "—" in html and "nan" not in html
    own = pd.DataFrame({"a": [np.nan]}).style.format("{:.1f}", na_rep="n/a").to_html()
    assert "n/a" in own  # a table's own na_rep still wins
    assert notebook.elapsed() >= 0


def test_setting_is_shown_wrapped_never_as_one_long_line():
    from IPython.lib.pretty import pretty

    text = pretty(notebook.setup({}))
    assert text.startswith("Setting(model=") and "\n  finetune: " in text and "\n  graft: " in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_show_figure_glues_and_closes(monkeypatch):
    glued = []
    monkeypatch.setattr("myst_nb.glue", lambda name, obj, display=True: glued.append((name, display)))
    fig = plt.figure()
    notebook.show_figure("fig_x", fig)
    assert glued == [("fig_x", False)] and not plt.fignum_exists(fig.number)


def test_elapsed_needs_setup(monkeypatch):
    monkeypatch.setattr(notebook, "_started", None)
    with pytest.raises(RuntimeError, match="setup"):
        notebook.elapsed()


def test_styled_tables_show_headers_with_spaces_and_cells_as_they_are():
    import pandas as pd

    notebook.setup({})
    frame = pd.DataFrame({"normalized_recovery": [0.5], "task": ["a_b"]}).set_index("task")
    html = frame.style.format({"normalized_recovery": "{:.1%}"})._repr_html_()
    assert ">normalized recovery</th>" in html and "normalized_recovery</th>" not in html
    assert ">a_b</th>" in html or ">a_b</td>" in html  # a row label or value keeps its underscore
    assert list(frame.columns) == ["normalized_recovery"]


def test_say_shows_its_text_in_both_forms_and_nothing_when_empty(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append(obj))
    notebook.say("**C1 holds.**")
    assert shown == [{"text/markdown": "**C1 holds.**", "text/plain": "**C1 holds.**"}]
    notebook.say("")
    notebook.say("  \n")
    assert len(shown) == 1  # an empty paragraph leaves no empty output box
