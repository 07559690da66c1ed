"""Baselines on the same graph and features as ASIGN, so the comparison is fair.

Every baseline returns an [N, G] array over all spots of the stack; rows of measured
spots hold the measured values (only unmeasured sections are ever evaluated).

- ``mean``: the measured section's mean profile everywhere.
- ``overlap``: label propagation on intra-section + overlap edges only (paper's "Overlap").
- ``similarity``: label propagation on intra-section + similarity edges only.
- ``gauss_knn``: registration only: Gaussian-weighted k nearest measured spots in the
  common frame's xy (ignores z; sigma defaults to half the measured spot pitch).
- ``image_2d``: ridge regression from spot embeddings, fitted on the measured section
  (regularisation chosen by generalised cross-validation).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from asign_assets.graph.edge_types import EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY
from asign_assets.graph.propagation import label_propagation
from asign_assets.stats.ridge import fit_ridge



def _edge_subset(graph, types: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    et = graph.edge_type
    keep = torch.zeros_like(et, dtype=torch.bool)
    for t in types:
        keep |= et == t
    w = graph.edge_weight if getattr(graph, "edge_weight", None) is not None else torch.ones(et.numel())
    return graph.edge_index[:, keep], w[keep]


def _y_full(num_nodes: int, y_measured: np.ndarray, measured_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.zeros(num_nodes, y_measured.shape[1])
    y[torch.as_tensor(measured_idx)] = torch.as_tensor(y_measured, dtype=torch.float32)
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[torch.as_tensor(measured_idx)] = True
    return y, mask


def propagate_types(graph, y_measured: np.ndarray, measured_idx: np.ndarray, types: tuple[int, ...], iters: int = 20) -> np.ndarray:
    """Label propagation restricted to the given edge types."""
    ei, w = _edge_subset(graph, types)
    y, mask = _y_full(int(graph.num_nodes), y_measured, measured_idx)
    return label_propagation(ei, w, int(graph.num_nodes), y, mask, iters=iters).numpy()


def gauss_knn(
    pos_xy: np.ndarray, y_measured: np.ndarray, measured_idx: np.ndarray, k: int = 8, sigma: float | None = None,
    chunk: int = 8192,
) -> np.ndarray:
    """Gaussian-weighted mean of the k nearest measured spots in the common frame's xy.

    Queries run in chunks of ``chunk`` spots so the [spots, k, genes] gather stays small
    (at 100k spots x 8 x 250 genes it would be 1.6 GB in one piece).
    """
    pos_xy = np.asarray(pos_xy, np.float64)
    src = pos_xy[measured_idx]
    ym = np.asarray(y_measured, np.float32)
    tree = cKDTree(src)
    if sigma is None:
        d1, _ = tree.query(src, k=min(2, len(src)))
        d1 = d1.reshape(len(src), -1)
        sigma = 0.5 * float(np.median(d1[:, -1])) if d1.shape[1] > 1 else 1.0
    sigma = max(float(sigma), 1e-9)
    k = min(k, len(src))
    out = np.empty((len(pos_xy), ym.shape[1]), np.float32)
    for a in range(0, len(pos_xy), chunk):
        d, j = tree.query(pos_xy[a : a + chunk], k=k)
        d, j = d.reshape(-1, k), j.reshape(-1, k)
        # subtract the nearest distance so far-away spots still get a proper weighted mean
        w = np.exp(-((d**2 - d[:, :1] ** 2) / (2 * sigma**2))).astype(np.float32)
        w /= w.sum(1, keepdims=True)
        out[a : a + chunk] = np.einsum("nk,nkg->ng", w, ym[j])
    return out


def run_baselines(
    graph,
    spot_emb: np.ndarray,
    y_measured: np.ndarray,
    measured_idx: np.ndarray,
    iters: int = 20,
    knn_k: int = 8,
    knn_sigma_um: float | None = None,
) -> dict[str, np.ndarray]:
    """All baselines as [N, G] float32 arrays; measured rows keep their measured values."""
    y_measured = np.asarray(y_measured, np.float32)
    measured_idx = np.asarray(measured_idx, np.int64)
    n = int(graph.num_nodes)
    emb = np.asarray(spot_emb, np.float32)
    out: dict[str, np.ndarray] = {}
    out["mean"] = np.broadcast_to(y_measured.mean(0), (n, y_measured.shape[1])).astype(np.float32)
    out["overlap"] = propagate_types(graph, y_measured, measured_idx, (EDGE_INTRA, EDGE_OVERLAP), iters)
    out["similarity"] = propagate_types(graph, y_measured, measured_idx, (EDGE_INTRA, EDGE_SIMILARITY), iters)
    out["gauss_knn"] = gauss_knn(graph.pos[:, :2].numpy(), y_measured, measured_idx, k=knn_k, sigma=knn_sigma_um)
    out["image_2d"] = fit_ridge(emb[measured_idx], y_measured).predict(emb)
    for v in out.values():
        v[measured_idx] = y_measured
    return {k: v.astype(np.float32) for k, v in out.items()}
