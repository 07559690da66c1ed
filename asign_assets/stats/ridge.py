"""Ridge regression from image features to expression, with the penalty chosen by generalised
cross-validation, and its reduced-rank form (targets projected on their top components first).
Used by the image-only baseline and as the model's image prior."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asign_assets.stats.correlation import gene_pcc


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
