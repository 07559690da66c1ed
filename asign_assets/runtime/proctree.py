"""Child process trees that are stopped as a whole (``asign ui``: Dagster + viewer).

``dagster dev`` starts a webserver, a daemon and code servers; stopping only the direct
child leaves those running. Each child here leads its own session (process group), and
:meth:`ChildGroup.stop` signals every process of those sessions plus every descendant
(found with psutil, in case one started a session of its own), then kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

import psutil


class ChildGroup:
    """Processes started in their own sessions, stopped together within a deadline."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(list(cmd), start_new_session=True, **popen_kwargs)
        self.procs.append(proc)
        return proc

    def first_exited(self) -> subprocess.Popen | None:
        return next((p for p in self.procs if p.poll() is not None), None)

    def members(self) -> list[psutil.Process]:
        """Every live process of the group: the children, their descendants, their sessions."""
        found: dict[int, psutil.Process] = {}
        sessions = {p.pid for p in self.procs}
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(p.pid)
                for q in [root, *root.children(recursive=True)]:
                    found[q.pid] = q
        for q in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if q.pid not in found and os.getsid(q.pid) in sessions:
                    found[q.pid] = q
        return [q for q in found.values() if q.pid != os.getpid()]

    def _signal(self, sig: signal.Signals, members: list[psutil.Process]) -> None:
        """``sig`` to every child's process group and to each listed descendant (gone ones skipped)."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        for q in members:
            with contextlib.suppress(psutil.Error):
                q.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> list[int]:
        """SIGTERM to everything, SIGKILL to what is alive after ~70% of ``timeout``; returns
        the pids still alive at the deadline (empty on success). Children are reaped."""
        deadline = time.monotonic() + timeout
        members = self.members()
        self._signal(signal.SIGTERM, members)
        _, alive = psutil.wait_procs(members, timeout=max(0.1, 0.7 * timeout))
        alive += [q for q in self.members() if q not in alive]  # started while stopping
        self._signal(signal.SIGKILL, alive)
        _, alive = psutil.wait_procs(alive, timeout=max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        return [q.pid for q in alive if q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
