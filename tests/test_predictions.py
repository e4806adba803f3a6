"""Per-example predictions named by fields: what the chapters' intervals resample."""
import numpy as np
import pandas as pd
import pytest

from skillgraft.chapters.predictions import Prediction, Predictions


def _p(right: int, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    correct = np.arange(n) < right
    p0 = np.where(correct, 0.8, 0.2)
    return np.stack([p0, 1 - p0], axis=1), np.zeros(n, dtype=int)


def test_predictions_are_found_by_name_whatever_the_order_nan_or_float_rounding():
    kept = Predictions("task", "seed", "target", "variant")
    kept.add(_p(2), task="mr", seed=13, target=np.nan, variant="zero-shot")
    kept.add(_p(3), variant="graft", target=1e-4, seed=13, task="mr")
    kept.add(Prediction(*_p(4)), task="sms", seed=21, target=float("nan"), variant="graft")
    assert kept.get(task="mr", seed=13, target=None, variant="zero-shot").accuracy == 0.5
    assert kept.get(task="mr", seed=13, target=float("nan"), variant="zero-shot").accuracy == 0.5  # NaN is None
    assert kept.get(task="mr", seed=13, target=0.1 * 1e-3, variant="graft").accuracy == 0.75      # 1e-4 within isclose
    assert [k["task"] for k, _ in kept.find(variant="graft")] == ["mr", "sms"]
    assert kept.values("task") == ["mr", "sms"] and kept.values("seed", variant="graft", task="sms") == [21]
    probs, labels = kept.get(task="sms", seed=21, target=None, variant="graft")  # unpacks as (probs, labels)
    assert probs.shape == (4, 2) and labels.tolist() == [0, 0, 0, 0]
    frame = kept.frame()
    assert list(frame.columns) == ["task", "seed", "target", "variant", "examples", "accuracy"]
    assert frame.accuracy.tolist() == [0.5, 0.75, 1.0] and frame.target.isna().tolist() == [True, False, True]
    assert len(kept) == 3


def test_a_name_must_use_every_field_and_only_those_and_be_new():
    kept = Predictions("task", "seed")
    kept.add(_p(1), task="mr", seed=13)
    with pytest.raises(KeyError, match=r"missing \['seed'\]"):
        kept.add(_p(1), task="mr")
    with pytest.raises(KeyError, match=r"unknown \['variant'\]"):
        kept.find(variant="graft")
    with pytest.raises(KeyError, match="kept already"):
        kept.add(_p(2), task="mr", seed=13)
    with pytest.raises(KeyError, match="no prediction named"):
        kept.get(task="mr", seed=21)
    with pytest.raises(KeyError, match="not by 'variant'"):
        kept.values("variant")
    with pytest.raises(ValueError, match="one label per example"):
        Prediction(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="distinct field names"):
        Predictions("task", "task")
    assert isinstance(Predictions("a").frame(), pd.DataFrame)
