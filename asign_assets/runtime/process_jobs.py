"""Run one library function on several inputs in fresh Python processes, a few at a time.

Used where a stage has independent, CPU-bound pieces (the members of an ensemble) and a
single-threaded process leaves the machine's other cores idle.

Why not :mod:`multiprocessing`: its ``spawn`` and ``forkserver`` start methods re-run the
caller's ``__main__`` module in every worker (a user's script without an
``if __name__ == "__main__"`` guard would start over in each), ``fork`` after torch and
OpenMP have started threads can deadlock, and a daemonic process (a Celery prefork
worker) may not start children at all. ``python -m asign_assets.runtime.process_jobs`` imports
only this package, whoever the caller is.

A job is ``module:function`` applied to bytes and returning bytes; inputs and outputs go
through files in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import asign_assets

_PACKAGE_ROOT = str(Path(asign_assets.__file__).resolve().parent.parent)


class JobError(RuntimeError):
    """A job's process failed; the message carries the end of its stderr."""


def resolve(func: str) -> Callable[[bytes], bytes]:
    """``"package.module:function"`` -> the function."""
    module, _, name = func.partition(":")
    if not module or not name:
        raise ValueError(f"job function must be 'module:function', got {func!r}")
    return getattr(importlib.import_module(module), name)


def _child_env() -> dict[str, str]:
    """The caller's environment, with this copy of the package first on the path (a worktree
    or a source checkout must not be shadowed by an installed asign)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_in_processes(func: str, payloads: Sequence[bytes], workers: int, poll_s: float = 0.05) -> list[bytes]:
    """``[func(p) for p in payloads]``, each in its own process, at most ``workers`` at a time.

    Results come back in input order. If a job fails, the running ones are killed and a
    :class:`JobError` names the job and ends with its stderr.
    """
    resolve(func)  # fail here, not in every child, on a wrong name
    workers = max(1, int(workers))
    with tempfile.TemporaryDirectory(prefix="asign-jobs-") as tmp:
        folder = Path(tmp)
        pending = list(range(len(payloads)))
        running: dict[int, tuple[subprocess.Popen, object]] = {}
        env = _child_env()
        try:
            while pending or running:
                while pending and len(running) < workers:
                    i = pending.pop(0)
                    (folder / f"{i}.in").write_bytes(payloads[i])
                    err = open(folder / f"{i}.err", "wb")
                    cmd = [sys.executable, "-m", "asign_assets.runtime.process_jobs", func, str(folder / f"{i}.in"), str(folder / f"{i}.out")]
                    running[i] = (subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env), err)
                for i, (proc, err) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    err.close()
                    del running[i]
                    if rc != 0:
                        tail = (folder / f"{i}.err").read_bytes().decode(errors="replace")[-4000:]
                        raise JobError(f"job {i} of {len(payloads)} ({func}) exited with status {rc}:\n{tail}")
                if running:
                    time.sleep(poll_s)
        finally:
            for proc, err in running.values():
                proc.kill()
                proc.wait()
                err.close()
        return [(folder / f"{i}.out").read_bytes() for i in range(len(payloads))]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asign_assets.runtime.process_jobs module:function IN OUT``: OUT = function(IN's bytes)."""
    func, src, dst = list(sys.argv[1:] if argv is None else argv)
    out = resolve(func)(Path(src).read_bytes())
    tmp = Path(dst + ".tmp")
    tmp.write_bytes(out)
    tmp.replace(dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
