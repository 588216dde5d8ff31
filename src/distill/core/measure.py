"""Speed and memory figures shared by sampling, training, evaluation and benchmarks."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb() -> float:
    """Peak memory of this process so far: GPU allocations on CUDA, else peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB
