"""The imputed volume as AnnData: every spot of every section, in scanpy/squidpy conventions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from asign_assets.ingest import sections as sections_lib
from asign_assets.storage.stack_inputs import StackInputs

LAYERS = ("model", "propagation", "blend", "uncertainty")


def write_anndata_zarr(adata, path: Path, x_chunks: tuple[int, int]) -> None:
    """``adata.write_zarr`` in zarr format 2, chosen explicitly (what the viewer and mirrors read):
    ``write_zarr`` itself cannot be told the format and warns about its default changing.
    ``x_chunks`` applies to X only (one gene per chunk for the viewer's gene switch)."""
    import zarr
    from anndata.experimental import write_dispatched

    adata.strings_to_categoricals()
    group = zarr.open_group(str(path), mode="w", zarr_format=2)

    def chunk_x(write, store, name, elem, *, dataset_kwargs, iospec):
        write(store, name, elem, dataset_kwargs=dict(dataset_kwargs, chunks=x_chunks) if name.lstrip("/") == "X" else dataset_kwargs)

    write_dispatched(group, "/", adata, callback=chunk_x)
    zarr.consolidate_metadata(group.store)


def imputed_anndata(inp: StackInputs, preds: Mapping[str, np.ndarray], records: Sequence, sec_dir: Path, diameter_um: float):
    """X = the blend; layers model/propagation/blend/uncertainty; ``obs["section"]`` is a categorical
    in record order; ``obsm`` spatial (own-image px) and spatial_3d (common frame, um);
    ``uns["spatial"]`` holds each section's thumbnail and scale factors for ``sc.pl.spatial``."""
    import anndata as ad

    spots = inp.spots
    obs = spots.select(pl.col("section"), pl.col("spot_id"), pl.col("z_um"), pl.col("measured"), pl.col("virtual")).to_pandas()
    known = np.zeros(spots.height, dtype=bool)
    known[inp.measured_idx] = True
    obs["known"] = known
    obs["section"] = obs["section"].astype("category").cat.reorder_categories([r.name for r in records])
    obs.index = (spots["section"] + ":" + spots["spot_id"]).to_list()
    adata = ad.AnnData(X=preds["blend"].astype(np.float32), obs=obs)
    adata.var_names = list(inp.expr.var_names)
    for k in LAYERS:
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
    adata.uns["normalisation"] = inp.normalisation
    adata.uns["asign"] = {"measured_sections": [r.name for r in records if r.measured], "layers": "X = blend of model and propagation; measured spots keep measured values; "
                     "uncertainty = SD of the members' networks and the propagation, scaled per gene to the out-of-fold error (0 at measured spots)"}
    return adata
