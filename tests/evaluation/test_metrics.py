from __future__ import annotations

import numpy as np
import pytest

from asign_assets.evaluation.metrics import (
    METRICS, evaluate_sections, gene_pcc, hvg_indices, mae, markdown_table, mse, spot_pcc, spot_pcc_z,
)


def test_hand_values():
    truth = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 0.0], [0.0, 1.0, 5.0]])
    pred = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
    assert mse(pred, truth) == pytest.approx((1 + 1 + 4 + 1) / 9)
    assert mae(pred, truth) == pytest.approx((1 + 1 + 2 + 1) / 9)
    r0 = np.corrcoef(pred[0], truth[0])[0, 1]
    r1 = np.corrcoef(pred[1], truth[1])[0, 1]
    assert spot_pcc(pred, truth) == pytest.approx((r0 + r1 + 1.0) / 3)
    rg = [np.corrcoef(pred[:, g], truth[:, g])[0, 1] for g in range(3)]
    assert gene_pcc(pred, truth) == pytest.approx(np.mean(rg))
    # row 0: (1,2,4) vs (1,2,3): r = 0.9819805...
    assert r0 == pytest.approx(0.9819805060619657)


def test_constant_prediction_scores_zero():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(20, 6))
    const = np.tile(truth.mean(0), (20, 1))
    assert gene_pcc(const, truth) == 0.0
    assert not np.isnan(gene_pcc(const, truth))
    # the paper's spot_pcc is NOT zero for a constant profile when gene means differ
    truth2 = truth + np.arange(6) * 3
    assert spot_pcc(np.tile(truth2.mean(0), (20, 1)), truth2) > 0.9
    # ... while z-scoring by the measured mean removes that effect
    assert spot_pcc_z(np.tile(truth2.mean(0), (20, 1)), truth2, truth2.mean(0), truth2.std(0)) == 0.0


def test_hvg_and_evaluate_sections():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(30, 60)) * np.linspace(0.1, 3, 60)
    hv = hvg_indices(y, 50)
    assert len(hv) == 50 and set(range(10)).isdisjoint(hv[-5:])
    assert 59 in hv[:5]
    truth = rng.normal(size=(40, 60))
    secs = np.array(["a"] * 15 + ["b"] * 25)
    preds = {"perfect": truth.copy(), "mean": np.zeros_like(truth)}
    df = evaluate_sections(preds, truth, secs, truth.mean(0), truth.std(0), hv)
    assert set(df["metric"].unique().to_list()) == set(METRICS) | {"genes_scored"}
    assert set(df["section"].unique().to_list()) == {"a", "b", "pooled"}
    get = lambda me, s, m: df.filter((df["method"] == me) & (df["section"] == s) & (df["metric"] == m))["value"][0]
    assert get("perfect", "pooled", "gene_pcc") == pytest.approx(1.0)
    assert get("mean", "pooled", "gene_pcc") == 0.0
    # pooled = unweighted mean of per-section values
    assert get("mean", "pooled", "mse") == pytest.approx((get("mean", "a", "mse") + get("mean", "b", "mse")) / 2)
    md = markdown_table(df)
    assert md.splitlines()[0].startswith("| method | mse")
    assert "| perfect | 0.000 | 0.000 | 1.000" in md and md.rstrip().endswith("| 60 |")


def test_unmeasured_genes_are_skipped_not_zero():
    """A gene a section's panel lacks (NaN truth) is left out of every metric of that section."""
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(30, 8))
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    secs = np.array(["a"] * 12 + ["b"] * 18)
    t_nan = truth.copy()
    t_nan[secs == "b", 5:] = np.nan  # section b did not measure genes 5..7
    hv = np.array([6, 1, 2])
    df = evaluate_sections({"p": pred}, t_nan, secs, truth.mean(0), truth.std(0), hv)
    get = lambda s, m: df.filter((df["section"] == s) & (df["metric"] == m))["value"][0]
    b = secs == "b"
    assert get("a", "genes_scored") == 8 and get("b", "genes_scored") == 5 and get("pooled", "genes_scored") == 8
    assert get("b", "gene_pcc") == pytest.approx(gene_pcc(pred[b][:, :5], truth[b][:, :5]))
    assert get("b", "mse") == pytest.approx(mse(pred[b][:, :5], truth[b][:, :5]))
    assert get("b", "spot_pcc") == pytest.approx(spot_pcc(pred[b][:, :5], truth[b][:, :5]))
    # HVGs restricted to the scored ones (6 is unmeasured on b): genes 1 and 2
    assert get("b", "gene_pcc_hvg50") == pytest.approx(gene_pcc(pred[b][:, [1, 2]], truth[b][:, [1, 2]]))
    assert get("a", "gene_pcc_hvg50") == pytest.approx(gene_pcc(pred[~b][:, [6, 1, 2]], truth[~b][:, [6, 1, 2]]))
    # scoring the unmeasured genes as zero would give a different (wrong) number
    t_zero = np.where(np.isnan(t_nan), 0.0, t_nan)
    wrong = evaluate_sections({"p": pred}, t_zero, secs, truth.mean(0), truth.std(0), hv)
    assert wrong.filter((wrong["section"] == "b") & (wrong["metric"] == "gene_pcc"))["value"][0] != pytest.approx(get("b", "gene_pcc"))
    assert "genes_scored" in markdown_table(df).splitlines()[0]


def test_partially_measured_gene_is_an_error():
    truth = np.ones((4, 3))
    truth[0, 1] = np.nan
    with pytest.raises(ValueError, match="some spots"):
        evaluate_sections({"p": np.ones((4, 3))}, truth, np.array(["a"] * 4), np.zeros(3), np.ones(3), np.array([0]))


def test_uncertainty_metrics_ignore_nan_truth_and_measure_ranking_and_coverage():
    from asign_assets.evaluation.metrics import Z80, coverage_80, gene_pcc_finite, unc_spearman, unc_spearman_all, uncertainty_table

    rng = np.random.default_rng(0)
    n, g = 400, 6
    sd = rng.uniform(0.1, 2.0, size=(n, g))
    pred = rng.normal(size=(n, g))
    truth = pred + rng.normal(size=(n, g)) * sd  # errors drawn with the stated SD
    # a calibrated Gaussian SD: ~80% coverage, positive rank correlation with |error|
    assert coverage_80(sd, pred, truth) == pytest.approx(0.8, abs=0.03)
    assert unc_spearman(sd, pred, truth) > 0.3 and unc_spearman_all(sd, pred, truth) > 0.3
    # reversed uncertainty ranks errors the wrong way; half the SD covers less
    assert unc_spearman(1.0 / sd, pred, truth) < -0.3
    assert coverage_80(0.5 * sd, pred, truth) < 0.6
    # NaN truth entries (genes a section did not measure) are ignored, not counted as misses
    t2 = truth.copy()
    t2[:, 0] = np.nan
    assert coverage_80(sd, pred, t2) == pytest.approx(float((np.abs(pred - truth) <= Z80 * sd)[:, 1:].mean()))
    assert unc_spearman(sd, pred, t2) == pytest.approx(unc_spearman(sd[:, 1:], pred[:, 1:], truth[:, 1:]))
    r = gene_pcc_finite(pred, t2)
    assert np.isnan(r[0]) and r[1] == pytest.approx(np.corrcoef(pred[:, 1], truth[:, 1])[0, 1])
    sec = np.repeat(["a", "b"], n // 2)
    tab = uncertainty_table(sd, pred, truth, sec)
    assert tab.columns == ["method", "section", "metric", "value"]
    assert set(tab["section"]) == {"a", "b", "pooled"} and tab.height == 9
    pooled = tab.filter((tab["section"] == "pooled") & (tab["metric"] == "coverage_80"))["value"][0]
    per = tab.filter((tab["section"] != "pooled") & (tab["metric"] == "coverage_80"))["value"].mean()
    assert pooled == pytest.approx(per)


def test_rowwise_pcc_gradient_is_finite_for_a_constant_target_row():
    """Training's loss calls rowwise_pcc on tensors: a gene constant over the loss spots (all
    zero in a sparse Visium batch) scores 0 and must not turn every gradient into NaN."""
    import torch

    from asign_assets.stats.correlation import rowwise_pcc

    pred = torch.randn(5, 30, requires_grad=True)
    y = torch.randn(5, 30)
    y[2] = 1.0
    r = rowwise_pcc(pred, y)
    assert float(r[2].detach()) == 0.0
    r.mean().backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[0].abs().sum()) > 0


@pytest.mark.parametrize("shape,axis", [((300, 7), 0), ((20, 150), 1), ((500,), 0), ((4, 5, 6), 1), ((0, 3), 0)])
def test_average_ranks_equal_scipy_with_ties_and_nan(shape, axis):
    from scipy.stats import rankdata

    from asign_assets.stats.correlation import average_ranks

    rng = np.random.default_rng(3)
    x = rng.integers(0, 12, shape).astype(float)  # many ties
    x[rng.random(shape) < 0.15] = np.nan
    got = average_ranks(x, axis)
    assert got.shape == x.shape
    if x.size:
        np.testing.assert_allclose(got, rankdata(x, axis=axis, nan_policy="omit"), equal_nan=True)
