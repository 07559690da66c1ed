"""Seeded, deterministic torch execution for training and imputation (same seed, same states)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 0):
    """Seeded, deterministic algorithms and (optionally) a thread count, restored afterwards.

    Small graphs are dominated by per-op overhead: one thread is much faster than two
    contended ones on a shared 2-core machine, hence the cpu preset's ``threads=1``.
    """
    import torch.utils.deterministic as tud

    prev = torch.are_deterministic_algorithms_enabled()
    prev_fill = tud.fill_uninitialized_memory
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode NaN-fills every torch.empty (thousands of fills per epoch); our code
    # never reads uninitialised memory, so that costs ~7% of an epoch for nothing
    tud.fill_uninitialized_memory = False
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        tud.fill_uninitialized_memory = prev_fill
        torch.set_num_threads(prev_threads)
