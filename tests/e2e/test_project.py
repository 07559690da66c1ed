"""The README's two command lines, the CI script and the CLI stay consistent."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .*?)\n```", text)


def test_readme_has_exactly_two_setup_lines_and_ci_runs_the_test_line():
    lines = _readme_lines()
    assert len(lines) == 2, lines
    demo, test = lines
    assert "asign demo" in demo and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the README's test line must appear verbatim in .ci/run"


@pytest.mark.parametrize("sub", ["", "demo", "import-her2st", "import-visium", "run", "ui", "viewer", "validate"])
def test_cli_help(sub):
    args = [sys.executable, "-m", "asign_assets.cli"] + ([sub] if sub else []) + ["--help"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_cli_failure_exits_nonzero_with_message(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "asign_assets.cli", "run", str(tmp_path / "missing.yaml"), "--home", str(tmp_path / "h")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert "missing.yaml" in out.stderr and "not found" in out.stderr


def test_dagster_definitions_validate():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
