"""The numerics fingerprint, the bit-for-bit decision it drives, and the tolerance elsewhere, on values that
differ just inside and just outside it."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from skillgraft import numerics, publishing
from skillgraft.published import _encode


def test_two_fingerprints_of_one_machine_are_equal_and_a_changed_kernel_result_changes_it(monkeypatch):
    numerics.fingerprint.cache_clear()
    first = numerics.fingerprint()
    numerics.fingerprint.cache_clear()
    assert numerics.fingerprint() == first and len(first) == 16
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim: real(x, dim=dim) * (1 + 1e-7))  # another last bit
    numerics.fingerprint.cache_clear()
    assert numerics.fingerprint() != first
    numerics.fingerprint.cache_clear()
    about = numerics.describe()
    assert {"fingerprint", "vendor", "capability", "blas", "fingerprint_threads"} <= set(about)


def test_bit_for_bit_exactly_where_fingerprints_and_threads_match():
    here = {"cpu": "A", "torch": "2", "fingerprint": "f" * 16}
    assert publishing.exactness({**here, "threads": 2}, here, 2) == (True, f"numerics fingerprints match ({'f' * 16})")
    same_name = publishing.exactness({**here, "threads": 2, "fingerprint": "e" * 16}, here, 2)
    assert same_name[0] is False and "fingerprint" in same_name[1]      # the same CPU name, other bits
    assert publishing.exactness({**here, "threads": 1}, here, 2)[0] is False
    old = publishing.exactness({"cpu": "A", "torch": "2", "threads": 2}, here, 2)
    assert old == (True, "the entry records no numerics fingerprint: same CPU model, torch and threads")


def _probs_entry(probs: np.ndarray, labels: np.ndarray):
    recipe = SimpleNamespace(kind="probs", label=lambda: "predictions")
    entry = SimpleNamespace(tensors={"probs": torch.from_numpy(probs), "labels": torch.from_numpy(labels)}, meta={})
    return recipe, entry


def _body(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"record": {"data": {}}, "tensors": _encode({"probs": torch.from_numpy(probs),
                                                         "labels": torch.from_numpy(labels)})}


@pytest.mark.parametrize("n, flips, within", [(200, 4, True), (200, 5, False), (48, 1, True), (48, 2, False)])
def test_accuracy_within_two_points_or_one_example_of_the_split(n, flips, within):
    labels = np.zeros(n, dtype=np.int64)
    want = np.tile(np.array([[0.6, 0.4]], dtype=np.float32), (n, 1))
    got = want.copy()
    got[:flips] = [[0.49, 0.51]]           # each flipped example moves its probabilities by 0.11 only
    recipe, entry = _probs_entry(got, labels)
    found = publishing._compare(recipe, entry, _body(want, labels), exact=False)
    assert (not found) == within, found
    assert publishing.accuracy_tolerance(n) == pytest.approx(max(0.02, 1 / n))


@pytest.mark.parametrize("shift, within", [(0.049, True), (0.051, False)])
def test_probabilities_within_a_mean_of_five_hundredths(shift, within):
    n = 100
    labels = np.zeros(n, dtype=np.int64)
    want = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (n, 1))
    got = want + np.array([[-shift, shift]], dtype=np.float32)    # mean |Δp| = shift, no class changes
    recipe, entry = _probs_entry(got, labels)
    found = publishing._compare(recipe, entry, _body(want, labels), exact=False)
    assert (not found) == within, found
    assert publishing._compare(recipe, entry, _body(want, labels), exact=True)   # bit for bit: any change counts
