"""Ingest assets: `sections` (validated inputs) and `expression` (counts of the measured sections)."""


from typing import Literal

import dagster as dg

from asign_assets.ingest import sections as sections_lib
from asign_assets.pipeline.automation import sample_asset
from asign_assets.pipeline.resources import StorageResource, sample_io
from asign_assets.pipeline.assets.metadata import StageMonitor, digest_arrays, digest_files, load_manifest_for, log_progress, md_table, path_meta
from asign_assets.pipeline.assets.sources import raw_inputs
from asign_assets.ingest.expression import ExpressionParams, NormMethod
from asign_assets.pipeline.config import params_from
from asign_assets.storage import layout


class ExpressionConfig(dg.Config):
    """Gene selection and normalisation of the measured sections (genes all of them measured)."""

    n_genes: int = ExpressionParams.n_genes
    selection: Literal["mean", "hvg"] = ExpressionParams.selection
    normalisation: NormMethod = ExpressionParams.normalisation  # "stnet": log((c+1)/sum(c+1))
    min_counts: int = ExpressionParams.min_counts


@sample_asset(group_name="ingest", code_version="2", kinds={"parquet", "png"}, deps=[raw_inputs])
def sections(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Validated inputs of a sample: every section's image, tissue mask, thumbnail and spots
    (virtual lattice where a section has no spot table). Fails, writing nothing, on bad input."""
    store, sid = sample_io(context, storage)
    with StageMonitor().run() as mon:
        manifest = load_manifest_for(context, store)
        prep = sections_lib.prepare_sections(manifest)
        for spec in manifest.measured_sections:
            jr = prep.join_reports[spec.name]
            if jr.n_joined < jr.n_spots:
                context.log.warning(f"{spec.counts}: {jr.summary()}")
        for r in prep.records:
            log_progress(
                context,
                f"section {r.name}: {r.n_spots} spots ({r.n_virtual} virtual), tissue {r.tissue_area_mm2:.2f} mm2, "
                f"pixel size {r.pixel_size_um:.4g} um/px from {r.pixel_size_source}",
            )
        with store.write(sid, "sections") as tmp:
            sections_lib.write_sections(prep, tmp)
            version = digest_files([tmp / layout.name("sections", "spots"), tmp / layout.name("sections", "records")])
    rows = [
        {"section": r.name, "z_um": r.z_um, "measured": r.measured, "spots": r.n_spots, "virtual": r.n_virtual,
         "tissue_mm2": r.tissue_area_mm2, "image_px": f"{r.width}x{r.height}",
         "um_per_px": r.pixel_size_um, "px_source": r.pixel_size_source,
         **{k: round(v, 3) for k, v in prep.plausibility.get(r.name, {}).items()}}
        for r in prep.records
    ]
    meta = {
        "sections": dg.MetadataValue.md(md_table(rows, ".2f")),
        "n_sections": len(prep.records),
        "n_spots": prep.spots.height,
        "measured_sections": ", ".join(s.name for s in manifest.measured_sections),
        "join_report": "; ".join(f"{name}: {jr.summary()}" for name, jr in prep.join_reports.items()),
        "path": path_meta(store, sid, "sections"),
        **mon.metadata(),
    }
    if prep.lattice is not None:
        meta["virtual_lattice"] = f"{prep.lattice.kind}, pitch {prep.lattice.pitch_um:.1f} um, angle {prep.lattice.angle_rad:.3f} rad"
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))


@sample_asset(group_name="ingest", code_version="2", kinds={"anndata"}, deps=[sections, raw_inputs])
def expression(context: dg.AssetExecutionContext, config: ExpressionConfig, storage: StorageResource) -> dg.MaterializeResult:
    """The measured sections' counts: low-library spots dropped, top genes (among those every
    measured section has) selected over all measured spots, normalised (AnnData; obs_names
    ``<section>:<spot_id>``)."""
    from asign_assets.ingest.expression import MeasuredCounts, build_expression_sections

    store, sid = sample_io(context, storage)
    with StageMonitor().run() as mon:
        manifest = load_manifest_for(context, store)
        spots_df = sections_lib.load_spots(store.local_path(sid, "sections"))
        parts = []
        for spec in manifest.measured_sections:
            _spots, counts, _report = sections_lib.read_measured(spec, manifest.checks.counts_normalised)
            ids = spots_df.filter((spots_df["section"] == spec.name) & spots_df["measured"])["spot_id"].to_list()
            counts = counts.subset_spots(ids)
            parts.append(MeasuredCounts(spec.name, counts.X, counts.spot_ids, counts.genes, str(spec.counts)))
        params = params_from(config, ExpressionParams)
        adata, info = build_expression_sections(parts, params)
        with store.write(sid, layout.path("expression", "h5ad")) as tmp:
            adata.write_h5ad(tmp)
        version = digest_arrays(adata.X, extra={"genes": list(adata.var_names), "params": params.__dict__})
    log_progress(context, f"{adata.n_obs} spots x {adata.n_vars} genes")
    return dg.MaterializeResult(
        metadata={
            "n_spots": adata.n_obs,
            "n_genes": adata.n_vars,
            **{k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in info.items()},
            "top_genes": ", ".join(list(adata.var_names[:10])),
            "path": path_meta(store, sid, layout.path("expression", "h5ad")),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(version),
    )
