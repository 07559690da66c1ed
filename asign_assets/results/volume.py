"""Dense voxel volume of the imputed spots, written as OME-Zarr (NGFF 0.4).

Why a grid: spots are a point cloud; 3D tools (napari, the viewer's slices and
isosurfaces) browse images. The grid lives in the registrations' common frame (um).

Gridding is one sparse linear operator ``M`` [voxels, spots], built once and applied to
every gene (and to the uncertainty), so nothing loops over spots or genes:

- **xy, per section**: a voxel centre in the section's tissue takes the Gaussian-weighted
  mean (sigma ``sigma_frac * pitch``, cut off at one pitch) of the section's spots; a
  tissue voxel with no spot inside the cut-off takes its nearest spot's value. A section's
  *tissue* is its registered tissue mask (mapped into the common frame) within ``reach``
  (one pitch) of one of its spots, so tissue outside the spot array is not extrapolated.
- **z**: a plane between sections ``a`` and ``b`` at fraction ``t`` is
  ``((1 - t) P_a + t P_b) / ((1 - t) T_a + t T_b)`` where ``P`` is a gridded section
  (0 outside its tissue ``T``); the plane's tissue is where that denominator is >= 0.5.
  Planes at a section's z reproduce that section's grid exactly.

Voxels outside the tissue hold 0; the ``labels/tissue`` image says where tissue is.
Default voxel size: half the spot pitch in x and y, the smallest section spacing in z.

Layout of ``<name>.zarr`` (zarr format 2, NGFF 0.4; readable by zarr alone or ome-zarr):

- root ``multiscales``: axes ``c`` (genes), ``z``, ``y``, ``x`` (micrometer), datasets
  ``0``, ``1``, ... (x and y subsampled by 2 per level), each with ``scale`` and
  ``translation`` (the centre of voxel 0) in um; chunks of one gene;
- ``omero.channels[i].label`` and ``asign.genes``: the gene names; ``asign.unit`` /
  ``asign.normalisation``: what the values are;
- ``labels/tissue``: uint8 (z, y, x) tissue mask, same transforms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

NGFF_VERSION = "0.4"


@dataclass(frozen=True)
class VolumeGrid:
    """Voxel centres ``origin + index * voxel`` (um), axis order (z, y, x)."""

    origin_um: tuple[float, float, float]
    voxel_um: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axis(self, i: int) -> np.ndarray:
        """Voxel centres (um) along axis ``i`` (0 = z, 1 = y, 2 = x)."""
        return self.origin_um[i] + np.arange(self.shape[i]) * self.voxel_um[i]

    def index_of(self, zyx_um: np.ndarray) -> np.ndarray:
        """Nearest voxel index [N, 3] of points (z, y, x) um, clipped into the grid."""
        idx = np.rint((np.asarray(zyx_um, float) - np.asarray(self.origin_um)) / np.asarray(self.voxel_um)).astype(np.int64)
        return np.clip(idx, 0, np.asarray(self.shape) - 1)


@dataclass(frozen=True)
class VolumeParams:
    """Voxel size (0: the defaults above) and kernel width, as fractions of the spot pitch."""

    voxel_xy_um: float = 0.0
    voxel_z_um: float = 0.0
    sigma_frac: float = 0.3
    reach_frac: float = 1.0
    levels: int = 3


def spot_pitch_um(xy_um: np.ndarray) -> float:
    """Median nearest-neighbour distance of one section's spots (its lattice pitch)."""
    xy = np.asarray(xy_um, float)
    if len(xy) < 2:
        raise ValueError("the spot pitch needs at least two spots")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def make_grid(xyz_um: np.ndarray, section_z_um: Sequence[float], pitch_um: float, params: VolumeParams = VolumeParams()) -> VolumeGrid:
    """Grid covering every spot (padded by one pitch) with the default or configured voxels."""
    xyz = np.asarray(xyz_um, float)
    vxy = params.voxel_xy_um or pitch_um / 2.0
    zs = np.unique(np.asarray(section_z_um, float))
    gaps = np.diff(zs)
    vz = params.voxel_z_um or (float(gaps[gaps > 0].min()) if (gaps > 0).any() else vxy)
    lo = xyz[:, :2].min(0) - pitch_um
    hi = xyz[:, :2].max(0) + pitch_um
    nx, ny = (np.floor((hi - lo) / vxy).astype(int) + 1).tolist()
    nz = int(np.floor((zs[-1] - zs[0]) / vz + 1e-6)) + 1
    return VolumeGrid((float(zs[0]), float(lo[1]), float(lo[0])), (float(vz), float(vxy), float(vxy)), (nz, ny, nx))


def tissue_in_common_frame(mask: np.ndarray, mask_um_per_px: float, transform, grid: VolumeGrid) -> np.ndarray:
    """A section's tissue mask resampled (nearest) onto the grid's xy plane [ny, nx].

    ``transform`` maps common-frame um to the section's own um (the registration's
    direction); mask pixel ``j`` is centred at ``(j + 0.5) * mask_um_per_px``.
    """
    from asign_assets.registration.transforms import transform_points

    yy, xx = np.meshgrid(grid.axis(1), grid.axis(2), indexing="ij")
    own = transform_points(transform, np.stack([xx.ravel(), yy.ravel()], 1))
    col = np.floor(own[:, 0] / mask_um_per_px).astype(np.int64)
    row = np.floor(own[:, 1] / mask_um_per_px).astype(np.int64)
    m = np.asarray(mask, bool)
    inside = (row >= 0) & (row < m.shape[0]) & (col >= 0) & (col < m.shape[1])
    out = np.zeros(len(own), bool)
    out[inside] = m[row[inside], col[inside]]
    return out.reshape(grid.shape[1:])


def section_operator(xy_um: np.ndarray, grid: VolumeGrid, pitch_um: float, tissue: np.ndarray | None, params: VolumeParams) -> tuple[sp.csr_matrix, np.ndarray]:
    """Row-normalised [ny*nx, n_spots] gridding weights of one section and its tissue [ny, nx]."""
    ny, nx = grid.shape[1:]
    yy, xx = np.meshgrid(grid.axis(1), grid.axis(2), indexing="ij")
    cells = np.stack([xx.ravel(), yy.ravel()], 1)
    tree = cKDTree(np.asarray(xy_um, float))
    dist, nearest = tree.query(cells, distance_upper_bound=params.reach_frac * pitch_um)
    covered = np.isfinite(dist)
    if tissue is not None:
        covered &= np.asarray(tissue, bool).ravel()
    rows = np.flatnonzero(covered)
    sigma = params.sigma_frac * pitch_um
    pairs = cKDTree(cells[rows]).sparse_distance_matrix(tree, pitch_um, output_type="ndarray")
    w = np.exp(-0.5 * (pairs["v"] / sigma) ** 2)
    has = np.zeros(len(rows), bool)
    has[pairs["i"]] = True
    lone = np.flatnonzero(~has)  # in tissue, no spot within the kernel cut-off: nearest spot
    r = np.concatenate([rows[pairs["i"]], rows[lone]])
    c = np.concatenate([pairs["j"], nearest[rows[lone]]])
    w = np.concatenate([w, np.ones(len(lone))])
    W = sp.csr_matrix((w, (r, c)), shape=(ny * nx, len(xy_um)))
    s = np.asarray(W.sum(1)).ravel()
    W = sp.diags(np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)) @ W
    return W.tocsr(), covered.reshape(ny, nx)


@dataclass
class GriddingOperator:
    """``values_grid = M @ values_spots`` for every voxel; ``tissue`` [nz, ny, nx];
    ``spot_voxels`` [N, 3] the (z, y, x) voxel nearest to each spot."""

    M: sp.csr_matrix
    tissue: np.ndarray
    grid: VolumeGrid
    pitch_um: float
    spot_voxels: np.ndarray

    def apply(self, values: np.ndarray, genes_per_block: int = 16) -> np.ndarray:
        """[N, G] spot values -> [G, nz, ny, nx] float32 (gene blocks bound the memory)."""
        v = np.asarray(values, np.float32)
        out = np.empty((v.shape[1], *self.grid.shape), np.float32)
        for g0 in range(0, v.shape[1], genes_per_block):
            blk = self.M @ v[:, g0 : g0 + genes_per_block]
            out[g0 : g0 + blk.shape[1]] = np.asarray(blk, np.float32).T.reshape(-1, *self.grid.shape)
        return out


def gridding_operator(
    xyz_um: np.ndarray,
    section_code: np.ndarray,
    tissue_masks: Sequence[np.ndarray | None] | None = None,
    params: VolumeParams = VolumeParams(),
    grid: VolumeGrid | None = None,
    pitch_um: float | None = None,
) -> GriddingOperator:
    """The operator of the module docstring for spots (x, y, z um) of sections ``section_code``.

    ``tissue_masks[s]``: section ``s``'s registered tissue on the grid's xy plane (see
    :func:`tissue_in_common_frame`; None: reach of the spots only). Pass ``grid`` to
    reuse the one the masks were resampled on.
    """
    xyz = np.asarray(xyz_um, float)
    code = np.asarray(section_code, np.int64)
    secs = np.unique(code)
    z_sec = np.array([float(np.median(xyz[code == s, 2])) for s in secs])
    order = np.argsort(z_sec, kind="stable")
    secs, z_sec = secs[order], z_sec[order]
    if pitch_um is None:
        pitch_um = float(np.median([spot_pitch_um(xyz[code == s, :2]) for s in secs if (code == s).sum() >= 2]))
    if grid is None:
        grid = make_grid(xyz, z_sec, pitch_um, params)
    n = len(xyz)
    ops, tis = [], []
    for s in secs:
        idx = np.flatnonzero(code == s)
        mask = None if tissue_masks is None else tissue_masks[int(s)]
        W, t = section_operator(xyz[idx, :2], grid, pitch_um, mask, params)
        W = W.tocoo()
        ops.append(sp.csr_matrix((W.data, (W.row, idx[W.col])), shape=(W.shape[0], n)))
        tis.append(t.ravel().astype(np.float64))
    zg = grid.axis(0)
    if len(secs) == 1:
        a = np.zeros(len(zg), int)
        t = np.zeros(len(zg))
    else:
        a = np.clip(np.searchsorted(z_sec, zg + 1e-6, side="right") - 1, 0, len(secs) - 2)
        t = np.clip((zg - z_sec[a]) / (z_sec[a + 1] - z_sec[a]), 0.0, 1.0)
    blocks, planes = [], []
    for k in range(len(zg)):
        ta = (1.0 - t[k]) * tis[a[k]]
        tb = t[k] * tis[min(a[k] + 1, len(secs) - 1)] if len(secs) > 1 else np.zeros_like(ta)
        den = ta + tb
        inside = den >= 0.5
        inv = np.where(inside, 1.0 / np.where(inside, den, 1.0), 0.0)
        Mk = sp.diags(inv * (1.0 - t[k])) @ ops[a[k]]
        if len(secs) > 1 and t[k] > 0:
            Mk = Mk + sp.diags(inv * t[k]) @ ops[a[k] + 1]
        blocks.append(Mk)
        planes.append(inside.reshape(grid.shape[1:]))
    return GriddingOperator(sp.vstack(blocks).tocsr(), np.stack(planes), grid, float(pitch_um), grid.index_of(xyz[:, [2, 1, 0]]))


def sample_at(volume: np.ndarray, grid: VolumeGrid, xyz_um: np.ndarray) -> np.ndarray:
    """Values [N, C] of a [C, nz, ny, nx] volume at the voxels nearest to points (x, y, z) um."""
    xyz = np.asarray(xyz_um, float)
    i = grid.index_of(xyz[:, [2, 1, 0]])
    return np.asarray(volume)[:, i[:, 0], i[:, 1], i[:, 2]].T


def spot_agreement(volume: np.ndarray, grid: VolumeGrid, xyz_um: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-gene Spearman correlation between spot values and the voxel at each spot (NaN: constant gene)."""
    return spearman_columns(sample_at(volume, grid, xyz_um), values)


def spearman_columns(a: np.ndarray, b: np.ndarray, block: int = 16) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (NaN:
    constant), ``block`` columns at a time (ranks of a 100k x 250 matrix would take ~1 GB)."""
    from asign_assets.stats.correlation import average_ranks

    out = np.empty(np.shape(a)[1])
    for g0 in range(0, len(out), block):
        ra = average_ranks(np.asarray(a[:, g0 : g0 + block]), axis=0)
        rb = average_ranks(np.asarray(b[:, g0 : g0 + block]), axis=0)
        ra -= ra.mean(0)
        rb -= rb.mean(0)
        den = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[g0 : g0 + block] = np.where(den > 0, (ra * rb).sum(0) / den, np.nan)
    return out


# ----------------------------------------------------------------------------- OME-Zarr


def _transforms(grid: VolumeGrid, factor: int, channel: bool) -> list[dict]:
    """Scale and translation of a level subsampled by ``factor`` in x and y (voxel 0 is kept)."""
    vz, vy, vx = grid.voxel_um
    scale = [vz, vy * factor, vx * factor]
    trans = list(grid.origin_um)
    if channel:
        scale, trans = [1.0, *scale], [0.0, *trans]
    return [{"type": "scale", "scale": [float(v) for v in scale]}, {"type": "translation", "translation": [float(v) for v in trans]}]


def _axes(channel: bool) -> list[dict]:
    sp_axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in ("z", "y", "x")]
    return ([{"name": "c", "type": "channel"}] if channel else []) + sp_axes


def _n_levels(grid: VolumeGrid, levels: int) -> int:
    n = 1
    while n < levels and min(grid.shape[1:]) // (2**n) >= 16:
        n += 1
    return n


def write_ome_zarr(
    path: str | Path,
    data: np.ndarray,
    channel_names: Sequence[str],
    grid: VolumeGrid,
    tissue: np.ndarray | None = None,
    name: str = "expression",
    levels: int = 3,
    attrs: Mapping | None = None,
) -> None:
    """Write a [C, nz, ny, nx] volume (and a tissue label) as an NGFF 0.4 multiscale image."""
    data = np.asarray(data, np.float32)
    if data.shape[1:] != grid.shape or len(channel_names) != data.shape[0]:
        raise ValueError(f"volume {data.shape} does not match grid {grid.shape} and {len(channel_names)} channels")
    _write(path, lambda g0, g1: data[g0:g1], channel_names, grid, tissue, name, levels, attrs)


def write_gridded(
    path: str | Path,
    op: GriddingOperator,
    values: np.ndarray,
    channel_names: Sequence[str],
    name: str = "expression",
    levels: int = 3,
    attrs: Mapping | None = None,
    genes_per_block: int = 16,
) -> np.ndarray:
    """Grid spot values [N, G] with ``op`` and write them like :func:`write_ome_zarr`, one
    block of genes at a time (memory: one block, not the whole volume). Returns the voxel
    values at the spots [N, G] (for :func:`spearman_columns` against ``values``)."""
    v = np.asarray(values, np.float32)
    xyz_idx = None
    at_spots = np.empty_like(v)

    def block(g0: int, g1: int) -> np.ndarray:
        nonlocal xyz_idx
        blk = op.apply(v[:, g0:g1], genes_per_block=g1 - g0)
        if xyz_idx is None:
            xyz_idx = op.spot_voxels
        at_spots[:, g0:g1] = blk[:, xyz_idx[:, 0], xyz_idx[:, 1], xyz_idx[:, 2]].T
        return blk

    _write(path, block, channel_names, op.grid, op.tissue, name, levels, attrs, genes_per_block)
    return at_spots


def _write(path, source, channel_names, grid: VolumeGrid, tissue, name, levels, attrs, block: int = 16) -> None:
    import zarr

    n = _n_levels(grid, levels)
    C = len(channel_names)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arrs = []
    for lv in range(n):
        f = 2**lv
        shape = (C, grid.shape[0], len(range(0, grid.shape[1], f)), len(range(0, grid.shape[2], f)))
        arrs.append(root.create_array(str(lv), shape=shape, chunks=(1, *shape[1:]), dtype="float32", fill_value=0.0))
    hi = 0.0
    for g0 in range(0, C, block):
        blk = source(g0, min(g0 + block, C))
        hi = max(hi, float(np.nanmax(blk, initial=0.0)))
        for lv, a in enumerate(arrs):
            f = 2**lv
            a[g0 : g0 + blk.shape[0]] = blk[:, :, ::f, ::f]
    root.attrs.update({
        "multiscales": [{
            "version": NGFF_VERSION,
            "name": name,
            "axes": _axes(True),
            "datasets": [{"path": str(lv), "coordinateTransformations": _transforms(grid, 2**lv, True)} for lv in range(n)],
            "type": "subsample (x and y by 2 per level)",
        }],
        "omero": {
            "name": name,
            "version": NGFF_VERSION,
            "channels": [
                {"label": str(g), "color": "FFFFFF", "active": i == 0, "window": {"min": 0.0, "max": hi, "start": 0.0, "end": hi}}
                for i, g in enumerate(channel_names)
            ],
            "rdefs": {"model": "greyscale", "defaultZ": grid.shape[0] // 2},
        },
        "asign": {"genes": [str(g) for g in channel_names], **dict(attrs or {})},
    })
    if tissue is not None:
        labels = root.create_group("labels")
        labels.attrs["labels"] = ["tissue"]
        lab = labels.create_group("tissue")
        t = np.asarray(tissue, np.uint8)
        for lv in range(n):
            f = 2**lv
            arr = t[:, ::f, ::f]
            lab.create_array(str(lv), data=arr, chunks=arr.shape)
        lab.attrs.update({
            "multiscales": [{
                "version": NGFF_VERSION,
                "name": "tissue",
                "axes": _axes(False),
                "datasets": [{"path": str(lv), "coordinateTransformations": _transforms(grid, 2**lv, False)} for lv in range(n)],
            }],
            "image-label": {"version": NGFF_VERSION, "colors": [{"label-value": 1, "rgba": [255, 255, 255, 128]}], "source": {"image": "../../"}},
        })


@dataclass
class OmeVolume:
    """An OME-Zarr volume opened with zarr: lazy arrays per level, names, level-0 grid."""

    levels: list
    channels: list[str]
    grid: VolumeGrid
    tissue: object | None
    attrs: dict

    def channel_index(self, name: str) -> int:
        return self.channels.index(name)


def open_ome_zarr(path: str | Path) -> OmeVolume:
    """Open a volume written by :func:`write_ome_zarr` with zarr alone (reads nothing yet)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    ms = root.attrs["multiscales"][0]
    ds = ms["datasets"]
    tr = {t["type"]: t for t in ds[0]["coordinateTransformations"]}
    arrs = [root[d["path"]] for d in ds]
    scale, trans = tr["scale"]["scale"][1:], tr["translation"]["translation"][1:]
    grid = VolumeGrid(tuple(float(v) for v in trans), tuple(float(v) for v in scale), tuple(int(v) for v in arrs[0].shape[1:]))
    tissue = root["labels/tissue/0"] if "labels" in root and "tissue" in root["labels"] else None
    asign = dict(root.attrs.get("asign", {}))
    names = list(asign.get("genes") or [c["label"] for c in root.attrs["omero"]["channels"]])
    return OmeVolume(arrs, names, grid, tissue, asign)
