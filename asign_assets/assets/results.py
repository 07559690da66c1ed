"""Model and result assets: `model`, `imputed_volume`, `evaluation`."""

import base64
import io
import json

import dagster as dg
import numpy as np
import polars as pl

from asign_assets import sections as sections_lib
from asign_assets.assets.common import (
    GPU_POOL,
    GPU_QUEUE_TAGS,
    K8S_GPU_TAGS,
    DeviceResource,
    StageMonitor,
    StorageResource,
    digest_arrays,
    log_progress,
    md_table,
    path_meta,
    samples_partitions,
    viewer_url,
)
from asign_assets.assets.imaging import embeddings
from asign_assets.assets.ingest import expression
from asign_assets.assets.spatial import graph_3d, registrations

EVAL_CHECK = "asign_beats_baselines"
BASELINES = ("mean", "overlap", "similarity", "gauss_knn", "image_2d")


class ModelConfig(dg.Config):
    """Training preset (cpu, gpu, gpu-large) and common overrides (0 or -1 keep the preset's value)."""

    preset: str = "cpu"
    epochs: int = 0
    seed: int = 0
    known_frac: float = -1.0
    ensemble: int = 0  # members averaged (0: the preset's; 1 is ~3x faster on very large stacks)
    # accuracy options (training.TrainParams; docs/accuracy.md): -2 / "" keep the preset's value
    source_rank: int = -2  # propagated labels: -1 BCV rank of the measured expression, 0 raw, r > 0 fixed
    ridge_rank: int = -2  # image ridge targets: -1 rank by leave-one-out PCC, 0 raw, r > 0 fixed
    mask: str = ""  # "random" or "blocked" known masks / validation folds


class InputsCache:
    """Loads what model/imputation need from storage once per step."""

    def __init__(self, store, sid: str):
        import anndata as ad
        import torch
        import zarr

        self.graph = torch.load(store.local_path(sid, "graph_3d") / "graph.pt", weights_only=False)
        emb = zarr.open_group(str(store.local_path(sid, "embeddings.zarr")), mode="r")
        tiles = zarr.open_group(str(store.local_path(sid, "tiles.zarr")), mode="r")
        names = list(tiles.attrs["sections"])
        self.names = names
        self.spot_emb = np.concatenate([np.asarray(emb[f"{n}/spot"][:]) for n in names])
        self.region_emb = np.concatenate([np.asarray(emb[f"{n}/region"][:]) for n in names])
        self.global_emb = np.concatenate([np.asarray(emb[f"{n}/global"][:]) for n in names])
        self.spots = pl.read_parquet(store.local_path(sid, "registrations") / "spots.parquet")
        self.expr = ad.read_h5ad(store.local_path(sid, "expression.h5ad"))
        m = self.spots.with_row_index("row").filter(pl.col("measured"))
        row_of = dict(zip(m["spot_id"].to_list(), m["row"].to_list()))
        missing = [s for s in self.expr.obs_names if s not in row_of]
        if missing:
            raise ValueError(f"expression spots missing from the spot table: {missing[:5]}")
        self.measured_idx = np.array([row_of[s] for s in self.expr.obs_names], dtype=np.int64)
        self.y_measured = np.asarray(self.expr.X, dtype=np.float32)


def _curves_png(members: list[list[dict]]) -> bytes:
    """Training and validation curves, one line per ensemble member."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
    for m, curves in enumerate(members):
        ep = [c["epoch"] for c in curves]
        ax[0].plot(ep, [c["train_loss"] for c in curves], color=f"C{m}", label=f"member {m} train")
        ax[0].plot(ep, [c["val_loss"] for c in curves], color=f"C{m}", ls="--", label=f"member {m} validation")
        ax[1].plot(ep, [c["val_gene_pcc"] for c in curves], color=f"C{m}")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend(fontsize=6)
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation gene PCC")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _md_image(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


@dg.asset(
    partitions_def=samples_partitions,
    group_name="model",
    code_version="1",
    kinds={"torch"},
    deps=[graph_3d, embeddings, expression, registrations],
    pool=GPU_POOL,
    op_tags=K8S_GPU_TAGS,
    description="MSAGNet + Cross-Layer Imputation trained on the measured section with random known masks; "
    "checkpoint, config and training curves. Runs in the `gpu` pool; requests a GPU on Kubernetes.",
)
def model(context: dg.AssetExecutionContext, config: ModelConfig, storage: StorageResource, device: DeviceResource) -> dg.MaterializeResult:
    import torch

    from asign_assets.training import params_for, save_checkpoint, train_model

    store = storage.get()
    sid = context.partition_key
    dev = device.torch_device()
    overrides = {"seed": config.seed}
    if config.epochs > 0:
        overrides["epochs"] = config.epochs
    if config.known_frac > 0:
        overrides["known_frac"] = config.known_frac
    if config.ensemble > 0:
        overrides["ensemble"] = config.ensemble
    for key in ("source_rank", "ridge_rank"):
        if getattr(config, key) >= -1:
            overrides[key] = getattr(config, key)
    if config.mask:
        if config.mask not in ("random", "blocked"):
            raise ValueError(f"model config mask must be 'random' or 'blocked', got {config.mask!r}")
        overrides["mask"] = config.mask
    params = params_for(config.preset, **overrides)
    with StageMonitor().run() as mon:
        inp = InputsCache(store, sid)
        result = train_model(
            inp.graph, torch.from_numpy(inp.spot_emb), torch.from_numpy(inp.region_emb), torch.from_numpy(inp.global_emb),
            torch.from_numpy(inp.y_measured), torch.from_numpy(inp.measured_idx), params, dev,
        )
        members = [c for c in (getattr(result, "member_curves", None) or [result.curves]) if c]
        png = _curves_png(members) if members else b""
        with store.write(sid, "model") as tmp:
            tmp.mkdir()
            save_checkpoint(result, tmp / "checkpoint.pt")
            (tmp / "config.json").write_text(json.dumps({"params": params.__dict__, "model": result.config, "genes": list(inp.expr.var_names), "device": str(dev)}, indent=1, default=str))
            pl.DataFrame([{**c, "member": m} for m, cs in enumerate(members) for c in cs]).write_parquet(tmp / "curves.parquet", statistics=False)
            if png:
                (tmp / "curves.png").write_bytes(png)
    last = result.curves[result.best_epoch] if result.curves and result.best_epoch < len(result.curves) else {}
    log_progress(context, f"trained {len(result.curves)} epochs on {dev} in {result.seconds:.1f} s; best epoch {result.best_epoch}")
    return dg.MaterializeResult(
        metadata={
            "preset": params.preset,
            "device": str(dev),
            "epochs_run": len(result.curves),
            "ensemble_members": len(members),
            "best_epoch": int(result.best_epoch),
            "best_val_gene_pcc": float(last.get("val_gene_pcc", float("nan"))),
            "train_seconds": float(round(result.seconds, 2)),
            "measured_spots": int(len(inp.measured_idx)),
            "genes": int(inp.y_measured.shape[1]),
            "curves": _md_image(png, "training curves") if png else "",
            "viewer": viewer_url(sid),  # inline link; the markdown image above opens in a dialog only
            "path": path_meta(store, sid, "model"),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(digest_arrays(*[v.numpy() for v in result.model_state.values()])),
    )


def build_volume(inp: InputsCache, preds: dict[str, np.ndarray], records, sec_dir, diameter_um: float):
    """AnnData of every spot of every section, in scanpy/squidpy conventions."""
    import anndata as ad

    spots = inp.spots
    obs = spots.select(
        pl.col("section"), pl.col("spot_id"), pl.col("z_um"), pl.col("measured"), pl.col("virtual")
    ).to_pandas()
    known = np.zeros(spots.height, dtype=bool)
    known[inp.measured_idx] = True
    obs["known"] = known
    obs["section"] = obs["section"].astype("category").cat.reorder_categories([r.name for r in records])
    obs.index = (spots["section"] + ":" + spots["spot_id"]).to_list()
    adata = ad.AnnData(X=preds["blend"].astype(np.float32), obs=obs)
    adata.var_names = list(inp.expr.var_names)
    for k in ("model", "propagation", "blend", "uncertainty"):
        if k in preds:
            adata.layers[k] = preds[k].astype(np.float32)
    adata.obsm["spatial"] = np.stack([spots["x_px"].to_numpy(), spots["y_px"].to_numpy()], 1)
    adata.obsm["spatial_3d"] = np.stack([spots["x_um"].to_numpy(), spots["y_um"].to_numpy(), spots["z_um"].to_numpy()], 1)
    adata.uns["spatial"] = {
        r.name: {
            "images": {"hires": sections_lib.load_thumbnail(sec_dir, r.name)},
            "scalefactors": {
                "tissue_hires_scalef": float(r.thumb_scale),
                "spot_diameter_fullres": float(diameter_um / r.pixel_size_um),
            },
            "metadata": {"z_um": float(r.z_um), "pixel_size_um": float(r.pixel_size_um), "measured": bool(r.measured)},
        }
        for r in records
    }
    adata.uns["normalisation"] = dict(inp.expr.uns.get("normalisation", {}))
    adata.uns["asign"] = {"measured_section": next(r.name for r in records if r.measured), "layers": "X = blend of model and propagation; measured spots keep measured values; "
                     "uncertainty = SD of the members' networks and the propagation, scaled per gene to the out-of-fold error (0 at measured spots)"}
    return adata


@dg.asset(
    partitions_def=samples_partitions,
    group_name="results",
    code_version="2",
    kinds={"anndata", "zarr"},
    deps=[model, graph_3d, embeddings, expression, registrations],
    pool=GPU_POOL,
    op_tags=GPU_QUEUE_TAGS,
    description="The imputed 3D volume: every spot of every section (AnnData .h5ad and .zarr, one gene per zarr chunk), "
    "layers model/propagation/blend/uncertainty, own-image and common-frame coordinates, thumbnails for sc.pl.spatial.",
)
def imputed_volume(context: dg.AssetExecutionContext, storage: StorageResource, device: DeviceResource) -> dg.MaterializeResult:
    import torch

    from asign_assets.training import impute, load_checkpoint

    store = storage.get()
    sid = context.partition_key
    dev = device.torch_device()
    with StageMonitor().run() as mon:
        inp = InputsCache(store, sid)
        result = load_checkpoint(store.local_path(sid, "model") / "checkpoint.pt")
        preds = impute(
            result, inp.graph, torch.from_numpy(inp.spot_emb), torch.from_numpy(inp.region_emb), torch.from_numpy(inp.global_emb),
            torch.from_numpy(inp.y_measured), torch.from_numpy(inp.measured_idx), dev,
        )
        sec_dir = store.local_path(sid, "sections")
        records = sections_lib.load_records(sec_dir)
        manifest = store.load_registered(sid).without_truth()
        adata = build_volume(inp, preds, records, sec_dir, manifest.spot_diameter_um)
        with store.write(sid, "imputed_volume.h5ad") as tmp:
            adata.write_h5ad(tmp)
        with store.write(sid, "imputed_volume.zarr") as tmp:
            adata.write_zarr(tmp, chunks=(adata.n_obs, 1))
    per = adata.obs.groupby("section", observed=True).size().to_dict()
    log_progress(context, f"{adata.n_obs} spots x {adata.n_vars} genes over {len(per)} sections")
    return dg.MaterializeResult(
        metadata={
            "n_spots": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "spots_per_section": dg.MetadataValue.md(md_table([{"section": k, "spots": int(v)} for k, v in per.items()])),
            "h5ad": path_meta(store, sid, "imputed_volume.h5ad"),
            "zarr": path_meta(store, sid, "imputed_volume.zarr"),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(digest_arrays(adata.X)),
    )


def _truth_matrix(manifest, inp: InputsCache, genes: np.ndarray, method: str):
    """Normalised truth of every non-measured section with truth, aligned to volume rows.

    Genes a truth file did not measure are NaN (unmeasured, never zero); metrics skip them.
    """
    from asign_assets.errors import InputError
    from asign_assets.expression import normalise_to_genes
    from asign_assets.readers import read_counts

    rows, mats = [], []
    spots = inp.spots.with_row_index("row")
    for spec in manifest.sections:
        if spec.measured or spec.truth is None:
            continue
        sec = spots.filter(pl.col("section") == spec.name)
        if sec["virtual"].any():
            raise InputError(spec.truth, f"section {spec.name}: truth needs the section's spot table (its spots are virtual)")
        counts = read_counts(spec.truth)
        index = {s: i for i, s in enumerate(counts.spot_ids.astype(str))}
        ids = sec["spot_id"].to_list()
        have = [i for i, s in enumerate(ids) if s in index]
        if not have:
            raise InputError(spec.truth, f"section {spec.name}: no truth row matches a spot id of the section")
        sub = counts.X[[index[ids[i]] for i in have]]
        lib = np.asarray(sub.sum(1)).ravel()
        keep = lib >= float(inp.expr.uns.get("normalisation", {}).get("min_counts", 0))
        y = normalise_to_genes(sub, counts.genes, genes, method, missing="nan", source=str(spec.truth))
        rows.append(sec["row"].to_numpy()[np.array(have)][keep])
        mats.append(y[keep])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(genes)), np.float32)
    return np.concatenate(rows), np.concatenate(mats).astype(np.float32)


@dg.asset(
    partitions_def=samples_partitions,
    group_name="results",
    code_version="2",
    kinds={"parquet"},
    deps=[imputed_volume],
    check_specs=[dg.AssetCheckSpec(EVAL_CHECK, asset="evaluation", description="ASIGN's pooled gene_pcc is at least every baseline's.")],
    description="Held-out metrics (mse, mae, spot_pcc, spot_pcc_z, gene_pcc, gene_pcc_hvg50) of ASIGN and the baselines "
    "(mean, overlap, similarity, gauss_knn, image_2d) on sections with truth, ASIGN's uncertainty metrics "
    "(unc_spearman, unc_spearman_all, coverage_80) and per-gene PCC (evaluation_genes.parquet). The only asset that reads truth.",
)
def evaluation(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    import anndata as ad

    from asign_assets.baselines import run_baselines
    from asign_assets.metrics import evaluate_sections, gene_pcc_table, hvg_indices, markdown_table, uncertainty_table

    store = storage.get()
    sid = context.partition_key
    with StageMonitor().run() as mon:
        manifest = store.load_registered(sid)  # with truth: evaluation is the one stage allowed to read it
        inp = InputsCache(store, sid)
        vol = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
        genes = np.asarray(vol.var_names)
        method = str(inp.expr.uns.get("normalisation", {}).get("method", "log1p_cp10k"))
        rows, truth = _truth_matrix(manifest, inp, genes, method)
        if len(rows) == 0:
            table = pl.DataFrame(schema={"method": pl.Utf8, "section": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64})
            check = dg.AssetCheckResult(check_name=EVAL_CHECK, passed=True, description="no truth in the manifest: nothing to evaluate")
        else:
            base = run_baselines(inp.graph, inp.spot_emb, inp.y_measured, inp.measured_idx)
            preds = {"asign": np.asarray(vol.X), "asign_network": np.asarray(vol.layers["model"]), "asign_propagation": np.asarray(vol.layers["propagation"])}
            preds.update({k: base[k] for k in BASELINES if k in base})
            sec_names = inp.spots["section"].to_numpy()[rows]
            ref_mean = inp.y_measured.mean(0)
            ref_sd = inp.y_measured.std(0)
            table = evaluate_sections({k: v[rows] for k, v in preds.items()}, truth, sec_names, ref_mean, ref_sd, hvg_indices(inp.y_measured, 50))
            if "uncertainty" in vol.layers:
                table = pl.concat([table, uncertainty_table(np.asarray(vol.layers["uncertainty"])[rows], preds["asign"][rows], truth, sec_names)])
            pooled = table.filter((pl.col("section") == "pooled") & (pl.col("metric") == "gene_pcc"))
            score = dict(zip(pooled["method"].to_list(), pooled["value"].to_list()))
            losers = {k: round(v, 4) for k, v in score.items() if k in BASELINES and v > score["asign"]}
            check = dg.AssetCheckResult(
                check_name=EVAL_CHECK, passed=not losers, severity=dg.AssetCheckSeverity.WARN,
                description="ASIGN gene_pcc >= every baseline" if not losers else f"baselines beat ASIGN on pooled gene_pcc: {losers} vs {score['asign']:.4f}",
                metadata={k: float(v) for k, v in score.items()},
            )
        with store.write(sid, "evaluation.parquet") as tmp:
            table.write_parquet(tmp, statistics=False)
        if len(rows):  # per-gene PCC for the viewer's per-gene accuracy
            with store.write(sid, "evaluation_genes.parquet") as tmp:
                gene_pcc_table({k: v[rows] for k, v in preds.items()}, truth, sec_names, genes).write_parquet(tmp, statistics=False)
        if len(rows):
            tv = ad.AnnData(X=truth, obs=vol.obs.iloc[rows].copy())
            tv.obs["row"] = rows
            tv.var_names = genes
            with store.write(sid, "evaluation_truth.zarr") as tmp:
                tv.write_zarr(tmp, chunks=(max(1, tv.n_obs), 1))
    # two narrow tables (gene-level, spot-level metrics): one wide table is cut off on the Dagster asset page
    halves = (["gene_pcc", "gene_pcc_hvg50", "mse"], ["spot_pcc", "spot_pcc_z", "mae"])
    md = "\n\n".join(markdown_table(table.filter(pl.col("metric").is_in(h))) for h in halves) if table.height else "_no truth: nothing evaluated_"
    unc = table.filter(pl.col("metric").is_in(["unc_spearman", "unc_spearman_all", "coverage_80"]))
    unc_md = md_table(unc.pivot(on="metric", index="section", values="value").to_dicts()) if unc.height else "_no uncertainty layer_"
    log_progress(context, "pooled metrics:\n" + md + "\nuncertainty (asign):\n" + unc_md)
    scored = table.filter((pl.col("metric") == "genes_scored") & (pl.col("method") == "asign")) if table.height else table
    scored_md = md_table([{"section": r["section"], "genes_scored": int(r["value"])} for r in scored.iter_rows(named=True)]) if scored.height else ""
    return dg.MaterializeResult(
        metadata={
            "pooled": dg.MetadataValue.md(md),
            "uncertainty": dg.MetadataValue.md(unc_md),
            "evaluated_spots": int(len(rows)),
            "genes_scored": dg.MetadataValue.md(scored_md or "_none_"),
            "path": path_meta(store, sid, "evaluation.parquet"),
            **mon.metadata(),
        },
        check_results=[check],
        data_version=dg.DataVersion(digest_arrays(table["value"].to_numpy() if table.height else np.zeros(0))),
    )
