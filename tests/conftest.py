"""Shared fixtures: tiny random models and a word-level tokenizer, built here, no network."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["SKILLGRAFT_RESULTS"] = "off"  # unit tests never read the book's published results (their tests pass a root)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = (
    "the a movie film was is it this review sentiment great terrible good bad okay "
    "positive negative fun dull boring lovely awful plot acting : . ? , yes no maybe "
    "topic sport business politics tech entertainment news about story game match market "
    "vote phone music subjective objective love hate fine"
).split()


def make_tokenizer():
    """A whitespace word-level fast tokenizer with <pad>, <unk>, <s>, </s>, <mask>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", mask_token="<mask>")


def make_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS) + 5, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(cfg).eval()


def make_roberta(seed: int = 0):
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(WORDS) + 5, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=70, pad_token_id=0,
                        bos_token_id=2, eos_token_id=3, type_vocab_size=1)
    return RobertaForMaskedLM(cfg).eval()


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_llama():
    return make_llama()


@pytest.fixture
def tiny_roberta():
    return make_roberta()


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A tiny Llama saved as a local transformers folder (model + tokenizer)."""
    path = tmp_path / "tiny-llama"
    make_llama().save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_roberta_dir(tmp_path):
    path = tmp_path / "tiny-roberta"
    make_roberta().save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def skillgraft_home(tmp_path, monkeypatch):
    """An empty cache root for the test."""
    home = tmp_path / "home"
    monkeypatch.setenv("SKILLGRAFT_HOME", str(home))
    return home
