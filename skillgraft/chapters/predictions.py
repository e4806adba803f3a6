"""Per-example test predictions, named by fields instead of positional tuple keys.

A chapter keeps, for every model it evaluates, the class probabilities of each test example
and the true labels (a :class:`Prediction`), named by the values of its fields — e.g. task,
seed, start, target, variant for chapter 01. Its intervals resample these examples.
:class:`Predictions` finds them by name (``get(task="mr", seed=13, variant="graft", ...)``)
and lists the values a field takes (``values("task")``): a missing value is ``None``, never
NaN, and float values (a target sparsity) match within :func:`math.isclose`, so no lookup
depends on the identity of a NaN or on the order of a tuple.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from ..metrics import accuracy

__all__ = ["Prediction", "Predictions"]


@dataclass(frozen=True)
class Prediction:
    """One model on one test set: class probabilities (examples × classes) and the true labels."""

    probs: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.probs.ndim != 2 or len(self.probs) != len(self.labels):
            raise ValueError(f"a prediction is examples × classes probabilities with one label per example, got "
                             f"shapes {self.probs.shape} and {np.shape(self.labels)}")

    def __iter__(self) -> Iterator[np.ndarray]:  # unpacks as ``probs, labels``
        yield self.probs
        yield self.labels

    @property
    def accuracy(self) -> float:
        return accuracy(self.probs, self.labels)


def _value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


class Predictions:
    """The predictions of many models, each named by a value of every one of ``fields``."""

    def __init__(self, *fields: str):
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"Predictions need distinct field names, got {fields}")
        self.fields = fields
        self._rows: list[tuple[dict, Prediction]] = []

    def _key(self, key: dict, partial: bool = False) -> dict:
        unknown = sorted(set(key) - set(self.fields))
        missing = [] if partial else [f for f in self.fields if f not in key]
        if unknown or missing:
            raise KeyError(f"predictions are named by {', '.join(self.fields)}; "
                           + "; ".join(x for x in (f"unknown {unknown}" if unknown else "",
                                                   f"missing {missing}" if missing else "") if x))
        return {f: _value(key[f]) for f in self.fields if f in key}

    def add(self, prediction: Prediction | tuple, **key) -> None:
        """Keep ``prediction`` (or a ``(probs, labels)`` pair) under ``key``: a value for every field."""
        key = self._key(key)
        if self.find(**key):
            raise KeyError(f"a prediction named {key} is kept already")
        self._rows.append((key, prediction if isinstance(prediction, Prediction) else Prediction(*prediction)))

    def find(self, **partial) -> list[tuple[dict, Prediction]]:
        """The (name, prediction) pairs whose fields match ``partial``, in the order they were added."""
        partial = self._key(partial, partial=True)
        return [(k, p) for k, p in self._rows if all(_same(k[f], v) for f, v in partial.items())]

    def get(self, **key) -> Prediction:
        """The prediction named ``key`` (a value for every field)."""
        found = self.find(**self._key(key))
        if not found:
            raise KeyError(f"no prediction named {self._key(key)}")
        return found[0][1]

    def values(self, field: str, **partial) -> list:
        """The values ``field`` takes among the predictions that match ``partial``, in order of first appearance."""
        if field not in self.fields:
            raise KeyError(f"predictions are named by {', '.join(self.fields)}; not by {field!r}")
        return list(dict.fromkeys(k[field] for k, _ in self.find(**partial)))

    def __len__(self) -> int:
        return len(self._rows)

    def frame(self) -> pd.DataFrame:
        """One row per model: its name, examples and test accuracy (the table a reader checks by hand)."""
        return pd.DataFrame([{**k, "examples": len(p.labels), "accuracy": p.accuracy} for k, p in self._rows],
                            columns=[*self.fields, "examples", "accuracy"])
