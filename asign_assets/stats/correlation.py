"""Correlation, standardisation and ranks: the one definition of each, shared by training
(losses on torch tensors), the metrics, the encoders and the volume check."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def rowwise_pcc(a, b):
    """PCC of each row of ``a`` with the same row of ``b`` (last axis); 0 for a constant row.

    The one definition of PCC in the package. Written with operators that numpy arrays
    and torch tensors share, so training's loss calls it on tensors (differentiable, in
    their dtype) and the metrics below call it on float64 arrays.
    """
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    prod = (a * a).sum(axis=-1) * (b * b).sum(axis=-1)
    scale = max(1.0, abs(num).max().item()) if num.shape[0] else 1.0
    ok = prod > (_EPS * scale) ** 2
    # 1e-30 under the root (float32 holds it; it moves a kept row's root by < 1e-6): a constant
    # row (prod 0) must not give 0/0 in torch's backward of sqrt, which would NaN every gradient
    den = (prod + 1e-30) ** 0.5
    r = num / (den + ~ok)
    r[~ok] = 0.0
    return r


def standardise(x, mean=None, sd=None):
    """Columns of ``x`` z-scored (by ``mean``/``sd`` when given, else its own column mean and
    population SD); a column with SD <= 1e-12 is only centred. Works on numpy arrays and
    torch tensors alike (the one definition of per-gene / per-feature standardisation)."""
    mu = x.mean(axis=0) if mean is None else mean
    if sd is None:
        sd = ((x - mu) ** 2).mean(axis=0) ** 0.5
    small = sd <= _EPS
    return (x - mu) / (sd * ~small + small)


def average_ranks(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Ranks (1-based, ties averaged) along ``axis``, among the non-NaN entries; NaN stays NaN.

    ``scipy.stats.rankdata`` gives the same ranks but spends ~7x the sort itself on ties and
    NaN handling: one argsort per line, then a run-length pass over the sorted values
    (the uncertainty metrics and the volume check rank millions of values).
    """
    a = np.moveaxis(np.atleast_1d(np.asarray(x, np.float64)), axis, -1)
    shape = a.shape
    a = np.ascontiguousarray(a.reshape(int(np.prod(shape[:-1])), shape[-1]))
    n = a.shape[1]
    out = np.full(a.shape, np.nan)
    if n:
        order = np.argsort(a, axis=1)  # NaN sorts last; order within a tie does not matter
        s = np.take_along_axis(a, order, 1)
        starts = np.ones(a.shape, dtype=bool)  # a run of equal values starts here (and every line)
        starts[:, 1:] = s[:, 1:] != s[:, :-1]  # NaN != NaN: every NaN is its own run
        flat = starts.ravel()
        start = np.flatnonzero(flat)
        length = np.diff(np.append(start, flat.size))
        avg = (start % n) + (length - 1) / 2.0 + 1.0  # mean 1-based position of each run
        ranks = avg[np.cumsum(flat) - 1].reshape(a.shape)
        ranks[np.isnan(s)] = np.nan
        np.put_along_axis(out, order, ranks, 1)
    return np.moveaxis(out.reshape(shape), -1, axis).reshape(np.shape(x))


def gene_pcc_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PCC across spots for each gene (0 where either side is constant)."""
    return rowwise_pcc(np.asarray(pred, np.float64).T, np.asarray(truth, np.float64).T)


def gene_pcc(pred: np.ndarray, truth: np.ndarray, genes: np.ndarray | None = None) -> float:
    """Mean over genes (optionally a subset of gene indices) of the PCC across spots."""
    r = gene_pcc_per_gene(pred, truth)
    if genes is not None:
        r = r[np.asarray(genes, dtype=np.int64)]
    return float(r.mean()) if r.size else float("nan")
