"""Low-rank denoising of measured expression, with the rank chosen on the measured spots.

Most of one spot's per-gene variance in log counts is counting noise; what propagates
usefully to another section is the part shared across genes (expression programmes).
:func:`choose_rank` picks the rank by bi-cross-validation (Owen & Perry 2009, "Bi-cross-
validation of the SVD and the nonnegative matrix factorization", Ann. Appl. Stat. 3:564):
hold out a block of rows x columns, predict it from the other three blocks through the
rank-r pseudo-inverse of the opposite block, and take the rank with the least held-out
error. Nothing but the matrix it is given enters, so the choice sees measured spots only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LowRank:
    """Column means, rank and the truncated SVD of the centred matrix."""

    mean: np.ndarray  # [G]
    rank: int
    u: np.ndarray  # [n, rank]
    s: np.ndarray  # [rank]
    vt: np.ndarray  # [rank, G]
    bcv_error: np.ndarray  # [max_rank + 1] mean held-out squared error per rank (0 = means only)

    def reconstruct(self) -> np.ndarray:
        return (self.mean + (self.u * self.s) @ self.vt).astype(np.float32)


def _folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), k)


def bcv_errors(y: np.ndarray, max_rank: int, folds: int = 2, seed: int = 0) -> np.ndarray:
    """Mean squared held-out error of the rank-r BCV prediction, r = 0..max_rank.

    For held-out rows I and columns J: ``A ~ B D_r^+ C`` with ``B = Y[I, ~J]``,
    ``C = Y[~I, J]``, ``D = Y[~I, ~J]`` (columns centred on the ~I rows). The prediction
    is a sum of rank-one terms, so all ranks come from one SVD of D per block.
    """
    y = np.asarray(y, np.float64)
    n, g = y.shape
    rng = np.random.default_rng(seed)
    rows, cols = _folds(n, folds, rng), _folds(g, folds, rng)
    err = np.zeros(max_rank + 1)
    total = 0
    for ri in rows:
        rmask = np.zeros(n, bool)
        rmask[ri] = True
        mu = y[~rmask].mean(0)
        yc = y - mu
        for cj in cols:
            cmask = np.zeros(g, bool)
            cmask[cj] = True
            a, b = yc[np.ix_(rmask, cmask)], yc[np.ix_(rmask, ~cmask)]
            c, d = yc[np.ix_(~rmask, cmask)], yc[np.ix_(~rmask, ~cmask)]
            u, s, vt = np.linalg.svd(d, full_matrices=False)
            k = min(max_rank, int((s > s[0] * 1e-8).sum()) if s.size else 0)
            # rank-one terms (B v_i)(u_i^T C) / s_i, accumulated over i
            terms = (b @ vt[:k].T) / s[:k]  # [|I|, k]
            left = u[:, :k].T @ c  # [k, |J|]
            pred = np.zeros_like(a)
            e = [float((a**2).sum())]
            for i in range(k):
                pred += np.outer(terms[:, i], left[i])
                e.append(float(((a - pred) ** 2).sum()))
            e += [np.inf] * (max_rank + 1 - len(e))
            err += np.asarray(e)
            total += a.size
    return err / max(total, 1)


def choose_rank(y: np.ndarray, max_rank: int = 30, folds: int = 2, seed: int = 0) -> tuple[int, np.ndarray]:
    """(rank with the least BCV error, the error curve); rank 0 means "the mean profile"."""
    n, g = np.asarray(y).shape
    max_rank = int(max(0, min(max_rank, n // folds - 1, g // folds - 1)))
    err = bcv_errors(y, max_rank, folds, seed)
    return int(np.argmin(err)), err


def low_rank(y: np.ndarray, rank: int | None = None, max_rank: int = 30, seed: int = 0) -> LowRank:
    """Truncated SVD of ``y`` (rows = spots) at ``rank``, or at the BCV rank when None."""
    y = np.asarray(y, np.float64)
    err = np.zeros(0)
    if rank is None:
        rank, err = choose_rank(y, max_rank, seed=seed)
    mean = y.mean(0)
    u, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    rank = int(min(rank, s.size))
    return LowRank(mean, rank, u[:, :rank], s[:rank], vt[:rank], err)
