"""Spot lattice geometry: inferred from the measured section, replayed over unmeasured ones.

Legacy ST arrays are square (4 neighbours at 90 deg, 100 um spots at 200 um pitch);
Visium is hexagonal (6 neighbours at 60 deg, 55 um spots at 100 um pitch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from asign_assets.errors import InputError

__all__ = ["LatticeGeometry", "infer_lattice", "lattice_over_mask", "DIAMETER_RATIO"]

#: spot diameter / centre-to-centre pitch when the diameter is not given.
DIAMETER_RATIO: dict[str, float] = {"square": 100.0 / 200.0, "hex": 55.0 / 100.0}


@dataclass(frozen=True)
class LatticeGeometry:
    """A regular spot lattice in microns; ``angle_rad`` is the direction of one lattice
    axis in image coordinates (x right, y down, radians), folded to (-pi/4, pi/4] for square
    and (-pi/6, pi/6] for hex lattices (their symmetry makes other angles equivalent)."""

    kind: Literal["square", "hex"]
    pitch_um: float
    angle_rad: float
    diameter_um: float


def infer_lattice(
    xy_px: np.ndarray,
    pixel_size_um: float,
    spot_diameter_um: float | None = None,
    source: str | None = None,
) -> LatticeGeometry:
    """Lattice kind, pitch and orientation from spot centres (full-resolution px).

    Pitch = median nearest-neighbour distance (KD-tree). Kind and orientation come
    from the neighbour directions within 1.3 pitches: the 4-fold circular moment
    |<exp(4i theta)>| is ~1 for a square lattice and ~0 for a hex one, and the
    6-fold moment the other way round; its argument gives the orientation.
    """
    xy = np.asarray(xy_px, dtype=np.float64)
    where = source or "spots"
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(where, f"spot coordinates must be [N, 2], got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise InputError(where, "spot coordinates contain NaN or infinite values")
    if pixel_size_um <= 0:
        raise InputError(where, f"pixel size must be positive, got {pixel_size_um}", field="pixel_size_um")
    xy = np.unique(xy, axis=0)
    if xy.shape[0] < 3:
        raise InputError(where, f"need at least 3 distinct spots to infer the lattice, got {xy.shape[0]}")

    tree = cKDTree(xy)
    k = min(7, xy.shape[0])
    dist, idx = tree.query(xy, k=k)
    pitch_px = float(np.median(dist[:, 1]))
    if pitch_px <= 0:
        raise InputError(where, "spots coincide; cannot infer a pitch")
    # Refine on all neighbours within the first shell (robust to a few missing spots).
    shell = (dist[:, 1:] < 1.3 * pitch_px) & (dist[:, 1:] > 0.7 * pitch_px)
    pitch_px = float(np.median(dist[:, 1:][shell]))
    src = np.repeat(np.arange(xy.shape[0]), k - 1).reshape(-1, k - 1)[shell]
    dst = idx[:, 1:][shell]
    vec = xy[dst] - xy[src]
    theta = np.arctan2(vec[:, 1], vec[:, 0])
    m4 = np.exp(4j * theta).mean()
    m6 = np.exp(6j * theta).mean()
    if abs(m6) > abs(m4):
        kind: Literal["square", "hex"] = "hex"
        angle = np.angle(m6) / 6.0
    else:
        kind = "square"
        angle = np.angle(m4) / 4.0
    pitch_um = pitch_px * pixel_size_um
    diameter = float(spot_diameter_um) if spot_diameter_um is not None else DIAMETER_RATIO[kind] * pitch_um
    return LatticeGeometry(kind=kind, pitch_um=pitch_um, angle_rad=float(angle), diameter_um=diameter)


def _lattice_points(geom: LatticeGeometry, pitch_px: float, origin: np.ndarray, radius_px: float):
    """All lattice points within ``radius_px`` of ``origin``: (xy [M,2], row [M], col [M])."""
    c, s = math.cos(geom.angle_rad), math.sin(geom.angle_rad)
    a = np.array([c, s]) * pitch_px  # along a row
    if geom.kind == "square":
        row_step = np.array([-s, c]) * pitch_px
        shift = 0.0
    else:
        row_step = np.array([-s, c]) * pitch_px * math.sqrt(3) / 2  # rows of a hex lattice
        shift = 0.5
    n_col = int(math.ceil(radius_px / pitch_px)) + 2
    n_row = int(math.ceil(radius_px / np.linalg.norm(row_step))) + 2
    rows, cols = np.meshgrid(np.arange(-n_row, n_row + 1), np.arange(-n_col, n_col + 1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    offset = shift * (rows % 2)
    xy = origin + (cols + offset)[:, None] * a + rows[:, None] * row_step
    return xy, rows, cols


def lattice_over_mask(
    geom: LatticeGeometry,
    mask: np.ndarray,
    mask_scale: float,
    pixel_size_um: float,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, list[str]]:
    """Virtual spot centres (full-resolution px, x/y) on ``geom``'s lattice over the mask.

    The lattice is anchored at the tissue centroid so it is deterministic per mask;
    a point is kept when its centre falls on tissue and inside the image. Ids are
    ``v<row>_<col>`` with rows/cols counted from 0 at the top-left kept point, in
    row-major order.
    """
    mask = np.asarray(mask, dtype=bool)
    W, H = image_size
    if not mask.any():
        return np.zeros((0, 2)), []
    if mask_scale <= 0 or pixel_size_um <= 0:
        raise ValueError("mask_scale and pixel_size_um must be positive")
    pitch_px = geom.pitch_um / pixel_size_um
    ys, xs = np.nonzero(mask)
    # mask pixel i covers full-res [i/scale, (i+1)/scale): its centre is (i + 0.5) / scale - 0.5
    to_full = lambda v: (v + 0.5) / mask_scale - 0.5  # noqa: E731
    origin = np.array([to_full(xs.mean()), to_full(ys.mean())])
    corners = np.array([[to_full(xs.min() - 0.5), to_full(ys.min() - 0.5)], [to_full(xs.max() + 0.5), to_full(ys.max() + 0.5)]])
    radius = float(np.max(np.linalg.norm(np.array([[corners[i, 0], corners[j, 1]] for i in (0, 1) for j in (0, 1)]) - origin, axis=1)))
    xy, rows, cols = _lattice_points(geom, pitch_px, origin, radius + pitch_px)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= W - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= H - 1)
    mi = np.floor((xy[:, 1] + 0.5) * mask_scale).astype(np.int64)
    mj = np.floor((xy[:, 0] + 0.5) * mask_scale).astype(np.int64)
    ok = inside & (mi >= 0) & (mi < mask.shape[0]) & (mj >= 0) & (mj < mask.shape[1])
    ok[ok] = mask[mi[ok], mj[ok]]
    xy, rows, cols = xy[ok], rows[ok], cols[ok]
    if xy.shape[0] == 0:
        return np.zeros((0, 2)), []
    rows, cols = rows - rows.min(), cols - cols.min()
    order = np.lexsort((cols, rows))
    xy, rows, cols = xy[order], rows[order], cols[order]
    ids = [f"v{r}_{c}" for r, c in zip(rows.tolist(), cols.tolist())]
    return xy, ids
