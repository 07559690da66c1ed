"""Two samples materialised at the same time give what they give one after the other.

The concurrent runs share one storage root and one persistent Dagster instance, each in
its own process with the multiprocess executor (every step a separate process, forked
from a preloaded server; see tests/_recon_job.py). The reference runs are sequential and
in-process, in another root. Arrays and files must match; temporaries must be private
to their writer and none may be left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from asign_assets.pipeline.definitions import build_definitions
from asign_assets.importers.demo import DemoConfig, make_demo_stack
from asign_assets.ingest.manifest import load_manifest, write_manifest
from asign_assets.storage.store import Storage

from _reliability import array_hashes, file_hashes  # noqa: E402  (tests/ helper)

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent
SEEDS = {"conc_a": 0, "conc_b": 1}  # two different tissues, so cross-talk would show
RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 5}}}}
TIMED_FILES = {"registrations/qc.parquet", "model/checkpoint.pt"}
TOKEN_RE = re.compile(r"-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for sid, seed in SEEDS.items():
        stack = make_demo_stack(tmp_path_factory.mktemp(sid), DemoConfig(n_sections=2, spots_per_section=40, image_px=256, n_genes=40, seed=seed), sample_id=sid)
        out[sid] = stack.manifest_path
    return out


class _TempWatcher:
    """Polls the storage root and records every temporary it sees, with its folder."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for folder in [self.root / "manifests", *(self.root / "samples").glob("*")]:
                try:
                    names = os.listdir(folder)
                except OSError:
                    continue
                self.seen.update((folder.name, n) for n in names if n.startswith((".tmp-", ".old-")) or n.endswith(".tmp"))
            self._stop.wait(0.01)

    def __enter__(self) -> "_TempWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_two_samples_at_once_match_sequential_runs(manifests, tmp_path, monkeypatch):
    # Reference: one after the other, in process.
    seq = tmp_path / "sequential"
    for sid, path in manifests.items():
        Storage(seq).register(load_manifest(path))
        defs = build_definitions(storage_root=str(seq), device="cpu")
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("samples", [sid])
        assert defs.resolve_job_def("full_sample").execute_in_process(partition_key=sid, instance=instance, run_config=RUN_CONFIG).success

    # Concurrent: shared root and Dagster instance, two processes, multiprocess executor.
    conc = tmp_path / "concurrent"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "ASIGN_HOME": str(conc), "ASIGN_DEVICE": "cpu", "DAGSTER_HOME": str(dagster_home),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    instance = dg.DagsterInstance.get()
    for sid, path in manifests.items():
        Storage(conc).register(load_manifest(path))
    instance.add_dynamic_partitions("samples", list(manifests))

    with _TempWatcher(conc) as watcher:
        procs = {sid: subprocess.Popen([sys.executable, str(HERE / "_recon_job.py"), sid], env=env, cwd=str(ROOT),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for sid in manifests}
        outputs = {sid: p.communicate(timeout=540)[0].decode() for sid, p in procs.items()}
    for sid, p in procs.items():
        assert p.returncode == 0, outputs[sid][-4000:]
        assert f"{sid}: success=True" in outputs[sid]

    # The runs really overlapped, and steps ran in their own processes.
    records = {r.dagster_run.tags["dagster/partition"]: r for r in instance.get_run_records()}
    assert set(records) == set(manifests)
    (a0, a1), (b0, b1) = ((r.start_time, r.end_time) for r in records.values())
    assert a0 < b1 and b0 < a1, "the two runs did not overlap"
    for r in records.values():
        starts = [e for e in instance.all_logs(r.dagster_run.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]
        n_steps = len(defs.resolve_job_def("full_sample").graph.nodes)  # assets, source observations, standalone checks
        assert len(starts) == n_steps and len({e.dagster_event.pid for e in starts}) == n_steps  # one process per step
    instance.dispose()

    # Same results as one after the other.
    for sid in manifests:
        a, b = array_hashes(seq / "samples" / sid), array_hashes(conc / "samples" / sid)
        assert {k for k in a if a[k] != b[k]} == set(), sid
        fa, fb = file_hashes(seq / "samples" / sid), file_hashes(conc / "samples" / sid)
        assert set(fa) == set(fb)
        assert {k for k in fa if fa[k] != fb[k]} <= TIMED_FILES
    assert array_hashes(conc / "samples" / "conc_a")["imputed_volume/X"] != array_hashes(conc / "samples" / "conc_b")["imputed_volume/X"]

    # Temporaries: each in its own sample's folder, named by a writer that wrote for no other sample.
    per_sample: dict[str, set[int]] = {}
    for folder, name in watcher.seen:
        if folder == "manifests":
            continue
        m = TOKEN_RE.search(name)
        assert m is not None, name
        per_sample.setdefault(folder, set()).add(int(m["pid"]))
    assert set(per_sample) == set(manifests), watcher.seen  # tiles/embeddings writes take long enough to be seen
    assert per_sample["conc_a"].isdisjoint(per_sample["conc_b"])
    leftovers = [p for p in conc.rglob("*") if p.name.startswith((".tmp-", ".old-")) or p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_registration_of_one_sample(tmp_path, manifests):
    """Two writers registering the same manifest at once (sensor + CLI) never collide."""
    manifest = load_manifest(manifests["conc_a"])
    target = tmp_path / "manifests" / "conc_a.yaml"
    errors: list[BaseException] = []

    def register() -> None:
        try:
            for _ in range(100):
                write_manifest(manifest, target, relative=False)
        except BaseException as exc:  # noqa: BLE001 - collect and report
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_manifest(target).sections == manifest.sections
    assert sorted(p.name for p in target.parent.iterdir()) == ["conc_a.yaml"]
