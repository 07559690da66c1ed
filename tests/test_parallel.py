from __future__ import annotations

import threading
import time

import pytest

from asign_assets.errors import InputError
from asign_assets.parallel import MAX_AUTO_WORKERS, available_cpus, map_sections, resolve_workers


def test_resolve_workers_automatic_and_bounded():
    auto = min(available_cpus(), MAX_AUTO_WORKERS)
    assert resolve_workers(None, 20) == resolve_workers(0, 20) == auto
    assert resolve_workers(None, 1) == 1 and resolve_workers(8, 3) == 3 and resolve_workers(1, 20) == 1
    with pytest.raises(ValueError):
        resolve_workers(-1, 5)


def test_map_sections_keeps_input_order_and_uses_the_threads():
    threads, lock = set(), threading.Lock()
    finished = []

    def slow_square(x: int) -> int:
        with lock:
            threads.add(threading.get_ident())
        time.sleep(0.05 * (4 - x))  # later items finish first
        return x * x

    out = map_sections(slow_square, [0, 1, 2, 3], workers=4, on_result=lambda i, r, started, s: finished.append((i, r, s)))
    assert out == [0, 1, 4, 9]
    assert [i for i, _, _ in finished] == [3, 2, 1, 0]  # completion order, reported from the calling thread
    assert all(r == i * i and s >= 0.04 for i, r, s in finished)
    assert len(threads) == 4 and threading.get_ident() not in threads
    assert map_sections(slow_square, [2, 3], workers=1) == [4, 9]


def test_map_sections_error_stops_unstarted_items_and_is_reraised_unchanged():
    started = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        if x == 1:
            raise InputError(f"S{x}.jpg", "cannot be decoded")
        time.sleep(0.2)
        return x

    with pytest.raises(InputError, match=r"S1\.jpg.*cannot be decoded"):
        map_sections(work, list(range(8)), workers=2)
    assert 1 in started and len(started) <= 4  # the failure cancelled the items still queued
