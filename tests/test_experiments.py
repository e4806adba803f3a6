"""Tables built from experiment frames (no model needed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skillgraft.chapters.single_task import recovery_table, sparsity_to_reach


def _frame():
    rows = []
    for seed, (ft_b, g1, g2) in zip((1, 2), ((0.49, 0.80, 0.86), (0.49, 0.84, 0.88))):
        for task, zs, ft in (("a", 0.5, 0.9), ("b", 0.5, ft_b)):
            rows += [dict(task=task, seed=seed, variant="zero-shot", sparsity=np.nan, mask_size=0, accuracy=zs),
                     dict(task=task, seed=seed, variant="fine-tuned", sparsity=np.nan, mask_size=np.nan, accuracy=ft),
                     dict(task=task, seed=seed, start="refine", target=1e-4, variant="graft", sparsity=1e-4,
                          mask_size=10, accuracy=g1),
                     dict(task=task, seed=seed, start="refine", target=1e-3, variant="graft", sparsity=1e-3,
                          mask_size=100, accuracy=g2),
                     dict(task=task, seed=seed, start="grow", target=np.nan, variant="graft",
                          sparsity=seed * 1e-5, mask_size=seed * 10, accuracy=0.7)]
    return pd.DataFrame(rows)


def test_recovery_from_seed_means_and_no_gain_is_nan():
    table = recovery_table(_frame())
    refine = table[table.start == "refine"].set_index(["task", "target"])
    assert refine.loc[("a", 1e-4), "accuracy"] == pytest.approx(0.82)
    assert refine.loc[("a", 1e-4), "recovery"] == pytest.approx(0.82 / 0.9)
    assert refine.loc[("a", 1e-4), "normalized_recovery"] == pytest.approx((0.82 - 0.5) / 0.4)
    assert np.isnan(refine.loc[("b", 1e-4), "normalized_recovery"])  # fine-tuning did not beat zero-shot
    grow = table[table.start == "grow"].set_index("task")
    assert np.isnan(grow.loc["a", "target"])                 # a grown graft has no target size
    assert grow.loc["a", "mask_size"] == pytest.approx(15)   # its final size, averaged over seeds
    assert grow.loc["a", "sparsity"] == pytest.approx(1.5e-5)


def test_smallest_sparsity_reaching_a_share_of_fine_tuned():
    reach = sparsity_to_reach(_frame(), share=0.95).set_index("task")["sparsity"]
    assert reach["a"] == pytest.approx(1e-3)  # 0.82 < 0.855 <= 0.87
    assert reach["b"] == pytest.approx(1e-4)
