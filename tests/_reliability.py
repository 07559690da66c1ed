"""Content hashes of a materialised sample, shared by the determinism and concurrency tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl


def _h(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        if a.dtype == object:
            a = a.astype(str)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _frame(df: pl.DataFrame) -> str:
    return _h(*[df[c].to_numpy() for c in df.columns], np.array(df.columns))


def _zarr(path: Path, prefix: str) -> dict[str, str]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    out = {f"{prefix}/{name}": _h(arr[...]) for name, arr in root.arrays()}
    for gname, group in root.groups():
        for name, arr in group.members(max_depth=None):
            if isinstance(arr, zarr.Array):
                out[f"{prefix}/{gname}/{name}"] = _h(arr[...])
    return out


def array_hashes(sample: Path) -> dict[str, str]:
    """Content hash of every array each asset wrote, keyed by asset/array."""
    import anndata as ad
    import torch

    from asign_assets.model.checkpoint import load_checkpoint

    out: dict[str, str] = {}
    out["sections/spots"] = _frame(pl.read_parquet(sample / "sections" / "spots.parquet"))
    out["sections/records"] = hashlib.sha256((sample / "sections" / "sections.json").read_bytes()).hexdigest()[:16]
    out.update(_zarr(sample / "tiles.zarr", "tiles"))
    out.update(_zarr(sample / "embeddings.zarr", "embeddings"))
    reg = pl.read_parquet(sample / "registrations" / "spots.parquet")
    out["registrations/spots_um"] = _h(reg["x_um"].to_numpy(), reg["y_um"].to_numpy(), reg["z_um"].to_numpy())
    out["registrations/qc"] = _frame(pl.read_parquet(sample / "registrations" / "qc.parquet").drop("seconds"))
    out["graph_3d/edges"] = _frame(pl.read_parquet(sample / "graph_3d" / "edges.parquet"))
    g = torch.load(sample / "graph_3d" / "graph.pt", weights_only=False)
    out["graph_3d/graph"] = _h(g.edge_index.numpy(), g.edge_weight.numpy(), g.edge_type.numpy())
    expr = ad.read_h5ad(sample / "expression.h5ad")
    out["expression/X"] = _h(expr.X, np.asarray(expr.obs_names), np.asarray(expr.var_names))
    out["expression/counts"] = _h(expr.layers["counts"].toarray())
    ckpt = load_checkpoint(sample / "model" / "checkpoint.pt")
    out["model/state"] = _h(*[v.numpy() for v in ckpt.model_state.values()], *[v.numpy() for v in ckpt.cli_state.values()])
    out["model/curves"] = hashlib.sha256(json.dumps(ckpt.curves, sort_keys=True).encode()).hexdigest()[:16]
    vol = ad.read_h5ad(sample / "imputed_volume.h5ad")
    out["imputed_volume/X"] = _h(vol.X)
    for k in sorted(vol.layers):
        out[f"imputed_volume/layers/{k}"] = _h(vol.layers[k])
    out["imputed_volume/obsm"] = _h(vol.obsm["spatial"], vol.obsm["spatial_3d"])
    out["imputed_volume.zarr/X"] = _h(ad.read_zarr(sample / "imputed_volume.zarr").X)
    ev = pl.read_parquet(sample / "evaluation.parquet").sort("method", "section", "metric")
    out["evaluation/values"] = _frame(ev)
    return out


def file_hashes(sample: Path) -> dict[str, str]:
    return {
        str(p.relative_to(sample)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(sample.rglob("*"))
        if p.is_file()
    }
