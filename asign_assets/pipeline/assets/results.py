"""Model and result assets: `model`, `imputed_volume`, `evaluation` (the work is in
asign_assets.model (train, inference, checkpoint), .imputed and .evaluation)."""

import json
from typing import Literal, Optional

import dagster as dg
import numpy as np
import polars as pl

from asign_assets.ingest import sections as sections_lib
from asign_assets.pipeline.automation import gpu_asset, sample_asset
from asign_assets.pipeline.resources import DeviceResource, StorageResource, sample_io
from asign_assets.pipeline.assets.metadata import StageMonitor, digest_arrays, log_progress, md_image, md_table, path_meta, viewer_url
from asign_assets.pipeline.assets.imaging import embeddings, tiles
from asign_assets.pipeline.assets.ingest import expression, sections
from asign_assets.pipeline.assets.sources import raw_inputs, raw_truth
from asign_assets.pipeline.assets.spatial import graph_3d, registrations
from asign_assets.results.imputed import imputed_anndata, write_anndata_zarr
from asign_assets.storage.stack_inputs import StackInputs
from asign_assets.pipeline.config import param_fields
from asign_assets.storage import layout

EVAL_CHECK = "asign_beats_baselines"


class ModelConfig(dg.Config):
    """Training preset and overrides of model.params.TrainParams; None keeps the preset's value (docs/accuracy.md)."""

    preset: Literal["cpu", "gpu", "gpu-large"] = "cpu"
    epochs: Optional[int] = None
    seed: int = 0
    known_frac: Optional[float] = None
    ensemble: Optional[int] = None  # members averaged (1 is ~3x faster on very large stacks)
    source_rank: Optional[int] = None  # propagated labels: -1 BCV rank of the measured expression, 0 raw, r > 0 fixed
    ridge_rank: Optional[int] = None  # image ridge targets: -1 rank by leave-one-out PCC, 0 raw, r > 0 fixed
    mask: Literal["preset", "random", "blocked"] = "preset"  # known masks / validation folds ("preset": the preset's)
    regime: Literal["preset", "in_section", "shifted"] = "preset"  # labels from the section itself or a shifted copy (model.params.TrainParams.regime)
    workers: Optional[int] = None  # processes the ensemble members train in (None/0: one per core on CPU for large stacks; 1: this process)


@gpu_asset(
    request_gpu=True,
    group_name="model",
    code_version="1",
    kinds={"torch"},
    deps=[graph_3d, embeddings, tiles, expression, registrations],
    description="MSAGNet + Cross-Layer Imputation trained on the measured sections with random known masks; "
    "checkpoint, config and training curves. Runs in the `gpu` pool; requests a GPU on Kubernetes.",
)
def model(context: dg.AssetExecutionContext, config: ModelConfig, storage: StorageResource, device: DeviceResource) -> dg.MaterializeResult:
    from asign_assets.results.plots import curves_png
    from asign_assets.model.checkpoint import save_checkpoint
    from asign_assets.model.inputs import ModelInputs
    from asign_assets.model.params import TrainParams, params_for
    from asign_assets.model.train import train_model

    store, sid = sample_io(context, storage)
    dev = device.torch_device()
    params = params_for(**param_fields(config, TrainParams))
    with StageMonitor().run() as mon:
        inp = StackInputs.load(store, sid)
        result = train_model(ModelInputs(*inp.tensors()), params, dev)
        members = [c for c in (getattr(result, "member_curves", None) or [result.curves]) if c]
        png = curves_png(members) if members else b""
        with store.write(sid, "model") as tmp:
            tmp.mkdir()
            save_checkpoint(result, tmp / layout.name("model", "checkpoint"))
            (tmp / layout.name("model", "config")).write_text(json.dumps({"params": params.__dict__, "model": result.config, "genes": list(inp.expr.var_names), "device": str(dev)}, indent=1, default=str))
            pl.DataFrame([{**c, "member": m} for m, cs in enumerate(members) for c in cs]).write_parquet(tmp / layout.name("model", "curves"), statistics=False)
            if png:
                (tmp / layout.name("model", "curves_png")).write_bytes(png)
    last = result.curves[result.best_epoch] if result.curves and result.best_epoch < len(result.curves) else {}
    log_progress(context, f"trained {len(result.curves)} epochs on {dev} in {result.seconds:.1f} s; best epoch {result.best_epoch}")
    return dg.MaterializeResult(
        metadata={
            "preset": params.preset,
            "device": str(dev),
            "epochs_run": len(result.curves),
            "ensemble_members": len(members),
            "member_processes": int(result.config.get("member_processes", 1)),
            "best_epoch": int(result.best_epoch),
            "best_val_gene_pcc": float(last.get("val_gene_pcc", float("nan"))),
            "train_seconds": float(round(result.seconds, 2)),
            "measured_spots": int(len(inp.measured_idx)),
            "genes": int(inp.y_measured.shape[1]),
            "curves": md_image(png, "training curves") if png else "",
            "viewer": viewer_url(sid),  # inline link; the markdown image above opens in a dialog only
            "path": path_meta(store, sid, "model"),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(digest_arrays(*[v.numpy() for v in result.model_state.values()])),
    )


@gpu_asset(
    group_name="results",
    code_version="3",
    kinds={"anndata", "zarr"},
    deps=[model, graph_3d, embeddings, tiles, expression, registrations, sections, raw_inputs],
    description="The imputed 3D volume: every spot of every section (AnnData .h5ad and .zarr, one gene per zarr chunk), "
    "layers model/propagation/blend/uncertainty, own-image and common-frame coordinates, thumbnails for sc.pl.spatial.",
)
def imputed_volume(context: dg.AssetExecutionContext, storage: StorageResource, device: DeviceResource) -> dg.MaterializeResult:
    from asign_assets.model.checkpoint import load_checkpoint
    from asign_assets.model.inference import impute
    from asign_assets.model.inputs import ModelInputs

    store, sid = sample_io(context, storage)
    dev = device.torch_device()
    with StageMonitor().run() as mon:
        inp = StackInputs.load(store, sid)
        result = load_checkpoint(store.file(sid, "model", "checkpoint"))
        preds = impute(result, ModelInputs(*inp.tensors()), dev)
        sec_dir = store.local_path(sid, "sections")
        manifest = store.load_registered(sid).without_truth()
        adata = imputed_anndata(inp, preds, sections_lib.load_records(sec_dir), sec_dir, manifest.spot_diameter_um)
        with store.write(sid, layout.path("imputed_volume", "h5ad")) as tmp:
            adata.write_h5ad(tmp)
        with store.write(sid, layout.path("imputed_volume", "zarr")) as tmp:
            write_anndata_zarr(adata, tmp, (adata.n_obs, 1))
    per = adata.obs.groupby("section", observed=True).size().to_dict()
    log_progress(context, f"{adata.n_obs} spots x {adata.n_vars} genes over {len(per)} sections")
    return dg.MaterializeResult(
        metadata={
            "n_spots": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "spots_per_section": dg.MetadataValue.md(md_table([{"section": k, "spots": int(v)} for k, v in per.items()])),
            "h5ad": path_meta(store, sid, layout.path("imputed_volume", "h5ad")),
            "zarr": path_meta(store, sid, layout.path("imputed_volume", "zarr")),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(digest_arrays(adata.X)),
    )


@sample_asset(
    group_name="results",
    code_version="3",
    kinds={"parquet"},
    deps=[imputed_volume, graph_3d, embeddings, tiles, expression, registrations, raw_inputs, raw_truth],
    check_specs=[dg.AssetCheckSpec(EVAL_CHECK, asset="evaluation", description="ASIGN's pooled gene_pcc is at least every baseline's.")],
    description="Held-out metrics (mse, mae, spot_pcc, spot_pcc_z, gene_pcc, gene_pcc_hvg50) of ASIGN and the baselines "
    "(mean, overlap, similarity, gauss_knn, image_2d) on unmeasured sections with truth, each with its distance to the "
    "nearest measured section (dz_nearest_um), ASIGN's uncertainty metrics "
    "(unc_spearman, unc_spearman_all, coverage_80) and per-gene PCC (evaluation_genes.parquet). The only asset that reads truth.",
)
def evaluation(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    import anndata as ad

    from asign_assets.evaluation.sample import evaluate_sample, section_rows
    from asign_assets.evaluation.metrics import markdown_table

    store, sid = sample_io(context, storage)
    with StageMonitor().run() as mon:
        manifest = store.load_registered(sid)  # with truth: evaluation is the one stage allowed to read it
        inp = StackInputs.load(store, sid)
        vol = ad.read_h5ad(store.file(sid, "imputed_volume", "h5ad"))
        ev = evaluate_sample(manifest, inp, vol)
        table = ev.table
        with store.write(sid, layout.path("evaluation", "table")) as tmp:
            table.write_parquet(tmp, statistics=False)
        if ev.gene_table is not None:  # per-gene PCC for the viewer's per-gene accuracy, and the truth it used
            with store.write(sid, layout.path("evaluation", "genes")) as tmp:
                ev.gene_table.write_parquet(tmp, statistics=False)
            tv = ad.AnnData(X=ev.truth, obs=vol.obs.iloc[ev.rows].copy())
            tv.obs["row"] = ev.rows
            tv.var_names = vol.var_names
            with store.write(sid, layout.path("evaluation", "truth")) as tmp:
                write_anndata_zarr(tv, tmp, (max(1, tv.n_obs), 1))
    if not len(ev.rows):
        check = dg.AssetCheckResult(check_name=EVAL_CHECK, passed=True, description="no truth in the manifest: nothing to evaluate")
    else:
        losers, asign = ev.beaten_by, ev.pooled_gene_pcc["asign"]
        check = dg.AssetCheckResult(
            check_name=EVAL_CHECK, passed=not losers, severity=dg.AssetCheckSeverity.WARN,
            description="ASIGN gene_pcc >= every baseline" if not losers else f"baselines beat ASIGN on pooled gene_pcc: {losers} vs {asign:.4f}",
            metadata={k: float(v) for k, v in ev.pooled_gene_pcc.items()},
        )
    # two narrow tables (gene-level, spot-level metrics): one wide table is cut off on the Dagster asset page
    halves = (["gene_pcc", "gene_pcc_hvg50", "mse"], ["spot_pcc", "spot_pcc_z", "mae"])
    md = "\n\n".join(markdown_table(table.filter(pl.col("metric").is_in(h))) for h in halves) if table.height else "_no truth: nothing evaluated_"
    unc = table.filter(pl.col("metric").is_in(["unc_spearman", "unc_spearman_all", "coverage_80"]))
    unc_md = md_table(unc.pivot(on="metric", index="section", values="value").to_dicts()) if unc.height else "_no uncertainty layer_"
    log_progress(context, "pooled metrics:\n" + md + "\nuncertainty (asign):\n" + unc_md)
    scored = table.filter((pl.col("metric") == "genes_scored") & (pl.col("method") == "asign")) if table.height else table
    per_section = section_rows(table) if table.height else []
    per_md = md_table(per_section, ".4g") if per_section else ""
    scored_md = md_table([{"section": r["section"], "genes_scored": int(r["value"])} for r in scored.iter_rows(named=True)]) if scored.height else ""
    return dg.MaterializeResult(
        metadata={
            "pooled": dg.MetadataValue.md(md),
            "uncertainty": dg.MetadataValue.md(unc_md),
            "sections": dg.MetadataValue.md(per_md or "_none_"),  # asign per section, with dz_nearest_um
            "evaluated_spots": int(len(ev.rows)),
            "genes_scored": dg.MetadataValue.md(scored_md or "_none_"),
            "path": path_meta(store, sid, layout.path("evaluation", "table")),
            **mon.metadata(),
        },
        check_results=[check],
        data_version=dg.DataVersion(digest_arrays(table["value"].to_numpy() if table.height else np.zeros(0))),
    )
