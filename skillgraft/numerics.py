"""A numerics fingerprint: which bits this machine's kernels give, measured rather than named.

Two CPUs that report the same model string can give other last bits (and two that report different
ones the same), because what decides them is the kernels torch picks (its CPU capability, the BLAS,
the thread count) and how the hardware rounds. :func:`fingerprint` runs a fixed, seconds-long
computation with the chapters' kernels — fp32 matrix products of the embedded model's shapes, a
softmax over its vocabulary, and a forward and backward pass of one decoder block of its
architecture, initialized from a fixed seed, on a fixed input — and hashes every output bit. Where two
machines' fingerprints match, a recomputation is expected to equal the published entry bit for bit;
elsewhere the tolerance applies (:data:`skillgraft.publishing.TOLERANCE`).
"""
from __future__ import annotations

import hashlib
import platform
from functools import lru_cache

import torch

__all__ = ["SHAPES", "fingerprint", "describe"]

SHAPES = {"hidden": 576, "intermediate": 1536, "heads": 9, "kv_heads": 3, "vocab": 49152, "tokens": 48}  # SmolLM2-135M


def _outputs(seed: int = 0) -> list[torch.Tensor]:
    """The fixed computation: every tensor whose bits the fingerprint hashes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h, m, v, n = SHAPES["hidden"], SHAPES["intermediate"], SHAPES["vocab"], SHAPES["tokens"]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=gen)                       # (T, H)
    w_up, w_down = torch.randn(h, m, generator=gen) / h ** 0.5, torch.randn(m, h, generator=gen) / m ** 0.5
    head = torch.randn(h, v, generator=gen) / h ** 0.5
    up = x @ w_up                                              # (T, I)
    down = torch.nn.functional.silu(up) @ w_down               # (T, H)
    probs = torch.softmax(down @ head, dim=-1)                 # (T, V)
    config = LlamaConfig(vocab_size=v, hidden_size=h, intermediate_size=m, num_hidden_layers=1,
                         num_attention_heads=SHAPES["heads"], num_key_value_heads=SHAPES["kv_heads"],
                         max_position_embeddings=2 * n, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    ids = torch.randint(0, v, (2, n), generator=gen)           # (B, T)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for p in model.model.layers[0].parameters() if p.grad is not None]
    return [up, down, probs, out.logits.detach(), out.loss.detach().reshape(1), *grads]


@lru_cache(maxsize=None)
def fingerprint(threads: int | None = None) -> str:
    """sha256 (16 hex digits) of the bits of :func:`_outputs`, computed with ``threads`` torch threads (default:
    torch's count now): equal on two machines exactly where their kernels give the same bits."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        digest = hashlib.sha256()
        for t in _outputs():
            digest.update(t.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(before)


def _blas() -> str:
    config = torch.__config__.show()
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        for part in config.replace("\n", ",").split(","):
            if part.strip().startswith(key + "="):
                return part.split("=", 1)[1].strip()
    return "mkl" if torch.backends.mkl.is_available() else "unknown"


def _vendor() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(threads: int | None = None) -> dict:
    """What decides this machine's bits: the fingerprint, and beside it the CPU vendor, torch's CPU capability,
    the BLAS and the thread count it was measured with."""
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    return {"fingerprint": fingerprint(threads), "vendor": _vendor(), "capability": capability, "blas": _blas(),
            "fingerprint_threads": threads or torch.get_num_threads()}
