"""Sections processed concurrently in a few worker processes (the `tiles` and `embeddings` stages).

Processes, not threads: most of a section's tiling time is zarr's chunk pipeline, which runs
as Python coroutines on ONE event-loop thread per process (with the GIL), so threads in one
process queue behind it; worker processes each have their own loop and GIL. They are
*spawned* (a forked child would inherit zarr's loop without its thread, and torch's state),
so ``fn`` and the items must pickle (module-level functions, ``functools.partial``), and
errors cross back pickled (:class:`asign_assets.errors.InputError` does). A daemonic process
(a Celery prefork worker) cannot have children: there the sections run one by one. Each
worker handles one section at a time, so at most ``workers`` sections (e.g. decoded section
images) are in memory at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "can_start_workers", "local_group_path", "resolve_workers", "map_sections"]

T = TypeVar("T")
R = TypeVar("R")

MAX_AUTO_WORKERS = 4  # beyond this, sections compete for memory more than they gain


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows have no affinity API
        return os.cpu_count() or 1


def can_start_workers() -> bool:
    """False in a daemonic process (Celery prefork, multiprocessing pools), which may not have children."""
    return not mp.current_process().daemon


def resolve_workers(workers: int | None, n_items: int) -> int:
    """``workers`` processes for ``n_items`` sections: ``None`` or 0 is automatic
    (min(available CPUs, sections, MAX_AUTO_WORKERS)); never more than the sections; at
    least 1; 1 where this process cannot start workers (see :func:`can_start_workers`)."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or None: automatic), got {workers}")
    want = workers or min(available_cpus(), MAX_AUTO_WORKERS)
    return max(1, min(want, n_items)) if can_start_workers() else 1


def _timed(fn: Callable[[Any], Any], x: Any) -> tuple[Any, float, float]:
    """``fn(x)``, its start on the system-wide monotonic clock (comparable across processes) and its seconds."""
    t0 = time.monotonic()
    r = fn(x)
    return r, t0, time.monotonic() - t0


def map_sections(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    on_result: Callable[[int, R, float, float], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` in ``workers`` spawned processes, results in input order.

    ``on_result(index, result, started_s, seconds)`` runs in the calling process as each
    item finishes (completion order), e.g. to log progress: the item started ``started_s``
    after this call and took ``seconds`` of wall time (with workers > 1 items overlap, so
    their seconds add up to more than the call's wall time). The first failure cancels the
    items not yet started, waits for the running ones and is re-raised (the earliest failed
    item in input order), so an ``InputError`` naming a file reaches the caller as in a
    sequential loop. ``workers=1``, one item, or a daemonic caller: a loop in this process.
    """
    t_call = time.monotonic()
    if workers <= 1 or len(items) <= 1 or not can_start_workers():
        out = []
        for i, x in enumerate(items):
            r, t0, dt = _timed(fn, x)
            if on_result is not None:
                on_result(i, r, t0 - t_call, dt)
            out.append(r)
        return out
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn")) as pool:
        futures: list[Future[tuple[R, float, float]]] = [pool.submit(_timed, fn, x) for x in items]
        index = {f: i for i, f in enumerate(futures)}
        try:
            for f in as_completed(futures):
                if f.exception() is not None:
                    break
                if on_result is not None:
                    r, t0, dt = f.result()
                    on_result(index[f], r, t0 - t_call, dt)
        finally:  # on a failure (or Ctrl-C): drop the items not started; leaving `with` waits for the running ones
            for f in futures:
                f.cancel()
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return [f.result()[0] for f in futures]


def local_group_path(group: Any) -> str | None:
    """Filesystem path of a zarr group in a local store (where a worker process reopens it),
    or None for other stores (memory, remote), whose sections then run in this process."""
    root = getattr(group.store, "root", None)
    if root is None or not os.path.isdir(root):
        return None
    return os.path.join(str(root), group.path) if group.path else str(root)
