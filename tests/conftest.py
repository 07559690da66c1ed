"""Shared fixtures: a small synthetic demo stack, an isolated ASIGN_HOME, real-data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HER2ST = (ROOT / ".." / "shared" / "data" / "her2st").resolve()


def her2st_or_skip() -> Path:
    if not (HER2ST / "ST-cnts").is_dir():
        pytest.skip(f"real HER2ST data not found at {HER2ST} (../shared/data/her2st relative to the project)")
    return HER2ST


@pytest.fixture(scope="session")
def patient_c_run(tmp_path_factory):
    """HER2ST patient C (C2..C6, C4 measured, truth on the others) through the whole asset
    graph once per session: (storage, sample id, in-process result). Skips without the data."""
    from asign_assets.importers.her2st import manifest_from_her2st
    from asign_assets.ingest.manifest import load_manifest

    data = her2st_or_skip()
    tmp = tmp_path_factory.mktemp("patient_c")
    path, _ = manifest_from_her2st(data, "C", ["C2", "C3", "C4", "C5", "C6"], "C4", with_truth=True, out=tmp / "c.yaml")
    return run_full_sample(load_manifest(path), tmp / "home")


def run_full_sample(manifest, home):
    """Register ``manifest`` under ``home`` and run the whole asset graph in process:
    (storage, sample id, Dagster result)."""
    import dagster as dg

    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.storage.store import Storage

    store = Storage(home)
    store.register(manifest)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    defs = build_definitions(storage_root=str(home), device="cpu")
    result = defs.resolve_job_def("full_sample").execute_in_process(partition_key=manifest.sample_id, instance=instance, raise_on_error=False)
    return store, manifest.sample_id, result


@pytest.fixture(scope="session")
def small_stack(tmp_path_factory):
    """A 4-section synthetic stack, small enough for fast tests (shared, read-only)."""
    from asign_assets.importers.demo import DemoConfig, make_demo_stack

    out = tmp_path_factory.mktemp("small_stack")
    return make_demo_stack(out, DemoConfig(n_sections=4, spots_per_section=90, image_px=480, n_genes=120, seed=3))


@pytest.fixture()
def asign_home(tmp_path, monkeypatch):
    home = tmp_path / "asign_home"
    monkeypatch.setenv("ASIGN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home


FAST_RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 30}}}}


@pytest.fixture(scope="session")
def materialised_small(small_stack, tmp_path_factory):
    """The whole asset graph materialised once for `small_stack` (shared, read-only).

    Returns (storage root, sample id, dagster result).
    """
    import dagster as dg

    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    root = tmp_path_factory.mktemp("asign_home")
    store = Storage(root)
    manifest = load_manifest(small_stack.manifest_path)
    store.register(manifest)
    defs = build_definitions(storage_root=str(root), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    result = defs.resolve_job_def("full_sample").execute_in_process(
        partition_key=manifest.sample_id, instance=instance, run_config=FAST_RUN_CONFIG, raise_on_error=False
    )
    return store, manifest.sample_id, result
