"""Cheap consistency checks on stored assets (the asset checks call these).

Each function reads only what it checks (array shapes and a few columns, never a model) and
returns the problems it found, empty when all is well, so the checks can say what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

#: A graph where more than this fraction of spots has no edge cannot propagate to them.
MAX_ISOLATED_FRACTION = 0.05
#: Fewer measured spots than this leave too little for training and its validation split.
MIN_MEASURED_SPOTS = 30


def volume_problems(h5ad: Path, expected_spots: int) -> list[str]:
    """Imputed volume: finite X and layers (uncertainty may be NaN nowhere), consistent shapes."""
    import h5py

    problems = []
    with h5py.File(h5ad, "r") as f:
        x = np.asarray(f["X"][:])
        n, g = x.shape
        if n != expected_spots:
            problems.append(f"{n} rows but the registered spot table has {expected_spots} spots")
        for name, arr in [("X", x)] + [(f"layers/{k}", np.asarray(f["layers"][k][:])) for k in f.get("layers", {})]:
            if arr.shape != (n, g):
                problems.append(f"{name} has shape {arr.shape}, X has {(n, g)}")
            elif not np.isfinite(arr).all():
                problems.append(f"{name}: {int((~np.isfinite(arr)).sum())} non-finite values")
        xyz = f["obsm/spatial_3d"].shape if "obsm/spatial_3d" in f else None
        if xyz != (n, 3):
            problems.append(f"obsm/spatial_3d has shape {xyz}, expected {(n, 3)}")
    return problems


def registration_gaps(section_names: list[str], spots: pl.DataFrame, transforms: Path) -> list[str]:
    """Sections without spots in the registered table, or without a saved transform."""
    counts = dict(spots.group_by("section").len().iter_rows())
    out = [f"section {s}: no spots" for s in section_names if counts.get(s, 0) == 0]
    out += [f"section {s}: no transform {s}.tfm" for s in section_names if not (transforms / f"{s}.tfm").is_file()]
    for col in ("x_um", "y_um", "z_um"):
        if col not in spots.columns:
            out.append(f"spot table has no {col} column")
        elif not np.isfinite(spots[col].to_numpy()).all():
            out.append(f"{col}: non-finite common-frame coordinates")
    return out


def isolated_fraction(edges: pl.DataFrame, num_nodes: int) -> float:
    """Fraction of nodes that are neither source nor target of any edge (columns src, dst)."""
    if num_nodes == 0:
        return 0.0
    touched = np.zeros(num_nodes, dtype=bool)
    touched[edges["src"].to_numpy()] = True
    touched[edges["dst"].to_numpy()] = True
    return float(1.0 - touched.mean())


def h5ad_n_obs(h5ad: Path) -> int:
    """Number of observations of an .h5ad without loading it."""
    import h5py

    with h5py.File(h5ad, "r") as f:
        return int(f["X"].shape[0])
