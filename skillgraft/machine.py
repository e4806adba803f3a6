"""How a chapter's kernel shares the machine: torch's threads on a busy CPU.

torch's CPU threads (OpenMP) spin while they wait for each other. On an idle machine that
is the fastest way to wait; when another process keeps a core busy, a spinning thread
burns the time slice its partner needs, and a step runs several times slower than the
cores left would allow (``make bench``: 8 bf16 fine-tuning steps beside one CPU-bound
process took 3.1 times as long as alone spinning, 1.5 times waiting passively). So a
kernel started on a busy machine waits passively (``OMP_WAIT_POLICY=PASSIVE``); on an idle
one it spins (passive waiting costs about 1.25 times there). The thread count, and so every result, is the same
either way: only how the threads wait changes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

__all__ = ["BUSY_CORES", "busy_cores", "kernel_environment", "native_bf16", "bf16_note"]

BUSY_CORES = 0.5  # cores kept busy by other processes from which kernels wait passively


def _cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is missing."""
    try:
        fields = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is already counted in user


def busy_cores(seconds: float = 0.5, sample: Callable[[], tuple[int, int] | None] = _cpu_jiffies,
               cores: int | None = None) -> float | None:
    """How many cores other processes kept busy over ``seconds`` (this one sleeps meanwhile),
    or None where the CPU counters cannot be read."""
    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (cores or os.cpu_count() or 1)


def kernel_environment(busy: float | None, environ: dict | None = None) -> dict[str, str]:
    """The variables to set for a kernel started now: ``OMP_WAIT_POLICY=PASSIVE`` when ``busy``
    (see :func:`busy_cores`) is at least :data:`BUSY_CORES`; nothing when the machine is idle,
    unknown, or the caller set ``OMP_WAIT_POLICY`` already (theirs is kept)."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or busy is None or busy < BUSY_CORES:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


if __name__ == "__main__":  # `env $(python -m skillgraft.machine) CMD`: CMD's kernels wait as this machine needs
    print(" ".join(f"{k}={v}" for k, v in kernel_environment(busy_cores()).items()))


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports): without it,
    torch emulates bf16 and a training step under bf16 autocast takes many times an fp32 one."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_note(params: dict) -> str | None:
    """A line for the terminal when ``params`` train in bf16 on a CPU that emulates it, else None."""
    device = str(params.get("device", "cpu"))
    if params.get("precision") != "bf16" or not device.startswith("cpu") or native_bf16():
        return None
    return ("this CPU has no native bf16 (AVX512-BF16): bf16 training steps run many times slower than fp32 ones "
            "here (the chapters' default is fp32, the precision of the book's published results); "
            "`-p precision fp32` is faster on this machine")
