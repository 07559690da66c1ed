"""Shared fixtures: a small synthetic demo stack, an isolated ASIGN_HOME, real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HER2ST = (ROOT / ".." / "shared" / "data" / "her2st").resolve()


def her2st_or_skip() -> Path:
    if not (HER2ST / "ST-cnts").is_dir():
        pytest.skip(f"real HER2ST data not found at {HER2ST} (../shared/data/her2st relative to the project)")
    return HER2ST


@pytest.fixture(scope="session")
def small_stack(tmp_path_factory):
    """A 4-section synthetic stack, small enough for fast tests (shared, read-only)."""
    from asign_assets.demo import DemoConfig, make_demo_stack

    out = tmp_path_factory.mktemp("small_stack")
    return make_demo_stack(out, DemoConfig(n_sections=4, spots_per_section=90, image_px=480, n_genes=120, seed=3))


@pytest.fixture()
def asign_home(tmp_path, monkeypatch):
    home = tmp_path / "asign_home"
    monkeypatch.setenv("ASIGN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home
