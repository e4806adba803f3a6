"""PromptClassifier on tiny random LMs: rendering, read positions, equivalence with the full model."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from skillgraft.models import LM
from skillgraft.prompt import Prompt, PromptClassifier, template_fields

CAUSAL = Prompt("review : {text} sentiment :", (" negative", " positive"))
MASKED = Prompt("{text} it was {mask} .", (" terrible", " great"))
TEXTS = ["the movie was fun", "a dull boring plot and awful acting , the film is bad", "lovely"]


@pytest.fixture
def causal(tiny_llama, tokenizer):
    return PromptClassifier(LM(tiny_llama, tokenizer, "tiny-llama", "causal"), CAUSAL)


@pytest.fixture
def masked(tiny_roberta, tokenizer):
    return PromptClassifier(LM(tiny_roberta, tokenizer, "tiny-roberta", "masked"), MASKED)


def test_render_fills_text_and_mask(causal, masked):
    assert causal.render({"text": "the  movie\n was fun"}) == "review : the movie was fun sentiment :"
    assert masked.render({"text": "lovely"}) == "lovely it was <mask> ."
    assert template_fields("{premise} ? {mask} , {hypothesis}") == ("premise", "mask", "hypothesis")
    assert Prompt("{premise} ? {mask} , {hypothesis}", ("no", "yes")).text_fields == ("premise", "hypothesis")


def test_read_position_causal_is_last_real_token(causal, tokenizer):
    batch = causal.encode({"text": TEXTS, "label": [1, 0, 1]})
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].tolist() == [1, 0, 1]
    lengths = batch["attention_mask"].sum(1)
    assert (lengths < batch["input_ids"].shape[1]).any()  # the batch really is padded
    assert torch.equal(batch["read_pos"], lengths - 1)
    last = batch["input_ids"][torch.arange(3), batch["read_pos"]]
    assert set(last.tolist()) == {tokenizer.convert_tokens_to_ids(":")}


def test_read_position_masked_is_mask_token(masked, tokenizer):
    batch = masked.encode({"text": TEXTS})
    assert "labels" not in batch
    at = batch["input_ids"][torch.arange(3), batch["read_pos"]]
    assert (at == tokenizer.mask_token_id).all()


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_class_logits_equal_full_model_logits(which, request):
    clf = request.getfixturevalue(which)
    batch = clf.encode({"text": TEXTS})
    got = clf.class_logits(batch)
    with torch.no_grad():
        full = clf.lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = full[torch.arange(3), batch["read_pos"]][:, clf.label_ids]
    assert got.shape == (3, 2)
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5)
    # padding does not change an example's scores: each one alone gives the same logits
    for i, text in enumerate(TEXTS):
        alone = clf.class_logits(clf.encode({"text": [text]}))
        torch.testing.assert_close(alone.detach()[0], got.detach()[i], rtol=1e-4, atol=1e-5)


def test_loss_is_differentiable_cross_entropy(causal):
    batch = causal.encode({"text": TEXTS, "label": [1, 0, 1]})
    loss = causal.loss(batch)
    want = torch.nn.functional.cross_entropy(causal.class_logits(batch), batch["labels"])
    torch.testing.assert_close(loss, want)
    loss.backward()
    grads = [p.grad for n, p in causal.lm.model.named_parameters() if "layers.0." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_truncation_cuts_text_not_template(tiny_llama, tokenizer):
    clf = PromptClassifier(LM(tiny_llama, tokenizer, "tiny", "causal"), CAUSAL, max_length=10)
    long = " ".join(["good"] * 50)
    batch = clf.encode({"text": [long, "fun"]})
    ids = batch["input_ids"][0]
    assert batch["attention_mask"][0].sum() <= 10
    tail = tokenizer.convert_ids_to_tokens(ids[: int(batch["read_pos"][0]) + 1].tolist())[-2:]
    assert tail == ["sentiment", ":"]
    assert int(batch["read_pos"][1]) == 4  # review : fun sentiment :


def test_predict_proba_and_accuracy(masked):
    ds = datasets.Dataset.from_dict({"text": TEXTS * 3, "label": [0, 1, 0] * 3})
    proba = masked.predict_proba(ds, batch_size=4)
    assert proba.shape == (9, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(proba[:3], proba[3:6], rtol=1e-5)  # order restored after length sorting
    batch = masked.encode({"text": TEXTS})
    want = torch.softmax(masked.class_logits(batch), -1).detach().numpy()
    np.testing.assert_allclose(proba[:3], want, rtol=1e-4, atol=1e-6)
    acc = masked.accuracy(ds)
    assert acc == pytest.approx(float((proba.argmax(1) == np.array([0, 1, 0] * 3)).mean()))


def test_length_order_cuts_batches_with_less_padding(causal):
    texts = ["a b c d e f g h i j", "a", "a b c d e", "a b", "a b c d e f g h", "a b c"]
    ds = datasets.Dataset.from_dict({"text": texts, "label": [0, 1] * 3})
    order = causal.length_order(ds)
    tokens = [len(causal._tokens({"text": t})) for t in texts]
    assert sorted(order) == list(range(6)) and [tokens[i] for i in order] == sorted(tokens)

    def padded(idx):  # tokens of batches of 2 cut in this order, padding included
        return sum(causal.encode(ds[idx[i:i + 2]])["input_ids"].numel() for i in range(0, 6, 2))
    assert padded(order) < padded(list(range(6)))


def test_length_order_counts_tokens_not_characters(causal):
    # one long word is few tokens, many one-letter words are many: characters would sort them the other way
    texts = ["a b c d e f g h", "abcdefghijklmnopqrstuvwxyz"]
    tokens = [len(causal._tokens({"text": t})) for t in texts]
    assert tokens[0] != tokens[1]
    ds = datasets.Dataset.from_dict({"text": texts, "label": [0, 1]})
    assert [tokens[i] for i in causal.length_order(ds)] == sorted(tokens)


def test_predict_proba_restores_training_mode(causal):
    causal.lm.model.train()
    causal.predict_proba(datasets.Dataset.from_dict({"text": TEXTS}))
    assert causal.lm.model.training


def test_errors(tiny_llama, tiny_roberta, tokenizer):
    llama = LM(tiny_llama, tokenizer, "tiny-llama", "causal")
    roberta = LM(tiny_roberta, tokenizer, "tiny-roberta", "masked")
    with pytest.raises(ValueError, match="distinct first sub-tokens"):
        PromptClassifier(llama, Prompt("{text} sentiment :", (" good movie", " good film")))
    with pytest.raises(ValueError, match="no {mask} slot"):
        PromptClassifier(roberta, Prompt("{text} it was", (" bad", " good")))
    with pytest.raises(ValueError, match="must not contain {mask}"):
        PromptClassifier(llama, MASKED)
    with pytest.raises(ValueError, match="no text slot"):
        Prompt("it was {mask} .", (" bad", " good"))
    with pytest.raises(ValueError, match="at least two"):
        Prompt("{text}", (" good",))
    with pytest.raises(ValueError, match="missing"):
        Prompt("{premise} ? {mask}", ("no", "yes")).check_fields(("premise", "hypothesis"))
    with pytest.raises(ValueError, match="lacks text field"):
        PromptClassifier(llama, CAUSAL).encode({"sentence": ["fun"]})


def test_bf16_autocast_is_close_to_fp32_and_can_be_overridden(tiny_llama, tokenizer):
    lm = LM(tiny_llama, tokenizer, "tiny-llama", "causal")
    fp32, bf16 = PromptClassifier(lm, CAUSAL), PromptClassifier(lm, CAUSAL, precision="bf16")
    batch = fp32.encode({"text": TEXTS})
    a, b = fp32.class_logits(batch), bf16.class_logits(batch)
    assert b.dtype == torch.float32 and not torch.equal(a, b)      # computed in bf16, returned in fp32
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    data = datasets.Dataset.from_dict({"text": TEXTS})
    assert np.array_equal(bf16.predict_proba(data, precision="fp32"), fp32.predict_proba(data))
    assert all(p.dtype == torch.float32 for p in tiny_llama.parameters())  # weights untouched
    with pytest.raises(ValueError, match="unknown precision 'fp16'; accepted: fp32, bf16"):
        PromptClassifier(lm, CAUSAL, precision="fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        bf16.predict_proba(data, precision="half")



def test_each_example_is_encoded_once_across_sorting_batching_and_scoring(causal, monkeypatch):
    ds = datasets.Dataset.from_dict({"text": TEXTS * 2, "label": [0, 1, 0] * 2})
    want = causal.predict_proba(ds)  # fills the memo
    fresh = PromptClassifier(causal.lm, CAUSAL)
    calls = []
    real = fresh.tokenizer.__class__.__call__
    monkeypatch.setattr(fresh.tokenizer.__class__, "__call__", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    np.testing.assert_array_equal(fresh.predict_proba(ds), want)  # the memo changes no prediction
    fresh.accuracy(ds)
    fresh.length_order(ds)
    assert len(calls) == len(set(TEXTS))  # one tokenizer call per distinct text, none for the repeats


def test_token_memo_follows_max_length(causal):
    long = "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3
    full = causal._tokens({"text": long})
    causal.max_length = 24
    cut = causal._tokens({"text": long})
    assert len(cut) <= 24 < len(full)
    cut.append(0)  # a caller's list is its own: the memo keeps the ids
    assert causal._tokens({"text": long}) == cut[:-1]


def test_bf16_predictions_cast_each_weight_once_per_call(causal):
    """In bf16, one prediction call casts every trainable weight once, not once per batch,
    and gives the probabilities that batch-by-batch casting gives."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            to = (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") is torch.bfloat16
                  or func is torch.ops.aten.to.dtype and torch.bfloat16 in args[1:])
            self.n += bool(to and args[0].dim() == 2 and args[0].requires_grad)  # a weight, not activations
            return func(*args, **kwargs)

    bf16 = PromptClassifier(causal.lm, CAUSAL, precision="bf16")
    ds = datasets.Dataset.from_dict({"text": TEXTS * 2})
    with Casts() as one:
        bf16.predict_proba(ds, batch_size=6)
    with Casts() as three:
        proba = bf16.predict_proba(ds, batch_size=2)
    weights = sum(p.dim() == 2 for p in causal.lm.model.parameters())
    assert 0 < one.n <= weights and three.n == one.n  # the 2 extra batches did not cast the weights again
    per_batch = []
    for i in range(0, 6, 2):  # each batch alone, its own casts
        order = bf16.length_order(ds)[i:i + 2]
        batch = bf16.encode(ds[order])
        with torch.inference_mode():
            per_batch.append((order, torch.softmax(bf16.class_logits(batch), -1).numpy()))
    for order, p in per_batch:
        np.testing.assert_array_equal(proba[order], p)


def test_predictions_inside_autocast_leave_no_detached_casts(causal):
    """A caller's own autocast around a prediction and then a training step: the step's
    weights still get gradients (the prediction's gradient-free casts are not reused)."""
    bf16 = PromptClassifier(causal.lm, CAUSAL, precision="bf16")
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0]})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16.predict_proba(ds)
        bf16.loss(bf16.encode(ds[:])).backward()
    weights = [p for p in causal.lm.model.parameters() if p.dim() == 2]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
