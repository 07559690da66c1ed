"""Sections processed concurrently on a few worker threads (the `tiles` and `embeddings` stages).

Threads, not processes: a section's work is Pillow decoding and resizing, numpy sorts, torch
ops and zarr codecs, which all release the GIL, so two threads keep two cores busy without
pickling tiles or images between processes, and a daemonic worker (Celery prefork) can run
them too. Each worker handles one section at a time, so at most ``workers`` sections (e.g.
decoded section images) are in memory at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TypeVar

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "resolve_workers", "map_sections"]

T = TypeVar("T")
R = TypeVar("R")

MAX_AUTO_WORKERS = 4  # beyond this, sections compete for memory more than they gain


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows have no affinity API
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, n_items: int) -> int:
    """``workers`` threads for ``n_items`` sections: ``None`` or 0 is automatic
    (min(available CPUs, sections, MAX_AUTO_WORKERS)); never more than the sections; at least 1."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or None: automatic), got {workers}")
    want = workers or min(available_cpus(), MAX_AUTO_WORKERS)
    return max(1, min(want, n_items))


def map_sections(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    on_result: Callable[[int, R, float, float], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads, results in input order.

    ``on_result(index, result, started_s, seconds)`` runs in the calling thread as each item
    finishes (completion order), e.g. to log progress: the item started ``started_s`` after
    this call and took ``seconds`` of wall time (with workers > 1 the items overlap, so their
    seconds add up to more than the call's wall time).
    The first failure cancels the items not yet started, waits for the running ones and is
    re-raised unchanged (the earliest failed item in input order), so an ``InputError``
    naming a file reaches the caller exactly as in a sequential loop. ``workers=1`` runs in
    the calling thread.
    """

    t_call = time.perf_counter()

    def timed(x: T) -> tuple[R, float, float]:
        t0 = time.perf_counter()
        r = fn(x)
        return r, t0 - t_call, time.perf_counter() - t0

    if workers <= 1 or len(items) <= 1:
        out = []
        for i, x in enumerate(items):
            r, started, dt = timed(x)
            if on_result is not None:
                on_result(i, r, started, dt)
            out.append(r)
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asign-section") as pool:
        futures: list[Future[tuple[R, float, float]]] = [pool.submit(timed, x) for x in items]
        index = {f: i for i, f in enumerate(futures)}
        try:
            for f in as_completed(futures):
                if f.exception() is not None:
                    break
                if on_result is not None:
                    on_result(index[f], *f.result())
        finally:  # on a failure (or Ctrl-C): drop the items not started; leaving `with` waits for the running ones
            for f in futures:
                f.cancel()
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return [f.result()[0] for f in futures]
