"""Model resolution: embedded short names, local folders, hub ids, and the errors."""
from __future__ import annotations

import pytest
import torch

from skillgraft import assets, models


def test_local_folder_loads_causal_and_masked(tiny_llama_dir, tiny_roberta_dir):
    lm = models.load_lm(str(tiny_llama_dir))
    assert lm.kind == "causal" and not lm.model.training
    assert lm.tokenizer.pad_token is not None
    mlm = models.load_lm(str(tiny_roberta_dir))
    assert mlm.kind == "masked"
    assert mlm.device == torch.device("cpu")


def test_short_name_resolves_to_the_embedded_folder(monkeypatch, tiny_llama_dir):
    asked = []
    monkeypatch.setattr(assets, "model_path", lambda name: asked.append(name) or tiny_llama_dir)
    lm = models.load_lm("smollm2-135m")
    assert asked == ["smollm2-135m"]
    assert lm.name == "smollm2-135m" and lm.kind == "causal"


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'no such model!': not an embedded model \(smollm2-135m\)"):
        models.load_lm("no such model!")


def test_hub_id_without_network_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(RuntimeError, match="Hub models need internet .* offline, use an embedded model: smollm2-135m"):
        models.load_lm("roberta-base")


def test_unsupported_architecture_is_named(tiny_llama):
    tiny_llama.config.model_type = "mamba"
    with pytest.raises(ValueError, match="unsupported architecture 'mamba'; supported:"):
        models.arch_spec(tiny_llama)


def test_device_parsing():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            models.resolve_device("cuda")
    with pytest.raises(ValueError, match="accepted: 'cpu', 'cuda'"):
        models.resolve_device("mps")


@pytest.mark.slow
def test_embedded_model_prefers_the_right_sentiment_word():
    if not (assets.home() / "models" / assets.DEFAULT_MODEL).is_dir():
        pytest.skip("embedded model not fetched (run `skillgraft fetch`)")
    lm = models.load_lm()
    tok = lm.tokenizer
    neg, pos = (tok(w, add_special_tokens=False).input_ids[0] for w in (" negative", " positive"))
    for text, want in (("A gorgeous, witty, seductive movie.", pos), ("A dull, lifeless mess.", neg)):
        batch = tok(f"Review: {text}\nSentiment:", return_tensors="pt")
        with torch.inference_mode():
            logits = lm.model(**batch).logits[0, -1]
        assert logits[want] > logits[neg if want == pos else pos]
