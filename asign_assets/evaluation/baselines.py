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

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from asign_assets.graph.edge_types import EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY
from asign_assets.evaluation.metrics import gene_pcc
from asign_assets.graph.propagation import label_propagation



@dataclass
class Ridge:
    """Standardised ridge regression; ``loo`` holds leave-one-out fits of the training rows."""

    mu_x: np.ndarray
    sd_x: np.ndarray
    mu_y: np.ndarray
    coef: np.ndarray  # [D, G]
    lam: float
    loo: np.ndarray  # [n, G]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (((np.asarray(X, np.float64) - self.mu_x) / self.sd_x) @ self.coef + self.mu_y).astype(np.float32)


@dataclass(frozen=True)
class _RidgeDesign:
    """Standardised design matrix and its thin SVD, shared by every target fitted on it."""

    mu_x: np.ndarray
    sd_x: np.ndarray
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray) -> "_RidgeDesign":
        X = np.asarray(X, np.float64)
        mu_x, sd_x = X.mean(0), X.std(0)
        sd_x = np.where(sd_x > 1e-8, sd_x, 1.0)
        u, s, vt = np.linalg.svd((X - mu_x) / sd_x, full_matrices=False)
        return cls(mu_x, sd_x, u, s, vt)

    def fit(self, Y: np.ndarray, lambdas: np.ndarray | None = None) -> Ridge:
        """Ridge of ``Y`` with the penalty picked by GCV over a log grid (relative to the top
        singular value²). The GCV residual is computed in the SVD basis,
        ``|Yc|² - sum_k (2 f_k - f_k²) |U_k' Yc|²``, so the grid costs O(D G), not O(n D G)."""
        Y = np.asarray(Y, np.float64)
        U, s = self.u, self.s
        s2 = s**2
        grid = np.logspace(-3, 2, 16) * (s2.max() if s2.size else 1.0) if lambdas is None else np.asarray(lambdas)
        mu_y = Y.mean(0)
        Yc = Y - mu_y
        UtY = U.T @ Yc
        n = Y.shape[0]
        ss_y, ss_k = float((Yc**2).sum()), (UtY**2).sum(1)
        best = (np.inf, float(grid[0]))
        for lam in grid:
            f = s2 / (s2 + lam)
            rss = max(ss_y - float(((2.0 * f - f**2) * ss_k).sum()), 0.0)
            gcv = rss / max(n - float(f.sum()), 1e-6) ** 2
            if gcv < best[0]:
                best = (gcv, float(lam))
        lam = best[1]
        f = s2 / (s2 + lam)
        coef = self.vt.T @ ((s / (s2 + lam))[:, None] * UtY)
        fit = U @ (f[:, None] * UtY)
        h = ((U**2) * f).sum(1) + 1.0 / n  # hat diagonal incl. the intercept
        loo = Yc - (Yc - fit) / np.clip(1.0 - h, 1e-3, None)[:, None] + mu_y
        return Ridge(self.mu_x, self.sd_x, mu_y, coef, lam, loo.astype(np.float32))


def fit_ridge(X: np.ndarray, Y: np.ndarray, lambdas: np.ndarray | None = None) -> Ridge:
    """Standardised ridge with the penalty picked by GCV (:meth:`_RidgeDesign.fit`)."""
    return _RidgeDesign.of(X).fit(Y, lambdas)


def choose_ridge_rank(X: np.ndarray, Y: np.ndarray, max_rank: int = 30) -> tuple[int, list[float]]:
    """Rank of the targets for :func:`fit_reduced_rank_ridge`, chosen on ``(X, Y)`` alone.

    For each rank r the ridge is fitted to the rank-r reconstruction of ``Y`` and its
    leave-one-out predictions are scored against the raw ``Y`` (per-gene PCC); rank 0 is
    the plain ridge. Returns the best rank and the score per rank. The design's SVD is
    computed once for all ranks.
    """
    from asign_assets.stats.lowrank import low_rank

    Y = np.asarray(Y, np.float64)
    max_rank = int(min(max_rank, min(Y.shape) - 1))
    full = low_rank(Y, max(max_rank, 0))
    design = _RidgeDesign.of(X)
    scores = [gene_pcc(design.fit(Y).loo, Y)]
    for r in range(1, max_rank + 1):
        yr = full.mean + (full.u[:, :r] * full.s[:r]) @ full.vt[:r]
        scores.append(gene_pcc(design.fit(yr).loo, Y))
    return int(np.argmax(scores)), scores


def fit_reduced_rank_ridge(X: np.ndarray, Y: np.ndarray, rank: int) -> Ridge:
    """Ridge fitted to the rank-``rank`` reconstruction of ``Y`` (0: to ``Y`` itself).

    Per-spot counts are mostly counting noise; regressing the shared expression
    programmes instead of every gene's noise lowers the variance of the coefficients
    (reduced-rank regression). ``loo`` holds leave-one-out fits of the denoised targets.
    """
    from asign_assets.stats.lowrank import low_rank

    if rank <= 0:
        return fit_ridge(X, Y)
    return fit_ridge(X, low_rank(Y, rank).reconstruct())


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
