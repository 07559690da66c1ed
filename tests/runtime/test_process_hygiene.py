"""Process hygiene: `asign ui` leaves no orphans; Ctrl-C during a run prints one line.

The fast test stops a fake child tree (a grandchild that ignores SIGTERM, a great-grandchild
in a session of its own) through the same code path `asign ui` uses; the e2e test starts
the real `asign ui` (dagster dev + viewer) and signals it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    pids = sys.argv[1]
    level = int(sys.argv[2])
    if level == 1:  # ignores SIGTERM, starts a child that leaves our session
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, __file__, pids, "2"])
    elif level == 2:
        os.setsid()
    elif level == 0:
        subprocess.Popen([sys.executable, __file__, pids, "1"])
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(0.2)
    """
)


def _pids(path: Path, n: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            got = [int(x) for x in path.read_text().split()]
            if len(got) >= n:
                return got
        time.sleep(0.1)
    raise AssertionError(f"tree did not start: {path.read_text() if path.exists() else 'no pids'}")


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_the_whole_child_tree(tmp_path, sig):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    pids = tmp_path / "pids"
    runner = (
        "import sys; from asign_assets.cli import run_children; "
        f"sys.exit(run_children([[sys.executable, {str(script)!r}, {str(pids)!r}, '0'], "
        f"[sys.executable, {str(script)!r}, {str(pids)!r}, '3']]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", runner], env=ENV, stderr=subprocess.PIPE, text=True)
    tree = _pids(pids, 4)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - t0 < 10.5
    assert proc.returncode == 0, err
    assert f"stopped on {sig.name}" in err
    assert _alive(tree) == []


def test_child_exit_stops_the_others(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    pids = tmp_path / "pids"
    runner = (
        "import sys; from asign_assets.cli import run_children; "
        f"sys.exit(run_children([[sys.executable, {str(script)!r}, {str(pids)!r}, '0'], [sys.executable, '-c', 'import time; time.sleep(2); raise SystemExit(3)']]))"
    )
    proc = subprocess.run([sys.executable, "-c", runner], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "exited with code 3; stopped the others" in proc.stderr
    assert _alive(_pids(pids, 3)) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.e2e
def test_real_asign_ui_leaves_no_orphans(tmp_path):
    port, vport = _free_port(), _free_port()
    env = {**ENV, "ASIGN_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asign_assets.cli", "ui", "--port", str(port), "--viewer-port", str(vport)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (_listening(port) and _listening(vport)):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(1)
        assert _listening(port) and _listening(vport), "asign ui did not start in 240 s"
        time.sleep(5)  # let the daemon start its code server
        tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 4, tree  # dagster dev, webserver, daemon, viewer (+ code servers)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - t0 < 10.5
        assert proc.returncode == 0
        assert _alive(tree) == []
        assert not _listening(port) and not _listening(vport)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.e2e
def test_ctrl_c_during_run_prints_one_line_and_exits_130(tmp_path):
    home = tmp_path / "home"
    env = {**ENV, "ASIGN_HOME": str(home)}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asign_assets.cli", "demo", "--sections", "3", "--spots", "60", "--image-px", "320", "--device", "cpu"],
            env=env, stdout=subprocess.DEVNULL, stderr=err_file,
        )
        deadline = time.monotonic() + 300
        sample = home / "samples" / "demo"
        while time.monotonic() < deadline and not (sample / "embeddings.zarr").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)  # interrupt inside a later step
        n_before = len(log.read_text().splitlines())
        before = {p.name for p in sample.iterdir()}
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    lines = log.read_text().splitlines()
    assert proc.returncode == 130, "\n".join(lines[-40:])
    after = lines[n_before:]
    # The one line, after at most a few ordinary log lines that were being written as the signal came.
    in_flight = after[:-1]
    assert len(in_flight) <= 4 and all(" - dagster - " in x and " - ERROR - " not in x for x in in_flight), "\n".join(after)
    assert after[-1].startswith("asign: interrupted; sample 'demo': complete outputs kept: ")
    assert "nothing is half-written" in after[-1] and "embeddings.zarr" in after[-1]
    assert not [x for x in after if 'File "' in x or "Interrupted" in x or "Traceback" in x]
    assert not [p for p in sample.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert before <= {p.name for p in sample.iterdir()}
