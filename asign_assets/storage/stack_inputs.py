"""What training, imputation and evaluation read from a sample's stored assets, loaded once.

The rows of every array follow the registered spot table (``registrations/spots.parquet``):
one row per spot of every section, in section order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from asign_assets.storage.store import Storage


def section_names(tiles_root: Any) -> list[str]:
    """Section order of the tiles (and embeddings) zarr groups."""
    return [str(n) for n in tiles_root.attrs["sections"]]


def stacked(root: Any, names: list[str], key: str) -> np.ndarray:
    """``root[<section>/<key>]`` of every section, concatenated in section order."""
    return np.concatenate([np.asarray(root[f"{n}/{key}"][:]) for n in names])


def tile_arrays(tiles_root: Any, names: list[str]) -> tuple[np.ndarray, ...]:
    """Per-section tile tables with one global tile numbering.

    Returns (spot -> region tile, spot -> global tile, region xy px, region section,
    global xy px, global section); tile indices are offset by the tiles of earlier sections.
    """
    spot_region, spot_global, region_xy, global_xy, region_sec, global_sec = [], [], [], [], [], []
    r_off = g_off = 0
    for i, n in enumerate(names):
        g = tiles_root[n]
        rxy = np.asarray(g["region_xy_px"][:])
        gxy = np.asarray(g["global_xy_px"][:])
        spot_region.append(np.asarray(g["spot_region"][:], dtype=np.int64) + r_off)
        spot_global.append(np.asarray(g["spot_global"][:], dtype=np.int64) + g_off)
        region_xy.append(rxy)
        global_xy.append(gxy)
        region_sec.append(np.full(len(rxy), i))
        global_sec.append(np.full(len(gxy), i))
        r_off += len(rxy)
        g_off += len(gxy)
    cat = np.concatenate
    return cat(spot_region), cat(spot_global), cat(region_xy), cat(region_sec), cat(global_xy), cat(global_sec)


def measured_rows(spots: pl.DataFrame, keys: list[str]) -> np.ndarray:
    """Row of each measured spot ``<section>:<spot_id>`` key (the expression's obs_names) in
    ``spots``: a join among measured rows, so equal spot ids of different sections stay apart.

    Raises ValueError naming the first keys that the spot table does not hold.
    """
    table = spots.with_row_index("row").filter(pl.col("measured")).select(
        pl.concat_str(pl.col("section"), pl.lit(":"), pl.col("spot_id")).alias("spot_id"), "row",
    )
    joined = pl.DataFrame({"spot_id": [str(s) for s in keys]}).join(table, on="spot_id", how="left", maintain_order="left")
    missing = joined.filter(pl.col("row").is_null())["spot_id"].to_list()
    if missing:
        raise ValueError(f"expression spots missing from the spot table: {missing[:5]}")
    return joined["row"].to_numpy().astype(np.int64)


@dataclass
class StackInputs:
    """Graph, embeddings, registered spots and measured expression of one sample."""

    graph: Any
    names: list[str]
    spot_emb: np.ndarray
    region_emb: np.ndarray
    global_emb: np.ndarray
    spots: pl.DataFrame
    expr: Any  # AnnData of the measured sections (asset `expression`)
    measured_idx: np.ndarray
    y_measured: np.ndarray

    @classmethod
    def load(cls, store: Storage, sid: str) -> "StackInputs":
        """Reads assets graph_3d, embeddings, tiles (section order), registrations and expression."""
        import anndata as ad
        import torch
        import zarr

        graph = torch.load(store.file(sid, "graph_3d", "graph"), weights_only=False)
        emb = zarr.open_group(str(store.file(sid, "embeddings", "zarr")), mode="r")
        names = section_names(zarr.open_group(str(store.file(sid, "tiles", "zarr")), mode="r"))
        spots = pl.read_parquet(store.file(sid, "registrations", "spots"))
        expr = ad.read_h5ad(store.file(sid, "expression", "h5ad"))
        return cls(
            graph=graph, names=names, spot_emb=stacked(emb, names, "spot"), region_emb=stacked(emb, names, "region"),
            global_emb=stacked(emb, names, "global"), spots=spots, expr=expr,
            measured_idx=measured_rows(spots, list(expr.obs_names)), y_measured=np.asarray(expr.X, dtype=np.float32),
        )

    @property
    def normalisation(self) -> dict:
        return dict(self.expr.uns.get("normalisation", {}))

    def tensors(self) -> tuple:
        """(graph, spot, region, global embeddings, measured values, measured rows) as torch tensors."""
        import torch

        return (
            self.graph, torch.from_numpy(self.spot_emb), torch.from_numpy(self.region_emb), torch.from_numpy(self.global_emb),
            torch.from_numpy(self.y_measured), torch.from_numpy(self.measured_idx),
        )
