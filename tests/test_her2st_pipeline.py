"""HER2ST patient C through the whole asset graph (slow; skips without the data)."""

import anndata as ad
import dagster as dg
import polars as pl
import pytest

from conftest import her2st_or_skip


@pytest.mark.slow
def test_patient_c_materialises_end_to_end(tmp_path):
    data = her2st_or_skip()
    from asign_assets.definitions import build_definitions
    from asign_assets.her2st import manifest_from_her2st
    from asign_assets.manifest import load_manifest
    from asign_assets.storage import Storage

    path, _ = manifest_from_her2st(data, "C", ["C2", "C3", "C4", "C5", "C6"], "C4", with_truth=True, out=tmp_path / "c.yaml")
    manifest = load_manifest(path)
    store = Storage(tmp_path / "home")
    store.register(manifest)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    defs = build_definitions(storage_root=str(tmp_path / "home"), device="cpu")
    result = defs.resolve_job_def("full_sample").execute_in_process(partition_key=manifest.sample_id, instance=instance, raise_on_error=False)
    assert result.success
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks["registration_dice"] is True
    sid = manifest.sample_id
    qc = pl.read_parquet(store.local_path(sid, "registrations") / "qc.parquet")
    assert (qc["dice_after"] > 0.95).all(), qc
    vol = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    assert vol.n_vars == 250 and set(vol.obs["section"].cat.categories) == {"C2", "C3", "C4", "C5", "C6"}
    ev = pl.read_parquet(store.local_path(sid, "evaluation.parquet"))
    pooled = {r["method"]: r["value"] for r in ev.filter((pl.col("section") == "pooled") & (pl.col("metric") == "gene_pcc")).to_dicts()}
    # ASIGN beats the mean profile clearly and stays below the level that would suggest truth leaking in
    assert 0.15 < pooled["asign"] < 0.45
    assert pooled["asign"] >= max(pooled[b] for b in ("mean", "overlap", "similarity", "gauss_knn", "image_2d")) - 0.01
