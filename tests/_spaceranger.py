"""Fake 10x inputs written in a test: a filtered_feature_bc_matrix.h5 and a whole Space Ranger
``outs/`` folder (rotated hex lattice, hires/lowres images, scale factors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import scipy.sparse as sp
from PIL import Image


def write_10x(path, barcodes, genes, X):
    Xc = sp.csc_matrix(np.asarray(X).T)  # genes x barcodes
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = Xc.data.astype(np.int32)
        m["indices"] = Xc.indices.astype(np.int64)
        m["indptr"] = Xc.indptr.astype(np.int64)
        m["shape"] = np.array(Xc.shape, dtype=np.int32)
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        ft = m.create_group("features")
        ft["name"] = np.array([g.encode() for g in genes])
        ft["id"] = np.array([f"ENSG{i}".encode() for i in range(len(genes))])
        ft["feature_type"] = np.array([b"Gene Expression"] * (len(genes) - 1) + [b"Antibody Capture"])


FULLRES_UM = 0.5  # um per full-resolution pixel of the fake scan
HIRES, LOWRES = 0.2, 0.05  # tissue_hires_scalef, tissue_lowres_scalef
FULL_W, FULL_H = 4400, 2800
TISSUE, MARK = (205, 120, 175), (40, 10, 60)


def hex_lattice(rows: int = 8, cols: int = 16, angle: float = 0.1, jitter_px: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """A rotated Visium hex lattice in full-resolution px; rows 2..rows-3 are in tissue."""
    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.arange(rows), np.arange(2 * cols), indexing="ij")
    keep = (r + c) % 2 == 0  # Visium: array_col of one row are all even or all odd
    r, c = r[keep], c[keep]
    u, v = c * 50.0 / FULLRES_UM, r * 50.0 * math.sqrt(3) / FULLRES_UM
    ca, sa = math.cos(angle), math.sin(angle)
    x = 600 + 120 * seed + ca * u - sa * v + rng.uniform(-jitter_px, jitter_px, len(r))  # sections differ by seed
    y = 500 + 60 * seed + sa * u + ca * v + rng.uniform(-jitter_px, jitter_px, len(r))
    return pl.DataFrame(
        {
            "barcode": [f"BC{i:04d}-1" for i in range(len(r))],
            "in_tissue": ((r >= 2) & (r <= rows - 3)).astype(np.int64),
            "array_row": r.astype(np.int64),
            "array_col": c.astype(np.int64),
            "pxl_row_in_fullres": np.round(y).astype(np.int64),
            "pxl_col_in_fullres": np.round(x).astype(np.int64),
        }
    )


def scan_image(pos: pl.DataFrame, scale: float) -> Image.Image:
    """H&E-like image at ``scale`` of the scan: tissue over the in-tissue spots, a dark mark on each."""
    w, h = round(FULL_W * scale), round(FULL_H * scale)
    img = np.full((h, w, 3), 245, np.uint8)
    tis = pos.filter(pl.col("in_tissue") == 1)
    x, y = tis["pxl_col_in_fullres"].to_numpy() * scale, tis["pxl_row_in_fullres"].to_numpy() * scale
    pad = 120 * scale
    img[int(y.min() - pad): int(y.max() + pad), int(x.min() - pad): int(x.max() + pad)] = TISSUE
    img[np.round(y).astype(int), np.round(x).astype(int)] = MARK
    return Image.fromarray(img)


def write_positions(spatial: Path, pos: pl.DataFrame, kind: str) -> Path:
    if kind == "parquet":
        path = spatial / "tissue_positions.parquet"
        pos.write_parquet(path)
    elif kind == "csv":
        path = spatial / "tissue_positions.csv"
        pos.write_csv(path)
    else:
        path = spatial / "tissue_positions_list.csv"
        pos.write_csv(path, include_header=False)
    return path


def make_outs(
    root: Path,
    positions: str = "list",
    hires: bool = True,
    lowres: bool = True,
    counts: bool = True,
    seed: int = 0,
    pos: pl.DataFrame | None = None,
) -> tuple[Path, pl.DataFrame]:
    """A fake Space Ranger ``outs/`` folder; returns it and its full positions table."""
    pos = hex_lattice(seed=seed) if pos is None else pos
    spatial = root / "spatial"
    spatial.mkdir(parents=True)
    write_positions(spatial, pos, positions)
    (spatial / "scalefactors_json.json").write_text(json.dumps(
        {"tissue_hires_scalef": HIRES, "tissue_lowres_scalef": LOWRES, "spot_diameter_fullres": 150.0, "fiducial_diameter_fullres": 220.0}
    ))
    if hires:
        scan_image(pos, HIRES).save(spatial / "tissue_hires_image.png")
    if lowres:
        scan_image(pos, LOWRES).save(spatial / "tissue_lowres_image.png")
    if counts:
        tis = pos.filter(pl.col("in_tissue") == 1)
        rng = np.random.default_rng(seed)
        X = rng.poisson(6.0, (tis.height, 31))  # ~180 counts per spot: above the expression stage minimum
        write_10x(root / "filtered_feature_bc_matrix.h5", tis["barcode"].to_list(), [f"G{i}" for i in range(30)] + ["ADT"], X)
    return root, pos
