"""Low-rank denoising: bi-cross-validated rank on synthetic low-rank + noise matrices."""

from __future__ import annotations

import numpy as np
import pytest

from asign_assets.stats.lowrank import bcv_errors, choose_rank, low_rank


def _low_rank_plus_noise(rank: int, n: int = 180, g: int = 120, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, g)) if rank else np.zeros((n, g))
    return signal + 3.0, signal + 3.0 + noise * rng.normal(size=(n, g))


@pytest.mark.parametrize("rank", [0, 2, 5, 9])
def test_bcv_recovers_the_rank(rank):
    _, y = _low_rank_plus_noise(rank, seed=rank)
    chosen, err = choose_rank(y)
    assert chosen == rank
    assert err[rank] == err.min()


def test_reconstruction_is_closer_to_the_signal_than_the_noisy_matrix():
    signal, y = _low_rank_plus_noise(4, noise=1.0)
    lr = low_rank(y)
    assert lr.rank == 4
    rec = lr.reconstruct()
    assert np.mean((rec - signal) ** 2) < 0.2 * np.mean((y - signal) ** 2)
    # an explicit rank is used as given; rank 0 is the column means
    np.testing.assert_allclose(low_rank(y, 0).reconstruct(), np.tile(y.mean(0), (len(y), 1)), rtol=1e-5)


def test_bcv_error_of_rank_zero_is_the_held_out_variance():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(60, 40))
    err = bcv_errors(y, 3, folds=2, seed=0)
    # rank 0 predicts every held-out entry by the other rows' column mean
    assert err[0] == pytest.approx(np.var(y) * 1.0, rel=0.15)
    assert np.all(np.diff(err[:4]) > 0)  # pure noise: every extra rank fits noise
