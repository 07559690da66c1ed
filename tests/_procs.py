"""Process helpers for the end-to-end tests: free ports, the tested commands, clean shutdown.

The deployment tests run the shell commands of docs/deployment.md verbatim: each command
sits in a fenced block right after a ``<!-- tested: NAME -->`` marker and is read from
there by :func:`doc_command`, so the doc and the tests cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT_MD = ROOT / "docs" / "deployment.md"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc_command(name: str) -> str:
    """The command in the fenced block after ``<!-- tested: name -->`` in docs/deployment.md."""
    text = DEPLOYMENT_MD.read_text()
    m = re.search(rf"<!-- tested: {re.escape(name)} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert m, f"docs/deployment.md has no command block marked <!-- tested: {name} -->"
    lines = [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def tool_env(env: dict[str, str], extra_path: list[Path] = ()) -> dict[str, str]:
    """``env`` with this interpreter's scripts (dagster, celery, asign, moto_server) first on PATH."""
    out = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])), "PYTHONUNBUFFERED": "1"}
    out["PATH"] = os.pathsep.join([*map(str, extra_path), str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return out


def find_binary(name: str, extra_globs: tuple[str, ...] = ()) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    for pattern in extra_globs:
        hits = sorted(Path("/").glob(pattern.lstrip("/") + "/" + name))
        if hits:
            return hits[-1]
    return None


def require(names: dict[str, Path | None | bool]) -> None:
    """Skip, naming every missing component; fail instead under ``ASIGN_DEPLOY_TESTS=required`` (.ci/run)."""
    missing = [n for n, v in names.items() if not v]
    if missing:
        message = f"not installed: {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("ASIGN_DEPLOY_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)


def require_modules(*modules: str) -> None:
    import importlib.util

    require({f"python module {m}": importlib.util.find_spec(m) is not None for m in modules})


def shell(command: str, env: dict[str, str], log: Path, cwd: Path = ROOT, user: str | None = None) -> subprocess.Popen:
    """Start ``command`` with bash in its own process group (optionally as ``user``), output to ``log``."""
    argv = ["bash", "-c", "set -euo pipefail\n" + command]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def run(command: str, env: dict[str, str], log: Path, cwd: Path = ROOT, timeout: float = 120, user: str | None = None) -> None:
    """Run ``command`` to completion; fail the test with the log's tail when it fails."""
    proc = shell(command, env, log, cwd, user)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, [])
        raise AssertionError(f"timed out after {timeout} s: {command}\n{tail(log)}") from None
    assert rc == 0, f"exit {rc}: {command}\n{tail(log)}"


def tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, alive: subprocess.Popen | None = None, log: Path | None = None, every: float = 1.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` (and a log) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            got = probe()
            if got:
                return got
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({alive.returncode})\n{tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s\n{tail(log) if log else ''}")
        time.sleep(every)


def tree_pids(proc: subprocess.Popen | int) -> set[int]:
    """A process and all its descendants (alive now)."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc if isinstance(proc, int) else proc.pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    return set()


def _ours(proc: psutil.Process, markers: list[str], pgid: int) -> bool:
    with contextlib.suppress(psutil.Error, OSError):
        if os.getpgid(proc.pid) == pgid:
            return True
    if not markers:
        return False
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(proc.cmdline())
        if any(m in cmd for m in markers):
            return True
    with contextlib.suppress(psutil.Error):
        return proc.environ().get("DAGSTER_HOME") == markers[0]
    return False


def leftovers(markers: list[str], pgid: int) -> list[str]:
    """Live processes of the group ``pgid``, or whose command line or DAGSTER_HOME matches ``markers``."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        if _ours(proc, markers, pgid):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
    return found


def stop(proc: subprocess.Popen, markers: list[str], grace: tuple[float, float, float] = (45, 15, 10)) -> list[str]:
    """Ctrl-C the process group (what dagster dev expects), then SIGTERM, then SIGKILL.

    Returns what was still running after all three (killed one by one): strays outside
    the group, e.g. re-parented run workers, found through ``markers``.
    """
    pgid = proc.pid
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not leftovers(markers, pgid):
                return []
            time.sleep(0.3)
    left = leftovers(markers, pgid)
    for line in left:
        with contextlib.suppress(psutil.Error, ValueError):
            psutil.Process(int(line.split(":")[0])).kill()
    return left


@contextlib.contextmanager
def service(command: str, env: dict[str, str], log: Path, ready: Callable[[], object], what: str, timeout: float = 60, user: str | None = None, grace: tuple[float, float, float] = (10, 10, 5)) -> Iterator[subprocess.Popen]:
    """A long-running process from a doc command: started, awaited, and always stopped."""
    proc = shell(command, env, log, user=user)
    try:
        wait_for(ready, timeout, what, alive=proc, log=log, every=0.3)
        yield proc
    finally:
        left = stop(proc, [], grace)
        assert not left, f"{what}: processes left after stop: {left}"


# --------------------------------------------------------------------------- services
def unprivileged_user() -> str | None:
    """Postgres refuses to run as root: under root, run it as ``nobody``; otherwise as ourselves."""
    if os.geteuid() != 0:
        return None
    return "nobody"


def chown_for(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


PG_GLOBS = ("/usr/lib/postgresql/*/bin",)


def postgres_bin_dir() -> Path | None:
    found = find_binary("pg_ctl", PG_GLOBS)
    bin_dir = found.resolve().parent if found else None
    return bin_dir if bin_dir and (bin_dir / "initdb").exists() else None
