"""Sections in worker processes (asign_assets.runtime.parallel): order, timings, errors."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import pytest

from asign_assets.errors import InputError
from asign_assets.runtime.parallel import MAX_AUTO_WORKERS, available_cpus, map_in_processes, resolve_workers
from asign_assets.runtime.process_jobs import JobError

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tests_on_path(monkeypatch):
    """Worker processes import the functions below from this module."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def _square_in(pause: float, x: int) -> tuple[int, int]:
    time.sleep(pause)
    return x * x, os.getpid()


def _check(x: int) -> int:
    if x == 3:
        raise InputError(f"S{x}.jpg", "cannot be decoded", field="image")
    if x == 5:
        raise InputError(f"S{x}.jpg", "also bad")
    return x


def _crash(x: int) -> int:
    raise RuntimeError(f"bug on item {x}")


def test_resolve_workers_automatic_and_bounded():
    auto = min(available_cpus(), MAX_AUTO_WORKERS)
    assert resolve_workers(None, 20) == resolve_workers(0, 20) == auto
    assert resolve_workers(None, 1) == 1 and resolve_workers(8, 3) == 3 and resolve_workers(1, 20) == 1
    with pytest.raises(ValueError):
        resolve_workers(-1, 5)


def test_map_in_processes_in_worker_processes_keeps_input_order(tests_on_path):
    seen = []
    t0 = time.monotonic()
    out = map_in_processes(partial(_square_in, 0.3), list(range(5)), workers=2, on_result=lambda i, r, started, s: seen.append((i, started, s)))
    wall = time.monotonic() - t0
    assert [r for r, _ in out] == [0, 1, 4, 9, 16]
    pids = {pid for _, pid in out}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, each doing its share
    assert sorted(i for i, _, _ in seen) == [0, 1, 2, 3, 4]
    assert all(0 <= started < wall and 0.29 < s < wall for _, started, s in seen)
    assert map_in_processes(partial(_square_in, 0.0), [2, 3], workers=1)[1] == (9, os.getpid())


def test_map_in_processes_reraises_the_first_input_error_unchanged(tests_on_path):
    with pytest.raises(InputError) as err:
        map_in_processes(_check, list(range(8)), workers=3)
    assert err.value.source == "S3.jpg" and err.value.field == "image" and str(err.value) == "S3.jpg: field 'image': cannot be decoded"
    with pytest.raises(InputError, match="S3.jpg"):  # the same in this process
        map_in_processes(_check, list(range(8)), workers=1)
    with pytest.raises(JobError, match="bug on item"):  # a bug is not dressed up as bad input
        map_in_processes(_crash, [1, 2], workers=2)


def _in_daemon(q) -> None:
    import multiprocessing as mp

    out = map_in_processes(partial(_square_in, 0.0), [1, 2, 3], workers=2)
    q.put((mp.current_process().daemon, os.getpid(), out))


def test_map_in_processes_works_in_a_daemonic_process(tests_on_path):
    """A Celery prefork worker is daemonic: multiprocessing may not start children there, but
    process_jobs' plain subprocesses may, so sections still run in workers."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_in_daemon, args=(q,), daemon=True)
    p.start()
    daemon, pid, out = q.get(timeout=120)
    p.join(timeout=30)
    assert daemon and [r for r, _ in out] == [1, 4, 9]
    assert pid not in {w for _, w in out} and len({w for _, w in out}) == 2
