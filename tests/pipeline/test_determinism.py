"""Same inputs and seed on CPU -> identical outputs; truth never reaches a non-evaluation asset.

The tiny demo sample is materialised three times into separate storage roots: twice with
the same inputs (A, B) and once after the truth counts were rewritten (C). Arrays of every
asset are compared by content hash, and files byte for byte where the format allows
(everything except the two files that record wall-clock seconds).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import dagster as dg
import pytest

from asign_assets.pipeline.definitions import build_definitions
from asign_assets.importers.demo import DemoConfig, make_demo_stack
from asign_assets.ingest.manifest import load_manifest
from asign_assets.storage.store import Storage

from _reliability import array_hashes, file_hashes  # noqa: E402  (tests/ helper)

SID = "det"
RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 5}}}}
# Files that hold timings (qc "seconds", checkpoint "seconds"): compared by content instead.
TIMED_FILES = {"registrations/qc.parquet", "model/checkpoint.pt"}


def _run(stack_manifest: Path, root: Path) -> dict[str, str]:
    """Materialise every asset; return the data version Dagster recorded for each."""
    Storage(root).register(load_manifest(stack_manifest))
    defs = build_definitions(storage_root=str(root), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [SID])
    result = defs.resolve_job_def("full_sample").execute_in_process(partition_key=SID, instance=instance, run_config=RUN_CONFIG, raise_on_error=False)
    assert result.success
    return {
        ev.asset_key.to_user_string(): ev.event_specific_data.materialization.tags["dagster/data_version"]
        for ev in result.all_events
        if ev.event_type_value == "ASSET_MATERIALIZATION"
    }


def _is_evaluation(key: str) -> bool:
    return key.startswith(("evaluation",))


def _rewrite_truth(path: Path) -> None:
    """Triple the counts of every other gene: normalised truth changes (a uniform factor would not)."""
    lines = gzip.decompress(path.read_bytes()).decode().rstrip("\n").split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split("\t")
        out.append("\t".join([cells[0]] + [str(int(v) * (3 if j % 2 else 1)) for j, v in enumerate(cells[1:])]))
    path.write_bytes(gzip.compress(("\n".join(out) + "\n").encode(), mtime=0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    stack_dir = tmp_path_factory.mktemp("det_stack")
    stack = make_demo_stack(stack_dir, DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60), sample_id=SID)
    base = tmp_path_factory.mktemp("det_roots")
    versions = {"A": _run(stack.manifest_path, base / "A"), "B": _run(stack.manifest_path, base / "B")}
    fingerprint = load_manifest(stack.manifest_path).input_fingerprint()
    truths = sorted((stack_dir / "truth").glob("*.tsv.gz"))
    assert [p.name for p in truths] == ["S01.tsv.gz", "S03.tsv.gz"]
    for p in truths:  # same paths, new values: only evaluation may notice
        _rewrite_truth(p)
    assert load_manifest(stack.manifest_path).input_fingerprint() == fingerprint
    versions["C"] = _run(stack.manifest_path, base / "C")
    samples = {k: base / k / "samples" / SID for k in "ABC"}
    return {"samples": samples, "versions": versions, "arrays": {k: array_hashes(v) for k, v in samples.items()},
            "files": {k: file_hashes(v) for k, v in samples.items()}, "stack": stack}


def test_same_inputs_same_arrays(runs):
    a, b = runs["arrays"]["A"], runs["arrays"]["B"]
    assert set(a) == set(b)
    for needed in ("tiles/S02/spot", "embeddings/S02/spot", "registrations/spots_um", "graph_3d/edges", "expression/X",
                   "model/state", "imputed_volume/X", "imputed_volume/layers/model", "imputed_volume/layers/propagation",
                   "evaluation/values"):
        assert needed in a, sorted(a)
    assert {k: v for k, v in a.items() if b[k] != v} == {}


def test_same_inputs_byte_identical_files(runs):
    a, b = runs["files"]["A"], runs["files"]["B"]
    assert set(a) == set(b)
    differ = sorted(k for k in a if a[k] != b[k])
    assert set(differ) <= TIMED_FILES, differ
    assert runs["versions"]["A"] == runs["versions"]["B"]


def test_truth_reaches_only_evaluation(runs):
    a, c = runs["arrays"]["A"], runs["arrays"]["C"]
    assert {k for k in a if a[k] != c[k]} == {"evaluation/values"}
    fa, fc = runs["files"]["A"], runs["files"]["C"]
    changed = {k for k in fa if fa[k] != fc.get(k)} - TIMED_FILES
    assert changed and all(_is_evaluation(k) for k in changed), sorted(changed)
    assert "evaluation.parquet" in changed
    assert any(k.startswith("evaluation_truth.zarr") for k in changed)
    va, vc = runs["versions"]["A"], runs["versions"]["C"]
    assert {k for k in va if va[k] != vc[k]} == {"evaluation"}  # nothing upstream looks stale


def test_a_different_seed_changes_the_model(runs, tmp_path):
    """The identity above is not vacuous: the seed does reach training."""
    from asign_assets.pipeline.assets import model

    root = tmp_path / "root"
    shutil.copytree(runs["samples"]["A"].parents[1], root)
    defs = build_definitions(storage_root=str(root), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [SID])
    result = dg.materialize([model], partition_key=SID, resources=defs.resources, instance=instance,
                            run_config={"ops": {"model": {"config": {"epochs": 5, "seed": 1}}}})
    assert result.success
    assert array_hashes(root / "samples" / SID)["model/state"] != runs["arrays"]["A"]["model/state"]
