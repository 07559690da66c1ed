"""HER2ST patient C through the whole asset graph (slow; skips without the data)."""

import anndata as ad
import polars as pl
import pytest


@pytest.mark.slow
def test_patient_c_materialises_end_to_end(patient_c_run):
    store, sid, result = patient_c_run
    assert result.success
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks["registration_dice"] is True
    qc = pl.read_parquet(store.local_path(sid, "registrations") / "qc.parquet")
    assert (qc["dice_after"] > 0.95).all(), qc
    vol = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    assert vol.n_vars == 250 and set(vol.obs["section"].cat.categories) == {"C2", "C3", "C4", "C5", "C6"}
    ev = pl.read_parquet(store.local_path(sid, "evaluation.parquet"))
    pooled = {r["method"]: r["value"] for r in ev.filter((pl.col("section") == "pooled") & (pl.col("metric") == "gene_pcc")).to_dicts()}
    # ASIGN beats the mean profile clearly and stays below the level that would suggest truth leaking in
    assert 0.15 < pooled["asign"] < 0.45
    assert pooled["asign"] >= max(pooled[b] for b in ("mean", "overlap", "similarity", "gauss_knn", "image_2d")) - 0.01
