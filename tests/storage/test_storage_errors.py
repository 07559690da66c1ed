"""A read-only, full or blocked ASIGN_HOME / DAGSTER_HOME gives one line naming the path.

Tests run as root here, where chmod does not stop writes: the unwritable home is a path
below a regular file (ENOTDIR), DAGSTER_HOME's database is a folder sqlite cannot open, and
a full disk is simulated (ENOSPC) at the library call that writes. A chmod test runs only
for non-root users.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from asign_assets.storage import store as storage_mod
from asign_assets.cli import main, storage_error
from asign_assets.importers.demo import DemoConfig, make_demo_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return make_demo_stack(tmp_path_factory.mktemp("st"), DemoConfig(n_sections=2, spots_per_section=40, image_px=200, n_genes=20), sample_id="st")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_home_below_a_file(tmp_path, stack, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASIGN_HOME", str(tmp_path / "unset"))  # main() sets both; monkeypatch restores them
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", str(stack.manifest_path), "--home", str(blocker / "home")]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"asign: error: cannot write to {blocker / 'home'}") and "Not a directory" in line


def test_dagster_database_unusable(tmp_path, stack, capsys, monkeypatch):
    home = tmp_path / "home"
    (tmp_path / "dagster" / "history" / "runs.db").mkdir(parents=True)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASIGN_HOME", str(tmp_path / "unset"))
    assert main(["run", str(stack.manifest_path), "--home", str(home)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]  # dagster may print its own notice first
    assert line == f"asign: error: Dagster's database under DAGSTER_HOME={tmp_path / 'dagster'} is not writable: (sqlite3.OperationalError) unable to open database file"
    assert not (home / "manifests").exists()  # nothing registered


def test_full_disk_while_registering(tmp_path, stack, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASIGN_HOME", str(tmp_path / "unset"))  # main() sets both; monkeypatch restores them
    home = tmp_path / "home"
    target = home / "manifests" / "st.yaml"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(storage_mod, "write_manifest", full)
    assert main(["run", str(stack.manifest_path), "--home", str(home)]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"asign: error: cannot write to {target}: No space left on device")


def test_sqlite_readonly_and_full_messages(monkeypatch):
    from sqlalchemy.exc import OperationalError

    monkeypatch.setenv("DAGSTER_HOME", "/x/dagster")
    for text in ("attempt to write a readonly database", "database or disk is full"):
        exc = OperationalError("INSERT INTO runs", {}, sqlite3.OperationalError(text))
        wrapped = RuntimeError("step failed")
        wrapped.__cause__ = exc
        msg = storage_error(wrapped)
        assert msg is not None and msg.startswith("Dagster's database under DAGSTER_HOME=/x/dagster is not writable") and text in msg
    assert storage_error(ValueError("unrelated")) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions; covered by the ENOTDIR and ENOSPC tests")
def test_read_only_home(tmp_path, stack, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASIGN_HOME", str(tmp_path / "unset"))  # main() sets both; monkeypatch restores them
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    try:
        assert main(["run", str(stack.manifest_path), "--home", str(home)]) == 1
        assert "Permission denied" in _one_line(capsys)
    finally:
        home.chmod(0o755)
    assert Path(home).exists()
