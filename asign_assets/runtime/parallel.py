"""Independent pieces of a stage processed concurrently in a few worker processes: the
sections of `tiles` and `embeddings`, the ensemble members of `model`.

Processes, not threads: zarr runs a process's chunk pipeline as Python coroutines on ONE
event-loop thread (busy 1.2 of the 2.5 s a 100k-benchmark section's tiles take), so threads
in one process queue behind it: 20 sections tiled in 62 s on one thread and 64 s on two,
but in 20.5 s instead of 40 s in two processes, each with its own loop and GIL (encoding alone
scales with threads too, 130 -> 85 s, as torch and numpy release the GIL). Workers are
:mod:`asign_assets.runtime.process_jobs` processes (``python -m``: the caller's ``__main__`` is not
re-run, no fork after torch started threads, and a daemonic Celery worker may start them).
Sections are dealt round-robin into ``workers`` jobs, each doing its sections one after
another, so a worker's start-up (importing torch and the package, ~2-3 s) is paid once per
worker, not per section, and at most ``workers`` sections (e.g. decoded section images) are
in memory at once. ``fn`` and the items must pickle (module-level functions,
``functools.partial``).
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from asign_assets.errors import InputError

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "local_group_path", "resolve_workers", "map_in_processes"]

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
    """``workers`` processes for ``n_items`` sections: ``None`` or 0 is automatic
    (min(available CPUs, sections, MAX_AUTO_WORKERS)); never more than the sections; at least 1."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or None: automatic), got {workers}")
    want = workers or min(available_cpus(), MAX_AUTO_WORKERS)
    return max(1, min(want, n_items))


def _run(fn: Callable[[Any], Any], i: int, x: Any) -> tuple[int, Any, InputError | None, float, float]:
    """``fn(x)`` as (index, result, InputError or None, start on the system-wide monotonic clock, seconds)."""
    t0 = time.monotonic()
    try:
        r, err = fn(x), None
    except InputError as exc:  # a user's bad input travels back as a value; anything else fails the job
        r, err = None, exc
    return i, r, err, t0, time.monotonic() - t0


def _job(payload: bytes) -> bytes:
    """A worker's share of the sections (``process_jobs`` entry point), one after another,
    stopping at the first bad input."""
    fn, pairs = pickle.loads(payload)
    out = []
    for i, x in pairs:
        out.append(_run(fn, i, x))
        if out[-1][2] is not None:
            break
    return pickle.dumps(out)


def map_in_processes(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    on_result: Callable[[int, R, float, float], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` in ``workers`` worker processes, results in input order.

    ``on_result(index, result, started_s, seconds)`` runs in the calling process for each
    item (in this process as each finishes; with workers, in start order once all are
    done): the item started ``started_s`` after this call and took ``seconds`` of wall time
    (with workers > 1 items overlap, so their seconds add up to more than the call's wall
    time). An ``InputError`` from an item is re-raised here unchanged (the earliest item in
    input order that failed) after the workers stopped; other failures raise
    ``process_jobs.JobError`` with the worker's stderr. ``workers=1`` or one item: a loop in
    this process.
    """
    t_call = time.monotonic()
    if workers <= 1 or len(items) <= 1:
        out = []
        for i, x in enumerate(items):
            _, r, err, t0, dt = _run(fn, i, x)
            if err is not None:
                raise err
            if on_result is not None:
                on_result(i, r, t0 - t_call, dt)
            out.append(r)
        return out
    from asign_assets.runtime.process_jobs import run_in_processes

    n_jobs = min(workers, len(items))
    payloads = [pickle.dumps((fn, [(i, items[i]) for i in range(k, len(items), n_jobs)])) for k in range(n_jobs)]
    done = sorted((row for o in run_in_processes("asign_assets.runtime.parallel:_job", payloads, n_jobs) for row in pickle.loads(o)), key=lambda row: row[0])
    errors = [err for _, _, err, _, _ in done if err is not None]
    if errors:
        raise errors[0]
    if on_result is not None:
        for i, r, _, t0, dt in sorted(done, key=lambda row: row[3]):
            on_result(i, r, t0 - t_call, dt)
    return [r for _, r, _, _, _ in done]


def local_group_path(group: Any) -> str | None:
    """Filesystem path of a zarr group in a local store (where a worker process reopens it),
    or None for other stores (memory, remote), whose sections then run in this process."""
    root = getattr(group.store, "root", None)
    if root is None or not os.path.isdir(root):
        return None
    return os.path.join(str(root), group.path) if group.path else str(root)
