"""A small fake result tree (docs/architecture.md layout) for the viewer's tests and benchmark."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FakeResult:
    home: Path
    sample: str
    sections: list[str]
    genes: list[str]
    X: np.ndarray  # [N, G] imputed
    section: np.ndarray  # [N] section name per spot
    spot_id: np.ndarray
    xy_px: np.ndarray  # [N, 2] own-image px
    xyz_um: np.ndarray  # [N, 3]
    measured: np.ndarray
    truth_rows: np.ndarray | None
    truth_X: np.ndarray | None
    thumb_scale: float


def write_fake_result(
    home: Path,
    sample: str = "S1",
    n_sections: int = 3,
    grid: int = 8,
    n_genes: int = 12,
    measured_index: int = 1,
    seed: int = 0,
    with_truth: bool = True,
    with_evaluation: bool = True,
    with_overlay: bool = True,
    with_thumbnails: bool = True,
    write_h5ad: bool = True,
    zarr_format: int = 2,
    with_layers: bool = True,
    with_dense: bool = True,
) -> FakeResult:
    """Write samples/<sample>/ with sections, thumbnails, imputed_volume(.zarr/.h5ad),
    evaluation.parquet, overlay.png and evaluation_truth.zarr; with ``with_dense`` also an
    uncertainty layer, expression_volume/ (built by asign_assets.results.volume), evaluation_genes.parquet
    and model/curves.png."""
    import anndata as ad
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    d = Path(home) / "samples" / sample
    (d / "sections" / "thumbnails").mkdir(parents=True, exist_ok=True)
    (d / "registrations").mkdir(parents=True, exist_ok=True)

    sections = [f"sec{i}" for i in range(n_sections)]
    genes = [f"GENE{j:03d}" for j in range(n_genes)]
    width, height, thumb_scale = 2000, 1600, 0.1
    pitch = 150.0  # px between spots
    gx, gy = np.meshgrid(np.arange(grid), np.arange(grid))
    base = np.c_[gx.ravel(), gy.ravel()] * pitch + 300.0
    k = len(base)
    xy_px = np.concatenate([base + rng.normal(0, 5, base.shape) for _ in sections])
    section = np.repeat(sections, k)
    ids = np.char.add(np.char.add(gy.ravel().astype(str), "x"), gx.ravel().astype(str))
    spot_id = np.tile(ids, n_sections).astype(object)
    sec_idx = np.repeat(np.arange(n_sections), k)
    z_um = sec_idx * 20.0
    xyz_um = np.c_[xy_px * 0.5, z_um]  # pixel size 0.5 um
    measured = sec_idx == measured_index
    n = len(section)
    X = rng.gamma(2.0, 1.0, size=(n, n_genes)).astype(np.float32)
    X *= (1 + np.arange(n_genes, dtype=np.float32))

    recs = [
        {
            "name": s,
            "section_index": i,
            "z_um": float(i * 20.0),
            "pixel_size_um": 0.5,
            "image": f"/data/{s}.jpg",
            "width": width,
            "height": height,
            "measured": i == measured_index,
            "thumb_scale": thumb_scale,
            "tissue_area_mm2": 1.0,
            "n_spots": k,
            "n_virtual": 0,
            "has_truth": with_truth and i != measured_index,
        }
        for i, s in enumerate(sections)
    ]
    (d / "sections" / "sections.json").write_text(json.dumps(recs, indent=1))
    if with_thumbnails:
        for i, s in enumerate(sections):
            img = np.full((int(height * thumb_scale), int(width * thumb_scale), 3), 235, np.uint8)
            img[20:140, 20:180] = (200, 120 + (30 * i) % 120, 200)  # "tissue"
            Image.fromarray(img).save(d / "sections" / "thumbnails" / f"{s}.png")
    if with_overlay:
        Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(d / "registrations" / "overlay.png")

    obs = pd.DataFrame(
        {
            "section": pd.Categorical(section, categories=sorted(sections, reverse=True)),  # not stack order on purpose
            "spot_id": spot_id.astype(str),
            "z_um": z_um,
            "measured": measured,
            "virtual": np.zeros(n, dtype=bool),
        },
        index=np.char.add(np.char.add(section.astype(str), ":"), spot_id.astype(str)),
    )
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = xy_px
    adata.obsm["spatial_3d"] = xyz_um
    for layer in ("model", "propagation", "blend") if with_layers else ():
        adata.layers[layer] = X
    unc = None
    if with_dense:
        unc = np.where(measured[:, None], 0.0, 0.1 + 0.05 * rng.random((n, n_genes))).astype(np.float32)
        adata.layers["uncertainty"] = unc
    adata.uns["normalisation"] = {"normalisation": "log1p_cp10k", "n_genes": n_genes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ad.settings.override(zarr_write_format=zarr_format):
            adata.write_zarr(d / "imputed_volume.zarr", chunks=(n, 1))
        if write_h5ad:
            adata.write_h5ad(d / "imputed_volume.h5ad")

    truth_rows = truth_X = None
    if with_truth:
        truth_rows = np.flatnonzero(~measured)
        truth_X = (X[truth_rows] + rng.normal(0, 0.5, size=(len(truth_rows), n_genes))).astype(np.float32)
        tobs = pd.DataFrame({"row": truth_rows, "section": section[truth_rows]}, index=obs.index[truth_rows])
        tdata = ad.AnnData(X=truth_X, obs=tobs, var=pd.DataFrame(index=genes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ad.settings.override(zarr_write_format=zarr_format):
                tdata.write_zarr(d / "evaluation_truth.zarr", chunks=(len(truth_rows), 1))

    if with_evaluation:
        rows = []
        for s in sections:
            if s == sections[measured_index]:
                continue
            for m in ("asign", "propagation"):
                for metric, v in (("mse", 0.1), ("mae", 0.2), ("pcc", 0.5)):
                    rows.append({"method": m, "section": s, "metric": metric, "value": v + 0.01 * len(rows)})
        pd.DataFrame(rows).to_parquet(d / "evaluation.parquet")

    if with_dense:
        from PIL import Image as _Image

        from asign_assets.results.volume import gridding_operator, write_ome_zarr

        op = gridding_operator(xyz_um, sec_idx)
        attrs = {"unit": "log1p_cp10k", "sections": [{"name": r["name"], "z_um": r["z_um"], "measured": r["measured"]} for r in recs]}
        (d / "expression_volume").mkdir(exist_ok=True)
        write_ome_zarr(d / "expression_volume" / "expression.ome.zarr", op.apply(X), genes, op.grid, op.tissue, attrs=attrs)
        write_ome_zarr(d / "expression_volume" / "uncertainty.ome.zarr", op.apply(unc), genes, op.grid, op.tissue, "uncertainty", attrs=attrs)
        if with_truth:
            gp = []
            for s in sections:
                if s == sections[measured_index]:
                    continue
                for m_i, m in enumerate(("asign", "mean", "overlap")):
                    gp.append(pd.DataFrame({"method": m, "section": s, "gene": genes, "value": 0.6 - 0.2 * m_i + 0.01 * np.arange(n_genes)}))
            pd.concat(gp).to_parquet(d / "evaluation_genes.parquet")
        (d / "model").mkdir(exist_ok=True)
        _Image.fromarray(np.full((60, 160, 3), 200, np.uint8)).save(d / "model" / "curves.png")

    return FakeResult(
        home=Path(home),
        sample=sample,
        sections=sections,
        genes=genes,
        X=X,
        section=section,
        spot_id=spot_id,
        xy_px=xy_px,
        xyz_um=xyz_um,
        measured=measured,
        truth_rows=truth_rows,
        truth_X=truth_X,
        thumb_scale=thumb_scale,
    )
