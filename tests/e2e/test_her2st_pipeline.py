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


@pytest.mark.slow
def test_patient_c_two_measured_sections_beat_one(patient_c_run, tmp_path, monkeypatch):
    """Issue #13 item 5: measuring C2 and C6 beats measuring C4 alone on C3 and C5 (gene_pcc
    of ASIGN on each section, same code, same defaults; C4 alone is the shared fixture's run)."""
    import contextlib
    import io
    from pathlib import Path

    from asign_assets.cli import main
    from asign_assets.ingest.manifest import load_manifest
    from conftest import her2st_or_skip, run_full_sample

    data = her2st_or_skip()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["import-her2st", str(data), "--patient", "C", "--sections", "C2,C3,C4,C5,C6", "--measured", "C2",
                   "--measured", "C6", "--with-truth", "--sample-id", "her2st_C_C2C6", "--out", str(tmp_path / "c26.yaml")])
    assert rc == 0
    manifest = load_manifest(Path(buf.getvalue().strip().splitlines()[-1]))
    assert [s.name for s in manifest.measured_sections] == ["C2", "C6"]
    store, _, result = run_full_sample(manifest, tmp_path / "home")
    assert result.success

    def per_section(st, sid) -> dict[str, tuple[float, float]]:
        ev = pl.read_parquet(st.local_path(sid, "evaluation.parquet"))
        rows = ev.filter((pl.col("method") == "asign") & (pl.col("metric") == "gene_pcc") & (pl.col("section") != "pooled"))
        return {r["section"]: (r["value"], r["dz_nearest_um"]) for r in rows.to_dicts()}

    two = per_section(store, manifest.sample_id)
    c4_store, c4_sid, c4_result = patient_c_run
    assert c4_result.success
    one = per_section(c4_store, c4_sid)
    print(f"gene_pcc (dz_nearest_um): C2+C6 {two}; C4 alone {one}")
    assert set(two) == {"C3", "C4", "C5"} and set(one) == {"C2", "C3", "C5", "C6"}
    # block layout (her2st.py): C2 16, C3 100, C4 116, C5 200, C6 216 um
    assert {k: v[1] for k, v in two.items()} == {"C3": 84.0, "C4": 100.0, "C5": 16.0}
    assert {k: v[1] for k, v in one.items()} == {"C2": 100.0, "C3": 16.0, "C5": 84.0, "C6": 100.0}
    both = (two["C3"][0] + two["C5"][0]) / 2
    alone = (one["C3"][0] + one["C5"][0]) / 2
    assert both > alone, f"C2+C6 {both:.4f} vs C4 alone {alone:.4f} on C3+C5"
