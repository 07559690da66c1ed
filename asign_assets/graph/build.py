"""The sparse 3D spot graph (intra-section lattice, cross-section overlap, similarity).

Everything is an edge list built from KD-tree neighbourhoods; no N x N array is
ever formed. Edge types: 0 intra (spatial kNN within a section), 1 overlap
(spots of neighbouring sections that cover the same tissue in the common frame),
2 similarity (most similar image embeddings among spots of *other* sections).
Every edge is stored in both directions; the same pair may appear under two
types (the paper sums overlap and similarity; see :func:`merge_edges`). The type values
live in :mod:`asign_assets.graph.edge_types`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from scipy.spatial import cKDTree
from torch_geometric.data import Data

from asign_assets.errors import InputError
from asign_assets.graph.edge_types import EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY
from asign_assets.graph.geometry import disc_iou

__all__ = [
    "GraphParams",
    "build_graph_3d",
    "intra_edges",
    "overlap_edges",
    "similarity_edges",
    "tile_edges",
    "merge_edges",
    "shifted_copy",
    "edges_frame",
    "write_edges_parquet",
]

@dataclass(frozen=True)
class GraphParams:
    """Graph construction knobs; defaults fit the legacy ST lattice (100 um spots, 200 um pitch).

    Use :meth:`for_lattice` for another platform (e.g. Visium: 55 um spots, 100 um pitch).
    """

    pitch_um: float = 200.0
    k_intra: int = 6
    intra_max_pitch: float | None = 1.5  # drop kNN edges longer than this many pitches
    # Overlap. True discs on HER2ST: a spot overlaps at most one spot of the next section
    # and 27-41% overlap none, so the default is a Gaussian distance weight instead.
    overlap: Literal["iou", "radius", "gaussian"] = "gaussian"
    spot_radius_um: float = 50.0  # "iou": the real disc
    effective_radius_um: float = 200.0  # "radius": IoU of enlarged discs (~ one pitch)
    gaussian_sigma_um: float = 100.0  # "gaussian": exp(-d^2 / 2 sigma^2), sigma ~ pitch / 2
    overlap_max_dist_um: float | None = None  # None: 2r (iou), 2R (radius), 2.5 sigma (gaussian)
    neighbour_sections: int = 2  # overlap edges between sections i and i+1..i+n (2 measured better on HER2ST C)
    # Depth: overlap weights times exp(-dz^2 / 2 s^2) for sections dz um apart (the manifest's
    # z_um), so a sibling section counts more than one at another depth. s = None: the
    # gaussian sigma (isotropic tissue); depth_weight False ignores z (the default:
    # measured neutral on HER2ST patient C, docs/accuracy.md).
    depth_weight: bool = False
    depth_sigma_um: float | None = None
    # Similarity: top-k cosine among spots of other sections.
    k_similarity: int = 3
    similarity_radius_um: float | None = 600.0  # anatomy-aware candidates; None: whole sections (dense blocks, slow)
    similarity_sections: int | None = 2  # candidate sections within +-n in stack order; None: all
    similarity_candidates: int = 32  # with a radius: nearest spots per candidate section scored
    min_similarity: float = 0.0  # similarity edges need cosine > this (weights stay non-negative)
    k_tile: int = 6
    chunk_pairs: int = 1 << 20  # candidate pairs scored per chunk (memory bound)

    @classmethod
    def for_lattice(cls, pitch_um: float, spot_diameter_um: float, **overrides) -> "GraphParams":
        """Defaults scaled to a spot lattice."""
        base = cls(
            pitch_um=pitch_um,
            spot_radius_um=spot_diameter_um / 2,
            effective_radius_um=pitch_um,
            gaussian_sigma_um=pitch_um / 2,
            similarity_radius_um=3 * pitch_um,
        )
        return replace(base, **overrides)

    def overlap_cutoff(self) -> float:
        if self.overlap_max_dist_um is not None:
            return float(self.overlap_max_dist_um)
        return {
            "iou": 2 * self.spot_radius_um,
            "radius": 2 * self.effective_radius_um,
            "gaussian": 2.5 * self.gaussian_sigma_um,
        }[self.overlap]


# ----------------------------------------------------------------------------- helpers


def _symmetric_unique(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions, each ordered pair once (first weight kept), sorted by (src, dst)."""
    s = np.concatenate([src, dst]).astype(np.int64)
    d = np.concatenate([dst, src]).astype(np.int64)
    ww = np.concatenate([w, w]).astype(np.float32)
    keep = s != d
    s, d, ww = s[keep], d[keep], ww[keep]
    key = s * n + d
    key_u, first = np.unique(key, return_index=True)
    return key_u // n, key_u % n, ww[first]


def _groups(labels: np.ndarray) -> dict[int, np.ndarray]:
    """label -> indices (ascending) without a Python loop over elements."""
    order = np.argsort(labels, kind="stable")
    vals, starts = np.unique(labels[order], return_index=True)
    bounds = np.append(starts, len(order))
    return {int(v): order[bounds[i] : bounds[i + 1]] for i, v in enumerate(vals)}


def _knn_within(xy: np.ndarray, groups: dict[int, np.ndarray], k: int, max_dist: float | None) -> tuple[np.ndarray, np.ndarray]:
    src, dst = [], []
    for idx in groups.values():
        m = len(idx)
        kk = min(k, m - 1)
        if kk <= 0:
            continue
        dist, nb = cKDTree(xy[idx]).query(xy[idx], k=kk + 1)
        dist, nb = dist[:, 1:], nb[:, 1:]
        ok = np.isfinite(dist)
        if max_dist is not None:
            ok &= dist <= max_dist
        rows = np.broadcast_to(np.arange(m)[:, None], nb.shape)
        src.append(idx[rows[ok]])
        dst.append(idx[nb[ok]])
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


# ----------------------------------------------------------------------------- edge families


def intra_edges(xy: np.ndarray, section: np.ndarray, params: GraphParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial kNN within each section, capped at ``intra_max_pitch`` pitches; weight 1."""
    cap = None if params.intra_max_pitch is None else params.intra_max_pitch * params.pitch_um
    s, d = _knn_within(np.asarray(xy, np.float64), _groups(np.asarray(section)), params.k_intra, cap)
    return _symmetric_unique(s, d, np.ones(len(s), np.float32), len(xy))


def _overlap_weight(dist: np.ndarray, params: GraphParams) -> np.ndarray:
    if params.overlap == "iou":
        return disc_iou(dist, params.spot_radius_um, params.spot_radius_um)
    if params.overlap == "radius":
        return disc_iou(dist, params.effective_radius_um, params.effective_radius_um)
    if params.overlap == "gaussian":
        return np.exp(-0.5 * (dist / params.gaussian_sigma_um) ** 2)
    raise ValueError(f"overlap must be iou, radius or gaussian, got {params.overlap!r}")


def depth_factor(dz_um: float | np.ndarray, params: GraphParams) -> float | np.ndarray:
    """Overlap weight multiplier of two sections ``dz_um`` apart (1 at dz = 0, decreasing in |dz|)."""
    if not params.depth_weight:
        return np.ones_like(np.asarray(dz_um, np.float64)) if np.ndim(dz_um) else 1.0
    s = params.depth_sigma_um if params.depth_sigma_um is not None else params.gaussian_sigma_um
    return np.exp(-0.5 * (np.asarray(dz_um, np.float64) / s) ** 2)


def overlap_edges(
    xy: np.ndarray, section: np.ndarray, params: GraphParams, z: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spots of sections i and i+1..i+n (stack order) whose footprints overlap in the common frame.

    ``iou`` is the exact IoU of the true discs (closed form); ``radius`` the IoU of
    enlarged discs; ``gaussian`` a distance weight. With per-spot ``z`` (um) the weight is
    multiplied by :func:`depth_factor` of the two sections' depth difference. Zero-weight
    pairs are dropped.
    """
    xy = np.asarray(xy, np.float64)
    groups = _groups(np.asarray(section))
    keys = sorted(groups)
    trees = {k: cKDTree(xy[groups[k]]) for k in keys}
    cutoff = params.overlap_cutoff()
    src, dst, w = [], [], []
    for pa, a in enumerate(keys):
        for b in keys[pa + 1 : pa + 1 + params.neighbour_sections]:
            pairs = trees[a].sparse_distance_matrix(trees[b], cutoff, output_type="ndarray")
            if len(pairs) == 0:
                continue
            weight = _overlap_weight(pairs["v"], params)
            if z is not None:
                weight = weight * depth_factor(float(z[groups[a][0]] - z[groups[b][0]]), params)
            ok = weight > 0
            src.append(groups[a][pairs["i"][ok]])
            dst.append(groups[b][pairs["j"][ok]])
            w.append(weight[ok])
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _symmetric_unique(np.concatenate(src), np.concatenate(dst), np.concatenate(w), len(xy))


def similarity_edges(
    xy: np.ndarray, section: np.ndarray, emb: np.ndarray, params: GraphParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each spot's top-k cosine-similar spots among OTHER sections; weight = cosine.

    Candidates are limited to sections within ``similarity_sections`` in stack
    order and (when set) to the ``similarity_candidates`` nearest spots of each
    such section within ``similarity_radius_um`` in the common frame, so the cost
    is the number of candidate pairs, scored in chunks.
    """
    k = params.k_similarity
    n = len(xy)
    if k <= 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    e = torch.as_tensor(np.asarray(emb, np.float32))
    e = torch.nn.functional.normalize(e, dim=1)
    xy = np.asarray(xy, np.float64)
    groups = _groups(np.asarray(section))
    keys = sorted(groups)
    window = len(keys) if params.similarity_sections is None else params.similarity_sections
    trees = {kk: cKDTree(xy[groups[kk]]) for kk in keys} if params.similarity_radius_um is not None else {}
    src, dst, w = [], [], []
    for pa, a in enumerate(keys):
        targets = [b for pb, b in enumerate(keys) if pb != pa and abs(pb - pa) <= window]
        if not targets:
            continue
        rows_a = groups[a]
        if params.similarity_radius_um is not None:
            # nearest candidates within the radius in each target section: fixed-width [n_a, C]
            c_list = []
            for b in targets:
                kq = min(params.similarity_candidates, len(groups[b]))
                dist, j = trees[b].query(xy[rows_a], k=kq, distance_upper_bound=params.similarity_radius_um)
                dist, j = dist.reshape(len(rows_a), kq), j.reshape(len(rows_a), kq)
                c_list.append(np.where(np.isfinite(dist), groups[b][np.minimum(j, len(groups[b]) - 1)], -1))
            cand = torch.as_tensor(np.concatenate(c_list, axis=1))  # -1: no candidate
            kk = min(k, cand.shape[1])
            step = max(1, params.chunk_pairs // max(1, cand.shape[1]))
            for s in range(0, len(rows_a), step):
                r = rows_a[s : s + step]
                c = cand[s : s + step]
                sims = torch.einsum("nd,ncd->nc", e[torch.as_tensor(r)], e[c.clamp(min=0)])
                sims[c < 0] = -torch.inf
                val, pos = torch.topk(sims, kk, dim=1)
                ok = (val > params.min_similarity).numpy()
                src.append(np.broadcast_to(r[:, None], ok.shape)[ok])
                dst.append(torch.gather(c, 1, pos).numpy()[ok])
                w.append(val.numpy()[ok])
        else:
            cand = torch.as_tensor(np.concatenate([groups[b] for b in targets]))
            ec = e[cand]
            kk = min(k, len(cand))
            step = max(1, params.chunk_pairs // max(1, len(cand)))
            for s in range(0, len(rows_a), step):
                r = rows_a[s : s + step]
                sims = e[torch.as_tensor(r)] @ ec.T
                val, pos = torch.topk(sims, kk, dim=1)
                ok = (val > params.min_similarity).numpy()
                src.append(np.broadcast_to(r[:, None], ok.shape)[ok])
                dst.append(cand[pos].numpy()[ok])
                w.append(val.numpy()[ok])
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _symmetric_unique(np.concatenate(src), np.concatenate(dst), np.concatenate(w), n)


def tile_edges(tile_xy: np.ndarray, tile_section: np.ndarray, k: int) -> np.ndarray:
    """Spatial kNN among tiles within each section, both directions: [2, E] int64."""
    tile_xy = np.asarray(tile_xy, np.float64).reshape(-1, 2)
    s, d = _knn_within(tile_xy, _groups(np.asarray(tile_section)), k, None)
    s, d, _ = _symmetric_unique(s, d, np.ones(len(s), np.float32), max(len(tile_xy), 1))
    return np.stack([s, d])


# ----------------------------------------------------------------------------- graph


def _check(name: str, arr: np.ndarray, n: int, upper: int | None = None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape[0] != n:
        raise InputError(name, f"expected {n} rows (one per spot), got {arr.shape[0]}")
    if upper is not None and len(arr) and (arr.min() < 0 or arr.max() >= upper):
        raise InputError(name, f"indices must lie in [0, {upper}), got [{arr.min()}, {arr.max()}]")
    return arr


def build_graph_3d(
    spots: pl.DataFrame,
    spot_emb: np.ndarray,
    spot_region: np.ndarray,
    spot_global: np.ndarray,
    region_xy: np.ndarray,
    region_section: np.ndarray,
    global_xy: np.ndarray,
    global_section: np.ndarray,
    params: GraphParams = GraphParams(),
) -> Data:
    """The 3D spot graph as a torch_geometric ``Data`` (see docs/architecture.md, graph_3d).

    ``spots`` rows are the nodes in order, with ``section_index, x_um, y_um, z_um``
    in the common frame. ``spot_region``/``spot_global`` index tiles concatenated
    over sections; ``region_xy``/``global_xy`` are tile centres (own px is fine:
    tile graphs never cross sections).
    """
    missing = {"section_index", "x_um", "y_um", "z_um"} - set(spots.columns)
    if missing:
        raise InputError("spots", f"missing columns {sorted(missing)}")
    n = spots.height
    section = spots["section_index"].to_numpy().astype(np.int64)
    xyz = np.stack([spots[c].to_numpy().astype(np.float64) for c in ("x_um", "y_um", "z_um")], axis=1)
    if not np.all(np.isfinite(xyz)):
        raise InputError("spots", "non-finite coordinates in x_um/y_um/z_um")
    spot_emb = _check("spot_emb", np.asarray(spot_emb), n)
    region_xy = np.asarray(region_xy, np.float64).reshape(-1, 2)
    global_xy = np.asarray(global_xy, np.float64).reshape(-1, 2)
    spot_region = _check("spot_region", spot_region, n, len(region_xy))
    spot_global = _check("spot_global", spot_global, n, len(global_xy))
    region_section = _check("region_section", region_section, len(region_xy))
    global_section = _check("global_section", global_section, len(global_xy))

    xy = xyz[:, :2]
    fams = [
        (EDGE_INTRA, intra_edges(xy, section, params)),
        (EDGE_OVERLAP, overlap_edges(xy, section, params, xyz[:, 2])),
        (EDGE_SIMILARITY, similarity_edges(xy, section, spot_emb, params)),
    ]
    src = np.concatenate([f[1][0] for f in fams])
    dst = np.concatenate([f[1][1] for f in fams])
    wt = np.concatenate([f[1][2] for f in fams]).astype(np.float32)
    et = np.concatenate([np.full(len(f[1][0]), f[0], np.int64) for f in fams])

    data = Data(
        edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
        edge_type=torch.from_numpy(et),
        edge_weight=torch.from_numpy(wt),
        pos=torch.from_numpy(xyz.astype(np.float32)),
        section=torch.from_numpy(section),
        spot_region=torch.from_numpy(spot_region.astype(np.int64)),
        spot_global=torch.from_numpy(spot_global.astype(np.int64)),
        region_edge_index=torch.from_numpy(tile_edges(region_xy, region_section, params.k_tile)),
        global_edge_index=torch.from_numpy(tile_edges(global_xy, global_section, params.k_tile)),
        num_nodes=n,
    )
    return data


def shifted_copy(graph: Data, nodes: torch.Tensor, shift_xy: np.ndarray, params: GraphParams) -> Data:
    """``graph`` with a copy of ``nodes`` appended (rows ``n .. n + len(nodes) - 1``), displaced
    by ``shift_xy`` (um) in the common frame, as if it were a neighbouring section registered
    with that error.

    The copies keep their originals' tiles and depth; among themselves they get the
    originals' intra edges, and they are joined to the originals only by overlap-type
    edges (:func:`overlap_edges` between the two point sets, with ``params``). Training uses
    it so that labels reach the measured spots across a registration-sized shift, as they do
    at imputation (model.params.TrainParams.regime = "shifted").
    """
    n, nodes = int(graph.num_nodes), torch.as_tensor(nodes).long()
    k = nodes.numel()
    copy_of = torch.full((n,), -1, dtype=torch.long)
    copy_of[nodes] = torch.arange(n, n + k)
    ei, et, ew = graph.edge_index, graph.edge_type, graph.edge_weight
    cs, cd = copy_of[ei[0]], copy_of[ei[1]]
    intra = (et == EDGE_INTRA) & (cs >= 0) & (cd >= 0)
    pos = graph.pos.double().numpy()
    xy = pos[nodes.numpy(), :2]
    both = np.concatenate([xy, xy + np.asarray(shift_xy, np.float64)[None, :]])
    o_src, o_dst, o_w = overlap_edges(both, np.repeat([0, 1], k), replace(params, neighbour_sections=1))
    to_node = torch.cat([nodes, torch.arange(n, n + k)])
    o_ei = to_node[torch.from_numpy(np.stack([o_src, o_dst]))]
    copy_pos = torch.from_numpy(np.concatenate([both[k:], pos[nodes.numpy(), 2:]], 1).astype(np.float32))
    return Data(
        edge_index=torch.cat([ei, torch.stack([cs[intra], cd[intra]]), o_ei], 1),
        edge_type=torch.cat([et, et[intra], torch.full((o_ei.shape[1],), EDGE_OVERLAP, dtype=et.dtype)]),
        edge_weight=torch.cat([ew, ew[intra], torch.from_numpy(o_w).to(ew.dtype)]),
        pos=torch.cat([graph.pos, copy_pos.to(graph.pos.dtype)]),
        section=torch.cat([graph.section, torch.full((k,), int(graph.section.max()) + 1, dtype=graph.section.dtype)]),
        spot_region=torch.cat([graph.spot_region, graph.spot_region[nodes]]),
        spot_global=torch.cat([graph.spot_global, graph.spot_global[nodes]]),
        region_edge_index=graph.region_edge_index,
        global_edge_index=graph.global_edge_index,
        num_nodes=n + k,
    )


# ----------------------------------------------------------------------------- outputs


def merge_edges(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One weighted adjacency: edges of the same (src, dst) under several types summed
    (``torch_geometric.utils.coalesce``; sorted by src, then dst)."""
    from torch_geometric.utils import coalesce

    return coalesce(edge_index.long(), edge_weight, num_nodes=num_nodes, reduce="sum")


def edges_frame(data: Data) -> pl.DataFrame:
    """Edge list as a polars frame: src, dst (int64), type (int8), weight (float32)."""
    ei = data.edge_index.numpy()
    return pl.DataFrame(
        {
            "src": ei[0].astype(np.int64),
            "dst": ei[1].astype(np.int64),
            "type": data.edge_type.numpy().astype(np.int8),
            "weight": data.edge_weight.numpy().astype(np.float32),
        }
    )


def write_edges_parquet(data: Data, path: str | Path) -> None:
    """Write the edge list (src, dst, type, weight) to parquet; the caller makes it atomic."""
    edges_frame(data).write_parquet(str(path))
