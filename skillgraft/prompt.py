"""Prompt-based classification (LM-BFF): score label words where the LM would write them.

A :class:`Prompt` is a template over an example's text fields plus one label word per
class. :class:`PromptClassifier` renders examples, reads the LM's hidden state at the
*read position* (the next-token position after the prompt for a causal LM, the
``<mask>`` position for a masked LM), applies the LM head there only, and keeps the
logits of the label words' first sub-tokens: a C-way classifier with no new parameters.
"""
from __future__ import annotations

import logging
import string
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from . import progress as _progress
from .models import LM, arch_spec

__all__ = ["PRECISIONS", "Prompt", "PromptClassifier", "template_fields"]

log = logging.getLogger(__name__)

MASK = "mask"  # the template slot replaced by the tokenizer's mask token (masked LMs)
TOKEN_MEMO = 100_000  # examples whose token ids a classifier remembers (a few MB)
PRECISIONS = ("fp32", "bf16")  # compute of forward and backward; weights, deltas and probabilities stay fp32


def template_fields(template: str) -> tuple[str, ...]:
    """Names of the ``{slots}`` in ``template``, in order, without repeats."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string: {err}") from err
    names: list[str] = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit() or spec or conv:
            raise ValueError(f"template {template!r}: slots must be plain names like {{text}}; got {{{name}}}")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Prompt:
    """A template and its label words."""

    template: str                 # format string over text fields, e.g. "Review: {text}\nSentiment:"; masked: {mask}
    label_words: tuple[str, ...]  # one per class, in class order; mind the leading space for BPE tokenizers

    def __post_init__(self):
        if not isinstance(self.template, str) or not self.template.strip():
            raise ValueError(f"template must be a non-empty string, got {self.template!r}")
        object.__setattr__(self, "label_words", tuple(self.label_words))
        if len(self.label_words) < 2 or not all(isinstance(w, str) and w.strip() for w in self.label_words):
            raise ValueError(f"label_words needs at least two non-empty strings, got {self.label_words!r}")
        if len(set(self.label_words)) != len(self.label_words):
            raise ValueError(f"label_words must be distinct, got {self.label_words!r}")
        if not self.text_fields:
            raise ValueError(f"template {self.template!r} has no text slot such as {{text}}")

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The template's slots other than ``{mask}``."""
        return tuple(f for f in template_fields(self.template) if f != MASK)

    @property
    def has_mask(self) -> bool:
        return MASK in template_fields(self.template)

    def check_fields(self, fields: tuple[str, ...] | list[str]) -> None:
        """Raise unless the template uses exactly the text fields ``fields``."""
        missing = [f for f in fields if f not in self.text_fields]
        unknown = [f for f in self.text_fields if f not in fields]
        if missing or unknown:
            raise ValueError(f"template {self.template!r} must contain the text slot(s) "
                             f"{', '.join('{' + f + '}' for f in fields)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown slot(s) {unknown}" if unknown else ""))

    def render(self, example: dict, mask_token: str | None = None) -> str:
        values = {f: _clean(example[f]) for f in self.text_fields}
        if self.has_mask:
            if mask_token is None:
                raise ValueError(f"template {self.template!r} has {{mask}} but the tokenizer has no mask token")
            values[MASK] = mask_token
        return self.template.format(**values)


def _clean(text) -> str:
    return " ".join(str(text).split())


class PromptClassifier:
    """A C-way classifier from an LM, a template and label words (no new parameters)."""

    def __init__(self, lm: LM, prompt: Prompt, max_length: int = 128, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
        if lm.kind not in ("causal", "masked"):
            raise ValueError(f"unknown LM kind {lm.kind!r}; accepted: 'causal', 'masked'")
        if lm.kind == "masked" and not prompt.has_mask:
            raise ValueError(f"a masked LM reads the label word at {{mask}}, but template {prompt.template!r} "
                             "has no {mask} slot; e.g. '{text} It was {mask} .'")
        if lm.kind == "causal" and prompt.has_mask:
            raise ValueError(f"a causal LM reads the label word after the prompt; template {prompt.template!r} "
                             "must not contain {mask}")
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        self.lm, self.prompt, self.max_length, self.precision = lm, prompt, max_length, precision
        self.tokenizer = lm.tokenizer
        self.kind = lm.kind
        self.spec = arch_spec(lm.model)
        self.mask_token = getattr(self.tokenizer, "mask_token", None) if self.kind == "masked" else None
        if self.kind == "masked" and self.mask_token is None:
            raise ValueError(f"masked LM {lm.name!r} has a tokenizer without a mask token")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError(f"tokenizer of {lm.name!r} has neither a pad nor an eos token to pad with")
        ids = []
        for word in prompt.label_words:
            sub = self.tokenizer(word, add_special_tokens=False).input_ids
            if not sub:
                raise ValueError(f"label word {word!r} tokenizes to nothing")
            if len(sub) > 1:
                log.info("label word %r has %d sub-tokens; scoring its first", word, len(sub))
            ids.append(sub[0])
        if len(set(ids)) != len(ids):
            first = [self.tokenizer.convert_ids_to_tokens(i) for i in ids]
            raise ValueError(f"label words {prompt.label_words!r} must map to distinct first sub-tokens, "
                             f"got {first}; choose words that differ in their first sub-token")
        self.label_ids = torch.tensor(ids, dtype=torch.long)  # (C,)
        self.num_classes = len(ids)
        self._memo: dict[tuple, tuple[int, ...]] = {}  # (max_length, prompt, texts...) -> token ids

    # ------------------------------------------------------------------ text -> ids
    def render(self, example: dict) -> str:
        return self.prompt.render(example, self.mask_token)

    def _tokens(self, example: dict) -> list[int]:
        """Token ids of one rendered example, shortening its text (never the template) to fit.

        Remembered per text, prompt and max_length (up to ``TOKEN_MEMO`` examples): sorting by length,
        batching and every later scoring of the same set read one encoding pass."""
        key = (self.max_length, self.prompt, *(str(example[f]) for f in self.prompt.text_fields))
        ids = self._memo.get(key)
        if ids is None:
            if len(self._memo) >= TOKEN_MEMO:
                self._memo.clear()
            ids = self._memo[key] = self._fit({f: _clean(example[f]) for f in self.prompt.text_fields})
        return list(ids)

    def _fit(self, example: dict) -> tuple[int, ...]:
        for _ in range(20):
            ids = self.tokenizer(self.render(example)).input_ids
            excess = len(ids) - self.max_length
            if excess <= 0:
                return tuple(ids)
            field = max(example, key=lambda f: len(example[f]))  # shorten the longest text, from its end
            sub = self.tokenizer(example[field], add_special_tokens=False).input_ids
            if not sub:
                break
            example[field] = self.tokenizer.decode(sub[:max(0, len(sub) - excess)], skip_special_tokens=True)
        raise ValueError(f"template {self.prompt.template!r} does not fit in max_length={self.max_length} "
                         "tokens even with its text cut; raise max_length")

    def encode(self, examples: dict[str, list]) -> dict[str, Tensor]:
        """A batch (datasets' column format) -> input_ids, attention_mask, read_pos (+ labels), on lm.device.

        Padding is on the right for both kinds, so a causal LM's positions are those of
        the unpadded sequence and the read position is simply the last real token.
        """
        missing = [f for f in self.prompt.text_fields if f not in examples]
        if missing:
            raise ValueError(f"batch lacks text field(s) {missing}; it has {sorted(examples)}")
        n = len(examples[self.prompt.text_fields[0]])
        seqs = [self._tokens({f: examples[f][i] for f in self.prompt.text_fields}) for i in range(n)]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        read_pos = torch.empty(n, dtype=torch.long)
        mask_id = self.tokenizer.mask_token_id if self.kind == "masked" else None
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s)
            attention_mask[i, :len(s)] = 1
            if self.kind == "causal":
                read_pos[i] = len(s) - 1
            else:
                where = [j for j, t in enumerate(s) if t == mask_id]
                if len(where) != 1:
                    raise ValueError(f"expected one mask token in {self.tokenizer.decode(s)!r}, found {len(where)}")
                read_pos[i] = where[0]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "read_pos": read_pos}
        if "label" in examples:
            batch["labels"] = torch.as_tensor(list(examples["label"]), dtype=torch.long)
        return {k: v.to(self.lm.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ scoring
    def class_logits(self, batch: dict[str, Tensor], precision: str | None = None) -> Tensor:
        """Label-word logits at the read position, (B, C), fp32; differentiable.

        With ``precision="bf16"`` the forward (and so the backward) runs under autocast:
        matrix products in bfloat16, the fp32 weights untouched, the logits cast back to fp32."""
        model = self.lm.model
        extra = {"use_cache": False} if self.kind == "causal" else {}
        device_type = self.lm.device.type
        bf16 = (precision or self.precision) == "bf16"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      **extra).last_hidden_state                # (B, T, H)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            h = hidden[rows, batch["read_pos"]]                                  # (B, H)
            logits = getattr(model, self.spec.head)(h)                           # (B, V)
        return logits[:, self.label_ids.to(logits.device)].float()              # (B, C)

    @contextmanager
    def casting(self, precision: str | None = None) -> Iterator[None]:
        """Forwards inside share one bf16 cast of each trainable fp32 weight (autocast's cache),
        instead of casting every weight again for every batch; values are the same casts.

        For inference at fixed weights, under ``torch.no_grad`` (autocast caches nothing under
        ``inference_mode``): the weights must not change inside. A no-op in fp32."""
        bf16 = (precision or self.precision) == "bf16"
        with torch.autocast(self.lm.device.type, dtype=torch.bfloat16, enabled=bf16):
            yield

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean cross-entropy over the label words (softmax over the C label words only)."""
        if "labels" not in batch:
            raise ValueError("batch has no 'labels'; encode examples that carry a 'label' column")
        return F.cross_entropy(self.class_logits(batch), batch["labels"])

    def length_order(self, dataset) -> list[int]:
        """Indices of ``dataset`` from the fewest tokens to the most, as encoded (stable): batches
        cut in this order carry almost no padding (ordered by characters, a batch of 16 test
        sentences was 16-22% padding)."""
        fields = self.prompt.text_fields
        cols = {f: list(dataset[f]) for f in fields}
        sizes = [len(self._tokens({f: cols[f][i] for f in fields})) for i in range(len(dataset))]
        return sorted(range(len(dataset)), key=sizes.__getitem__)

    def predict_proba(self, dataset, batch_size: int = 32, progress: bool = False,
                      precision: str | None = None, report: bool = False) -> np.ndarray:
        """Class probabilities (N, C) over a ``datasets.Dataset``, in eval mode, batched by length;
        ``precision`` overrides the classifier's own for this call (e.g. fp32 test predictions);
        ``report`` tells :mod:`skillgraft.progress` how many batches are done."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
        fields = self.prompt.text_fields
        missing = [f for f in fields if f not in dataset.column_names]
        if missing:
            raise ValueError(f"dataset lacks text field(s) {missing}; it has {dataset.column_names}")
        cols = {f: list(dataset[f]) for f in fields}
        n = len(dataset)
        order = self.length_order(dataset)
        out = np.zeros((n, self.num_classes), dtype=np.float64)
        model = self.lm.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.casting(precision):  # no_grad: inference_mode would cast per batch
                starts = range(0, n, batch_size)
                for b, s in enumerate(tqdm(starts, desc="predict", disable=not progress, leave=False)):
                    idx = order[s:s + batch_size]
                    batch = self.encode({f: [cols[f][i] for i in idx] for f in fields})
                    probs = torch.softmax(self.class_logits(batch, precision).float(), dim=-1)
                    out[idx] = probs.cpu().numpy()
                    if report:
                        _progress.step(b + 1, len(starts), "batches")
        finally:
            model.train(was_training)
        return out

    def accuracy(self, dataset, batch_size: int = 32) -> float:
        """Fraction of ``dataset`` whose most probable class equals its ``label``."""
        if len(dataset) == 0:
            raise ValueError("cannot compute accuracy on an empty dataset")
        proba = self.predict_proba(dataset, batch_size=batch_size)
        return float((proba.argmax(axis=1) == np.asarray(dataset["label"])).mean())
