"""The whole asset graph on a small synthetic stack: outputs follow the contracts."""

import anndata as ad
import numpy as np
import polars as pl
import pytest
import zarr


def test_pipeline_succeeds_with_checks(materialised_small):
    store, sid, result = materialised_small
    assert result.success
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks.get("registration_dice") is True
    assert "asign_beats_baselines" in checks
    mats = {e.asset_key.to_user_string() for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert mats == {"sections", "tiles", "embeddings", "registrations", "graph_3d", "expression", "model", "imputed_volume", "evaluation", "expression_volume"}
    # every materialisation records seconds and peak memory
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            md = e.event_specific_data.materialization.metadata
            assert md["seconds"].value > 0 and md["peak_rss_mb"].value > 50, e.asset_key


def test_imputed_volume_follows_scanpy_conventions(materialised_small):
    store, sid, _ = materialised_small
    a = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    spots = pl.read_parquet(store.local_path(sid, "registrations") / "spots.parquet")
    assert a.n_obs == spots.height
    assert list(a.obs["section"].cat.categories) == ["S01", "S02", "S03", "S04"]
    assert a.obsm["spatial"].shape == (a.n_obs, 2) and a.obsm["spatial_3d"].shape == (a.n_obs, 3)
    np.testing.assert_allclose(a.obsm["spatial"][:, 0], spots["x_px"].to_numpy())
    assert set(a.layers) >= {"model", "propagation", "blend"}
    for s in a.obs["section"].cat.categories:
        sf = a.uns["spatial"][s]["scalefactors"]
        assert sf["tissue_hires_scalef"] > 0 and sf["spot_diameter_fullres"] > 0
        assert a.uns["spatial"][s]["images"]["hires"].ndim == 3
    # measured spots keep their measured values
    expr = ad.read_h5ad(store.local_path(sid, "expression.h5ad"))
    meas = a[a.obs["known"].to_numpy()]
    assert list(expr.uns["sections"]) == ["S03"] and set(expr.obs["section"]) == {"S03"}
    assert list(expr.obs_names) == [f"S03:{s}" for s in expr.obs["spot_id"]]
    np.testing.assert_allclose(np.asarray(a[expr.obs_names].X), np.asarray(expr.X), rtol=1e-6)
    assert meas.n_obs == expr.n_obs
    # zarr copy: one gene per chunk so the viewer reads a column lazily
    z = zarr.open_group(str(store.local_path(sid, "imputed_volume.zarr")), mode="r")
    assert z["X"].chunks == (a.n_obs, 1)
    np.testing.assert_allclose(z["X"][:, 3], np.asarray(a.X[:, 3]).ravel())


def test_scanpy_spatial_plot_works(materialised_small):
    sc = pytest.importorskip("scanpy", reason="scanpy is in the dev extra")
    import matplotlib

    matplotlib.use("Agg")
    store, sid, _ = materialised_small
    a = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    s = "S02"
    sc.pl.spatial(a[a.obs.section == s], library_id=s, color=a.var_names[0], show=False)


def test_evaluation_table_and_model_beats_mean(materialised_small):
    store, sid, _ = materialised_small
    ev = pl.read_parquet(store.local_path(sid, "evaluation.parquet"))
    assert ev.columns == ["method", "section", "metric", "value", "dz_nearest_um"]
    dz = dict(ev.filter(pl.col("section") != "pooled").select("section", "dz_nearest_um").unique().iter_rows())
    assert dz == {"S01": 80.0, "S02": 40.0, "S04": 40.0}  # demo z step 40 um, S03 measured
    unc = {"unc_spearman", "unc_spearman_all", "coverage_80"}
    assert set(ev["metric"]) == {"mse", "mae", "spot_pcc", "spot_pcc_z", "gene_pcc", "gene_pcc_hvg50", "genes_scored"} | unc
    u = ev.filter(pl.col("metric").is_in(list(unc)))
    assert set(u["method"]) == {"asign"} and u.height == 3 * 4  # 3 sections + pooled
    cov = u.filter(pl.col("metric") == "coverage_80")["value"]
    assert ((cov > 0) & (cov <= 1)).all()
    genes = pl.read_parquet(store.local_path(sid, "evaluation_genes.parquet"))
    g_asign = genes.filter(pl.col("method") == "asign").group_by("section").agg(pl.col("value").mean())
    e_asign = ev.filter((pl.col("method") == "asign") & (pl.col("metric") == "gene_pcc") & (pl.col("section") != "pooled"))
    assert dict(g_asign.iter_rows()) == pytest.approx(dict(e_asign.select("section", "value").iter_rows()))
    assert {"asign", "mean", "overlap", "similarity", "gauss_knn", "image_2d"} <= set(ev["method"])
    assert set(ev["section"]) == {"S01", "S02", "S04", "pooled"}  # S03 is measured
    pooled = {(r["method"], r["metric"]): r["value"] for r in ev.filter(pl.col("section") == "pooled").to_dicts()}
    assert pooled[("mean", "gene_pcc")] == pytest.approx(0.0, abs=1e-9)
    assert pooled[("asign", "gene_pcc")] > 0.25  # a clear margin over the mean profile
    assert pooled[("asign", "mse")] < pooled[("mean", "mse")]


def test_registration_outputs(materialised_small):
    store, sid, _ = materialised_small
    reg = store.local_path(sid, "registrations")
    qc = pl.read_parquet(reg / "qc.parquet")
    assert qc.height == 4 and (qc["dice_after"] >= 0.85).all()
    assert (reg / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (reg / "transforms").iterdir()) == ["S01.tfm", "S02.tfm", "S03.tfm", "S04.tfm"]


def test_assets_on_fsspec_memory_storage(small_stack, tmp_path, monkeypatch):
    """Storage can be an fsspec URL: assets write and read through it (memory:// here)."""
    import dagster as dg

    from asign_assets.pipeline.assets import expression, registrations, sections
    from asign_assets.pipeline.resources import DeviceResource, StorageResource
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    monkeypatch.setenv("ASIGN_MANIFESTS", str(tmp_path / "manifests"))
    root = "memory://asign-pipeline-test"
    store = Storage(root)
    manifest = load_manifest(small_stack.manifest_path)
    store.register(manifest)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    res = dg.materialize(
        [sections, registrations, expression], partition_key=manifest.sample_id, instance=instance,
        resources={"storage": StorageResource(root=root), "device": DeviceResource(device="cpu")},
    )
    assert res.success
    from upath import UPath

    base = UPath(root) / "samples" / manifest.sample_id
    assert (base / "sections" / "spots.parquet").exists()
    assert (base / "registrations" / "qc.parquet").exists()
    assert (base / "expression.h5ad").exists()
    qc = pl.read_parquet(store.local_path(manifest.sample_id, "registrations") / "qc.parquet")
    assert (qc["dice_after"] >= 0.85).all()
    assert not any(p.name.startswith(".tmp-") for p in base.iterdir())
