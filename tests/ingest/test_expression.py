from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from asign_assets.errors import InputError
from asign_assets.ingest.expression import (
    ExpressionParams,
    MeasuredCounts,
    build_expression,
    build_expression_sections,
    normalise,
    normalise_to_genes,
    select_genes,
)


def test_normalise_hand_example():
    c = sp.csr_matrix(np.array([[1, 3, 0, 6], [0, 0, 0, 0]], dtype=float))
    x = normalise(c, "log1p_cp10k")
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0], np.log1p([1000.0, 3000.0, 0.0, 6000.0]), rtol=1e-6)
    np.testing.assert_array_equal(x[1], 0.0)
    s = normalise(c, "stnet")
    # (c + 1) / sum(c + 1) = (2, 4, 1, 7) / 14
    np.testing.assert_allclose(s[0], np.log(np.array([2, 4, 1, 7]) / 14.0), rtol=1e-6)
    np.testing.assert_allclose(s[1], np.log(0.25), rtol=1e-6)


def test_select_genes_mean_and_hvg():
    X = np.array([[1.0, 5.0, 2.0, 0.0], [1.0, 3.0, 8.0, 0.0]])
    genes = np.array(["a", "b", "c", "d"])
    idx = select_genes(X, genes, ExpressionParams(n_genes=2))
    assert idx.tolist() == [2, 1]  # means 1, 4, 5, 0
    hv = select_genes(X, genes, ExpressionParams(n_genes=1, selection="hvg"))
    assert hv.tolist() == [2]  # dispersion 9/5 beats 1/4


def _counts(n=30, g=8, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(30, size=(n, g)).astype(float))


def test_build_expression_drops_and_selects():
    c = _counts().toarray()
    c[:3] = 0
    c[:3, 0] = 5  # three spots below 100 counts
    ids = np.array([f"{i}x1" for i in range(30)])
    genes = np.array([f"g{i}" for i in range(8)])
    ad, info = build_expression(sp.csr_matrix(c), ids, genes, ExpressionParams(n_genes=5), source="C2.tsv.gz")
    assert info["n_spots_dropped"] == 3 and ad.n_obs == 27 and ad.n_vars == 5
    assert ad.X.dtype == np.float32
    assert list(ad.obs_names[:2]) == ["3x1", "4x1"]
    # X is normalised on all genes, then subset; layers['counts'] keeps raw counts
    full = normalise(sp.csr_matrix(c[3:]), "log1p_cp10k")
    cols = [list(genes).index(g) for g in ad.var_names]
    np.testing.assert_allclose(ad.X, full[:, cols], rtol=1e-6)
    np.testing.assert_array_equal(ad.layers["counts"].toarray(), c[3:][:, cols])
    assert ad.uns["normalisation"]["normalisation"] == "log1p_cp10k"
    # normalise_to_genes reproduces X for the same counts
    np.testing.assert_allclose(normalise_to_genes(sp.csr_matrix(c[3:]), genes, ad.var_names), ad.X, rtol=1e-6)


def test_errors_name_the_file():
    c = _counts(n=10)
    with pytest.raises(InputError, match="C3.tsv.gz: only 10 spots"):
        build_expression(c, np.arange(10).astype(str), np.array([f"g{i}" for i in range(8)]), source="C3.tsv.gz")
    with pytest.raises(InputError, match="missing"):
        normalise_to_genes(c, np.array([f"g{i}" for i in range(8)]), np.array(["g1", "zz"]))
    z = normalise_to_genes(c, np.array([f"g{i}" for i in range(8)]), np.array(["g1", "zz"]), missing="zero")
    np.testing.assert_array_equal(z[:, 1], 0.0)


def test_normalise_to_genes_marks_unmeasured_genes_nan():
    c = sp.csr_matrix(np.arange(16, dtype=np.float32).reshape(2, 8) + 1)
    genes = np.array([f"g{i}" for i in range(8)])
    out = normalise_to_genes(c, genes, np.array(["g1", "zz", "g3"]), missing="nan")
    assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, [0, 2]]).all()
    np.testing.assert_allclose(out[:, [0, 2]], normalise_to_genes(c, genes, np.array(["g1", "g3"])), rtol=1e-6)


def test_several_sections_use_common_genes_each_normalised_on_its_own_panel():
    a = _counts(n=25, g=8, seed=1).toarray()
    b = _counts(n=30, g=6, seed=2).toarray()
    genes_a = np.array([f"g{i}" for i in range(8)])
    genes_b = np.array(["g7", "g5", "x1", "g1", "g3", "g0"])  # shares g0 g1 g3 g5 g7, in its own order
    b[:2] = 0  # two spots of B below min_counts
    b[:2, 0] = 3
    ids = np.array([f"{i}x1" for i in range(30)])  # the same spot ids in both sections
    parts = [MeasuredCounts("A", sp.csr_matrix(a), ids[:25], genes_a, "A.tsv"), MeasuredCounts("B", b, ids, genes_b, "B.tsv")]
    ad, info = build_expression_sections(parts, ExpressionParams(n_genes=5))
    assert sorted(ad.var_names) == ["g0", "g1", "g3", "g5", "g7"] and info["n_genes_in"] == 5
    assert ad.n_obs == 25 + 28 and info["n_spots_dropped"] == 2 and info["dropped_spot_ids"] == ["B:0x1", "B:1x1"]
    assert list(ad.obs_names[:2]) == ["A:0x1", "A:1x1"] and list(ad.obs_names[25:27]) == ["B:2x1", "B:3x1"]
    assert list(ad.obs["section"].unique()) == ["A", "B"] and ad.obs["spot_id"].iloc[25] == "2x1"
    assert list(ad.uns["sections"]) == ["A", "B"]
    # each section normalised on all of its own genes (library = its own total), then the common columns
    for name, counts, genes, rows in (("A", a, genes_a, slice(0, 25)), ("B", b[2:], genes_b, slice(25, None))):
        full = normalise(sp.csr_matrix(counts), "log1p_cp10k")
        cols = [list(genes).index(g) for g in ad.var_names]
        np.testing.assert_allclose(ad.X[rows], full[:, cols], rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(ad.layers["counts"][rows].toarray(), counts[:, cols])
    # genes are ranked by their mean over the spots of both sections
    means = np.asarray(ad.X).mean(0)
    assert np.all(np.diff(means) <= 1e-6)


def test_several_sections_with_too_few_common_genes_are_refused():
    a, b = _counts(g=8, seed=1), _counts(g=8, seed=2)
    genes_a = np.array([f"g{i}" for i in range(8)])
    genes_b = np.array([f"g{i}" for i in range(5, 13)])  # 3 in common
    parts = [MeasuredCounts("A", a, np.arange(30).astype(str), genes_a, "A.tsv"), MeasuredCounts("B", b, np.arange(30).astype(str), genes_b, "B.tsv")]
    with pytest.raises(InputError, match=r"B.tsv: the measured sections share only 3 gene names \(need at least 4\); panels: A: 8 genes \(A.tsv\), B: 8 genes \(B.tsv\)"):
        build_expression_sections(parts, ExpressionParams(n_genes=4))
    ad, _ = build_expression_sections(parts, ExpressionParams(n_genes=3))
    assert sorted(ad.var_names) == ["g5", "g6", "g7"]
