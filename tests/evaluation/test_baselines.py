from __future__ import annotations

import numpy as np
import pytest
import torch

from asign_assets.evaluation.baselines import gauss_knn, run_baselines

from asign_assets.stats.ridge import fit_ridge
from asign_assets.stats.correlation import gene_pcc

from _stacks import make_stack


def test_run_baselines_shapes_and_sanity():
    g, emb, remb, gemb, y = make_stack(n_sections=3, side=8, noise=0.2)
    meas = torch.nonzero(g.section == 0).flatten().numpy()
    out = run_baselines(g, emb.numpy(), y[meas].numpy(), meas)
    assert set(out) == {"mean", "overlap", "similarity", "gauss_knn", "image_2d"}
    ev = (g.section != 0).numpy()
    for k, v in out.items():
        assert v.shape == tuple(y.shape) and v.dtype == np.float32
        np.testing.assert_array_equal(v[meas], y[meas].numpy())
    assert gene_pcc(out["mean"][ev], y.numpy()[ev]) == 0.0
    for k in ("overlap", "gauss_knn", "image_2d"):
        assert gene_pcc(out[k][ev], y.numpy()[ev]) > 0.5, k


def test_gauss_knn_hand():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 0.1], [5.0, 0.0]])
    y = np.array([[1.0], [3.0]])
    out = gauss_knn(xy, y, np.array([0, 1]), k=2, sigma=1.0)
    assert out[0, 0] == np.float32(1.0) or abs(out[0, 0] - 1.0) < 1e-6
    assert abs(out[2, 0] - 1.0) < 1e-6
    assert abs(out[3, 0] - 2.0) < 1e-6  # equidistant -> mean


def test_ridge_loo_matches_refit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(25, 4))
    Y = X @ rng.normal(size=(4, 2)) + 0.1 * rng.normal(size=(25, 2))
    r = fit_ridge(X, Y)
    # LOO value for row 0 equals the prediction of a ridge refitted without it (same lambda,
    # same standardisation is approximate, so compare loosely)
    r0 = fit_ridge(X[1:], Y[1:], lambdas=np.array([r.lam]))
    assert np.allclose(r.loo[0], r0.predict(X[:1])[0], atol=0.15)
    assert np.corrcoef(r.predict(X)[:, 0], Y[:, 0])[0, 1] > 0.95


def test_gauss_knn_chunked_equals_one_piece():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1000, (500, 2))
    meas = np.arange(0, 500, 3)
    y = rng.normal(size=(len(meas), 7)).astype(np.float32)
    a = gauss_knn(xy, y, meas, k=5, sigma=40.0, chunk=37)
    b = gauss_knn(xy, y, meas, k=5, sigma=40.0, chunk=10_000)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # a measured spot's nearest measured spot is itself: with a tiny sigma it keeps its value
    c = gauss_knn(xy, y, meas, k=5, sigma=1e-3, chunk=64)
    np.testing.assert_allclose(c[meas], y, rtol=1e-5)


def test_reduced_rank_ridge_beats_plain_ridge_on_noisy_low_rank_targets():
    """Rank chosen on the training rows alone; predicts the clean signal of new rows better."""
    from asign_assets.stats.ridge import choose_ridge_rank, fit_reduced_rank_ridge

    rng = np.random.default_rng(0)
    n, d, g, r = 150, 40, 200, 3
    X = rng.normal(size=(2 * n, d))
    W = rng.normal(size=(d, r)) @ rng.normal(size=(r, g)) * 0.15
    clean = X @ W
    Y = clean + rng.normal(size=clean.shape) * 2.0
    rank, scores = choose_ridge_rank(X[:n], Y[:n])
    assert 1 <= rank <= 6
    assert scores[rank] > scores[0]
    plain = fit_ridge(X[:n], Y[:n]).predict(X[n:])
    reduced = fit_reduced_rank_ridge(X[:n], Y[:n], rank).predict(X[n:])
    assert np.mean((reduced - clean[n:]) ** 2) < 0.8 * np.mean((plain - clean[n:]) ** 2)
    np.testing.assert_array_equal(fit_reduced_rank_ridge(X[:n], Y[:n], 0).predict(X[n:]), plain)


def test_ridge_gcv_in_svd_basis_matches_explicit_residuals():
    """The closed-form GCV picks the penalty the explicit residual sum would pick."""
    from asign_assets.stats.ridge import _RidgeDesign

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 8))
    Y = X[:, :2] @ rng.normal(size=(2, 5)) + rng.normal(size=(120, 5))
    d = _RidgeDesign.of(X)
    s2 = d.s**2
    grid = np.logspace(-3, 2, 16) * s2.max()
    Yc = Y - Y.mean(0)
    gcv = [((Yc - d.u @ ((s2 / (s2 + lam))[:, None] * (d.u.T @ Yc))) ** 2).sum() / (120 - (s2 / (s2 + lam)).sum()) ** 2 for lam in grid]
    assert d.fit(Y).lam == pytest.approx(float(grid[int(np.argmin(gcv))]))
