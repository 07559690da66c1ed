"""Atomic writes under SIGKILL: a writer killed mid-write never damages the previous version.

One sample is materialised once (module fixture). A subprocess then re-materialises a
large asset through Dagster and is SIGKILLed while its temporary sibling is being
written (tiles: between two sections) or is complete but not yet renamed
(imputed_volume). The previous version must still be byte-identical and readable (zarr,
AnnData, the viewer's loader), and the next run must succeed and sweep the dead writer's
temporary instead of letting leftovers pile up.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from asign_assets.pipeline import assets as A
from asign_assets.pipeline.definitions import build_definitions
from asign_assets.importers.demo import DemoConfig, make_demo_stack
from asign_assets.ingest.manifest import load_manifest
from asign_assets.storage.store import HOST_ID, OLD_PREFIX, TMP_PREFIX, Storage

ROOT = Path(__file__).resolve().parents[2]
SID = "crash"
RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 5}}}}

# Runs one asset through Dagster in a fresh process; `hold()` stops it inside the write.
_WRITER = r"""
import os, sys, time
import dagster as dg
import asign_assets.storage.store as S
import asign_assets.imaging.tiles as T
from asign_assets.pipeline import assets as A
from asign_assets.pipeline.definitions import build_definitions

root, sid, asset_name, marker = sys.argv[1:5]

def hold():
    open(marker, "w").close()
    time.sleep(600)

if asset_name == "tiles":  # killed mid-write: one section's tiles are in the temporary zarr
    original = T.write_section_tiles
    def slow(*a, **k):
        out = original(*a, **k)
        hold()
        return out
    T.write_section_tiles = slow
else:  # killed with the temporary complete, just before the rename
    S._replace = lambda tmp, target: hold()

defs = build_definitions(storage_root=root, device="cpu")
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("samples", [sid])
# tiles: one section at a time in this process, where hold() is patched in (worker processes would not see it)
cfg = {"ops": {"tiles": {"config": {"workers": 1}}}} if asset_name == "tiles" else None
dg.materialize([getattr(A, asset_name)], partition_key=sid, resources=defs.resources, instance=instance, run_config=cfg)
"""


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _materialise(root: Path, assets: list, **kw) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [SID])
    defs = build_definitions(storage_root=str(root), device="cpu")
    return dg.materialize(assets, partition_key=SID, resources=defs.resources, instance=instance, raise_on_error=False, **kw)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """Storage root with sample `crash` fully materialised (sections .. evaluation)."""
    stack = make_demo_stack(tmp_path_factory.mktemp("crash_stack"), DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60), sample_id=SID)
    root = tmp_path_factory.mktemp("crash_home")
    Storage(root).register(load_manifest(stack.manifest_path))
    defs = build_definitions(storage_root=str(root), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [SID])
    result = defs.resolve_job_def("full_sample").execute_in_process(partition_key=SID, instance=instance, run_config=RUN_CONFIG, raise_on_error=False)
    assert result.success
    return root


def _kill_mid_write(root: Path, asset_name: str, tmp_path: Path) -> list[Path]:
    """Start the writer, wait until it is inside Storage.write, SIGKILL it; the temporaries left."""
    marker = tmp_path / f"{asset_name}.holding"
    sample = root / "samples" / SID
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), SID, asset_name, str(marker)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "writer never reached the write"
            time.sleep(0.05)
        temps = [p for p in sample.iterdir() if p.name.startswith(TMP_PREFIX)]
        assert temps, "the writer holds no temporary sibling"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return [p for p in sample.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_tiles_killed_mid_write(home, tmp_path):
    import zarr

    sample = home / "samples" / SID
    before = _tree_hash(sample / "tiles.zarr")
    spot_before = {n: np.asarray(zarr.open_group(str(sample / "tiles.zarr"), mode="r")[f"{n}/spot"][:]) for n in ("S01", "S02", "S03")}

    leftovers = _kill_mid_write(home, "tiles", tmp_path)
    assert [p.name.split("-")[1] for p in leftovers] == ["tiles.zarr"]
    assert (leftovers[0] / "S01").is_dir()  # one section written: it really died mid-write
    assert not (leftovers[0] / "S03").exists()

    assert _tree_hash(sample / "tiles.zarr") == before
    root = zarr.open_group(str(sample / "tiles.zarr"), mode="r")
    assert list(root.attrs["sections"]) == ["S01", "S02", "S03"]
    for n, arr in spot_before.items():
        np.testing.assert_array_equal(np.asarray(root[f"{n}/spot"][:]), arr)

    result = _materialise(home, [A.tiles])
    assert result.success
    assert not [p for p in sample.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX))]  # swept
    assert _tree_hash(sample / "tiles.zarr") == before  # deterministic rewrite


def test_imputed_volume_killed_before_rename(home, tmp_path):
    import anndata as ad

    from dash_app import data as viewer_data

    sample = home / "samples" / SID
    hashes = {n: _tree_hash(sample / n) for n in ("imputed_volume.h5ad", "imputed_volume.zarr")}
    X_before = np.asarray(ad.read_h5ad(sample / "imputed_volume.h5ad").X)
    gene = str(ad.read_h5ad(sample / "imputed_volume.h5ad").var_names[3])

    leftovers = _kill_mid_write(home, "imputed_volume", tmp_path)
    assert [p.name.split("-")[1] for p in leftovers] == ["imputed_volume.h5ad"]
    assert leftovers[0].stat().st_size > 10_000  # the complete new file, never renamed

    assert {n: _tree_hash(sample / n) for n in hashes} == hashes
    np.testing.assert_array_equal(np.asarray(ad.read_h5ad(sample / "imputed_volume.h5ad").X), X_before)
    np.testing.assert_array_equal(np.asarray(ad.read_zarr(sample / "imputed_volume.zarr").X), X_before)
    viewer_data.clear_caches()
    vol = viewer_data.load_volume(home, SID)
    assert vol.n_spots == X_before.shape[0] and vol.sections == ("S01", "S02", "S03")
    np.testing.assert_array_equal(viewer_data.gene_values(home, SID, gene), X_before[:, 3])
    assert [s.sample for s in viewer_data.list_samples(home)] == [SID]  # temporaries are not samples

    result = _materialise(home, [A.imputed_volume])
    assert result.success
    assert not [p for p in sample.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX))]
    viewer_data.clear_caches()
    np.testing.assert_array_equal(viewer_data.gene_values(home, SID, gene), X_before[:, 3])


# --------------------------------------------------------------------------- sweep rules (fast)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_dead_writers_only(tmp_path):
    store = Storage(tmp_path)
    folder = tmp_path / "samples" / "s1"
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".tmp-tiles.zarr-{HOST_ID}-{_dead_pid()}-{'a' * 12}",
            "alive": f".tmp-model-{HOST_ID}-{sleeper.pid}-{'b' * 12}",
            "own": f".tmp-expression.h5ad-{HOST_ID}-{os.getpid()}-{'c' * 12}",
            "other_host_recent": f".tmp-graph_3d-0badf00d-{_dead_pid()}-{'d' * 12}",
            "other_host_old": f".tmp-sections-0badf00d-1-{'e' * 12}",
            "legacy_old": f".tmp-x-123-{'f' * 12}",
        }
        for key, name in names.items():
            (folder / name).mkdir()
            (folder / name / "chunk").write_bytes(b"x")
        stale = time.time() - 7 * 3600
        for key in ("other_host_old", "legacy_old"):
            os.utime(folder / names[key], (stale, stale))
        with store.write("s1", "f.bin") as tmp:  # every write sweeps its folder
            tmp.write_bytes(b"new")
        left = {k for k, n in names.items() if (folder / n).exists()}
        assert left == {"alive", "own", "other_host_recent"}
    finally:
        sleeper.kill()
        sleeper.wait()
    with store.write("s1", "f.bin") as tmp:
        tmp.write_bytes(b"newer")
    assert not (folder / names["alive"]).exists()  # its writer is gone now


def test_sweep_restores_orphaned_previous_version(tmp_path):
    """A crash between the two renames of a non-atomic directory swap left only `.old-`."""
    store = Storage(tmp_path)
    folder = tmp_path / "samples" / "s1"
    orphan = folder / f"{OLD_PREFIX}registrations-{HOST_ID}-{_dead_pid()}-{'a' * 12}"
    orphan.mkdir(parents=True)
    (orphan / "spots.parquet").write_bytes(b"previous")
    with store.write("s1", "other.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (folder / "registrations" / "spots.parquet").read_bytes() == b"previous"
    assert not orphan.exists()


def test_directory_replace_is_never_missing(tmp_path):
    """A directory asset being rewritten never disappears from its path (atomic exchange)."""
    store = Storage(tmp_path)

    def write(version: int) -> None:
        with store.write("s1", "graph_3d") as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text(str(version))
            (tmp / "b.txt").write_text(str(version))

    write(0)
    target = tmp_path / "samples" / "s1" / "graph_3d"
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            if not target.is_dir():  # one stat: the path resolves to some complete version or not
                problems.append("missing")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(1, 150):
            write(v)
    finally:
        stop.set()
        t.join()
    assert (target / "a.txt").read_text() == "149"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    if sys.platform.startswith("linux"):
        assert problems == []
