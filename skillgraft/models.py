"""Load a language model by short name, local directory or hub id.

Per-architecture facts live in one table, :data:`ARCHITECTURES`: whether the model is a
causal or a masked LM, and which parameters sit inside the transformer blocks (the
*graftable* ones, following the official ``select_trainable_parameters``). Algorithms
elsewhere never branch on the architecture; they ask this table.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import assets

__all__ = ["ArchSpec", "ARCHITECTURES", "LM", "arch_spec", "check_model", "graftable_parameters", "num_graftable", "check_names",
           "shapes", "load_lm", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    kind: str    # "causal": label word read at the next-token position; "masked": at <mask>
    blocks: str  # regex on parameter names: the transformer blocks (graftable parameters)
    head: str    # attribute of the model holding the LM head (applied to hidden states at the read position)


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("causal", r"^model\.layers\.\d+\.", "lm_head"),
    "mistral": ArchSpec("causal", r"^model\.layers\.\d+\.", "lm_head"),
    "qwen2": ArchSpec("causal", r"^model\.layers\.\d+\.", "lm_head"),
    "gpt2": ArchSpec("causal", r"^transformer\.h\.\d+\.", "lm_head"),
    "roberta": ArchSpec("masked", r"^roberta\.encoder\.layer\.\d+\.", "lm_head"),
    "bert": ArchSpec("masked", r"^bert\.encoder\.layer\.\d+\.", "cls"),
}


def arch_spec(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` of ``model``, from ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported: {sorted(ARCHITECTURES)}. "
            "Add a row to skillgraft.models.ARCHITECTURES for a new one."
        )
    return ARCHITECTURES[model_type]


def graftable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters inside the transformer blocks (weights, biases, norms), in model order."""
    pattern = re.compile(arch_spec(model).blocks)
    return {n: p for n, p in model.named_parameters() if pattern.search(n)}


def num_graftable(model: nn.Module) -> int:
    """N, the number of graftable entries: the denominator of every sparsity."""
    return sum(p.numel() for p in graftable_parameters(model).values())


def shapes(tensors) -> dict[str, tuple]:
    """Name → shape of name-keyed tensors."""
    return {n: tuple(t.shape) for n, t in tensors.items()}


def check_names(got, want, what: str, subset: bool = False) -> None:
    """Raise a ValueError saying which names are missing/unexpected or which shapes differ
    (``got`` and ``want`` map names to shapes; with ``subset``, ``got`` may lack names)."""
    extra, missing = [n for n in got if n not in want], [] if subset else [n for n in want if n not in got]
    if extra or missing:
        parts = [f"{len(v)} {k} name(s) (e.g. {v[:3]})" for k, v in (("missing", missing), ("unexpected", extra)) if v]
        raise ValueError(f"{what}: parameter names do not match: {'; '.join(parts)}. Made for another model?")
    for n in (n for n in want if n in got):  # in the reference's order
        if tuple(got[n]) != tuple(want[n]):
            raise ValueError(f"{what}: shape mismatch for {n!r}: {tuple(got[n])} here, {tuple(want[n])} expected")


@dataclass
class LM:
    """A loaded language model with its tokenizer."""

    model: nn.Module
    tokenizer: object
    name: str    # what the user asked for: short name, directory or hub id
    kind: str    # "causal" | "masked"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (CUDA when present)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(device)!r}; accepted: 'cpu', 'cuda', 'cuda:N', 'auto'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(device)!r}; accepted: 'cpu', 'cuda', 'cuda:N', 'auto'")
    return dev


def _looks_like_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", name) is not None


def check_model(name_or_path: str) -> None:
    """Refuse, before any compute, a model that :func:`load_lm` could not load: not an embedded
    name, not a folder with a ``config.json``, and not a hub id — or a hub id while the hub is
    offline (``HF_HUB_OFFLINE``) and the model is not in the local hub cache."""
    import os

    accepted = (f"accepted: an embedded model ({', '.join(assets.MODELS)}), a local folder holding a "
                "transformers model, or a hub id like 'roberta-base' (needs internet)")
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"unknown model {name_or_path!r}; {accepted}")
    if name_or_path in assets.MODELS:
        return
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {name_or_path!r} has no config.json; {accepted}")
        return
    if not _looks_like_hub_id(name_or_path) or path.exists():
        raise ValueError(f"unknown model {name_or_path!r}; {accepted}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ValueError(f"unknown model {name_or_path!r}: not an embedded model and not in the local hub "
                             f"cache, and the hub is offline (HF_HUB_OFFLINE); {accepted}")


ATTENTION = "eager"  # how every loaded LM computes attention (a result-changing choice: this module is hashed)


def load_lm(name_or_path: str = assets.DEFAULT_MODEL, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> LM:
    """Load a causal or masked LM and its tokenizer, in eval mode.

    ``name_or_path`` is one of the embedded short names (:func:`skillgraft.assets.list_models`,
    fetched on first use), a local directory holding a transformers model, or a hub id
    such as ``roberta-base`` (needs internet, or the model already in the hub cache).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    dev = resolve_device(device)
    if name_or_path in assets.MODELS:
        source = str(assets.model_path(name_or_path))
    elif Path(name_or_path).is_dir():
        source = str(name_or_path)
    elif _looks_like_hub_id(name_or_path) and not Path(name_or_path).exists():
        source = name_or_path
    else:
        raise ValueError(
            f"unknown model {name_or_path!r}: not an embedded model ({', '.join(assets.MODELS)}), "
            "not an existing directory, and not a hub id like 'roberta-base'"
        )
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        if source == name_or_path and not Path(source).is_dir():
            raise RuntimeError(
                f"could not load hub model {name_or_path!r}: {err.__class__.__name__}. Hub models need "
                f"internet (or the model in the local hub cache); offline, use an embedded model: "
                f"{', '.join(assets.MODELS)}"
            ) from err
        raise
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {config.model_type!r} in {name_or_path!r}; "
                         f"supported: {sorted(ARCHITECTURES)}")
    kind = ARCHITECTURES[config.model_type].kind
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    # Eager attention: on the CPU, at the chapters' lengths (≤ 64 tokens), SDPA's flash-attention
    # backward is the slow part of a step; `make bench` reports a fine-tuning pass eager against SDPA.
    model = auto.from_pretrained(source, dtype=dtype, attn_implementation=ATTENTION).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # causal LMs often ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s (%s LM, %.1fM parameters) on %s", name_or_path, kind,
             sum(p.numel() for p in model.parameters()) / 1e6, dev)
    return LM(model=model, tokenizer=tokenizer, name=name_or_path, kind=kind)
