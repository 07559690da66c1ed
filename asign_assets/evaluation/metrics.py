"""Evaluation metrics for imputed sections.

Definitions (pred and truth are [spots, genes] normalised expression of one section):

- ``mse``, ``mae``: mean over all entries.
- ``spot_pcc``: PCC across genes for each spot, averaged over spots (the paper's metric;
  inflated by differences between gene means, so a constant mean profile already scores high).
- ``spot_pcc_z``: the same after z-scoring every gene with the *measured* section's per-gene
  mean and SD (``ref_mean``, ``ref_sd``), which removes the gene-mean effect.
- ``gene_pcc``: PCC across the spots of one section for each gene, averaged over genes.
- ``gene_pcc_hvg50``: ``gene_pcc`` over the 50 most variable genes of the measured section.

A constant vector (prediction or truth) has no defined correlation; it scores 0, never NaN.

Unmeasured genes: a truth entry that is NaN means the section's gene panel did not measure
that gene (differing Visium panels). A gene is scored on a section only when its truth is
finite at every evaluated spot of that section; every metric of that section, including
``spot_pcc`` (across the scored genes) and ``gene_pcc_hvg50`` (the HVGs that were scored),
uses only those genes. ``genes_scored`` records how many; an unmeasured gene never counts
as zero. A gene measured at some spots of a section but not others is an input error.

Uncertainty (``unc`` [spots, genes], an SD in expression units; only entries with finite
truth count, so genes a section did not measure are ignored):

- ``unc_spearman``: Spearman correlation across spots between ``unc`` and ``|pred - truth|``
  for each gene, averaged over genes (a gene with constant ``unc`` or error scores 0). Not
  inflated by genes with larger values having both larger errors and larger ``unc``.
- ``unc_spearman_all``: the same over all (spot, gene) entries pooled.
- ``coverage_80``: fraction of entries whose truth lies in the central 80% Gaussian interval
  ``pred +- 1.2816 unc`` (0.8 when calibrated).

Pooling (row ``section == 'pooled'``): every metric is the unweighted mean over sections of
its per-section value, so each section counts once whatever its number of spots (for
``gene_pcc`` this is the required mean of per-section gene PCCs). ``genes_scored`` pooled
is the number of genes scored on at least one section. A section with no scored gene
reports ``genes_scored = 0`` only and is left out of the pooled means.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from asign_assets.stats.correlation import _EPS, average_ranks, gene_pcc, rowwise_pcc, standardise

METRICS = ("mse", "mae", "spot_pcc", "spot_pcc_z", "gene_pcc", "gene_pcc_hvg50")
GENES_SCORED = "genes_scored"


def spot_pcc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over spots of the PCC across genes."""
    return float(rowwise_pcc(np.asarray(pred, np.float64), np.asarray(truth, np.float64)).mean())


def spot_pcc_z(pred: np.ndarray, truth: np.ndarray, ref_mean: np.ndarray, ref_sd: np.ndarray) -> float:
    """spot_pcc after z-scoring genes with the measured section's mean and SD."""
    ref_mean, ref_sd = np.asarray(ref_mean, np.float64), np.asarray(ref_sd, np.float64)
    return spot_pcc(standardise(np.asarray(pred, np.float64), ref_mean, ref_sd), standardise(np.asarray(truth, np.float64), ref_mean, ref_sd))


def mse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - truth) ** 2))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def hvg_indices(y_measured: np.ndarray, n: int = 50) -> np.ndarray:
    """The ``n`` genes of highest variance across the measured section's spots."""
    var = np.asarray(y_measured, np.float64).var(axis=0)
    return np.lexsort((np.arange(len(var)), -var))[: min(n, len(var))]


Z80 = 1.2815515655446004  # standard-normal quantile 0.9: a central 80% interval


def _ranks_finite(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Column-wise average ranks of ``x`` over entries where ``ok``; NaN elsewhere."""
    return average_ranks(np.where(ok, x, np.nan), axis=0)


def unc_spearman(unc: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over genes of the Spearman correlation (across spots with finite truth) of
    uncertainty and absolute error."""
    truth = np.asarray(truth, np.float64)
    ok = np.isfinite(truth)
    err = np.abs(np.asarray(pred, np.float64) - truth)
    ru, re = _ranks_finite(np.asarray(unc, np.float64), ok), _ranks_finite(err, ok)
    n = ok.sum(0)
    keep = n >= 2
    if not keep.any():
        return float("nan")
    ru, re = ru[:, keep], re[:, keep]
    ru = np.where(np.isfinite(ru), ru - np.nanmean(ru, 0), 0.0)
    re = np.where(np.isfinite(re), re - np.nanmean(re, 0), 0.0)
    num = (ru * re).sum(0)
    den = np.sqrt((ru * ru).sum(0) * (re * re).sum(0))
    return float(np.where(den > _EPS, num / np.where(den > _EPS, den, 1.0), 0.0).mean())


def unc_spearman_all(unc: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> float:
    """Spearman correlation of uncertainty and absolute error over all finite-truth entries."""
    truth = np.asarray(truth, np.float64)
    ok = np.isfinite(truth)
    if ok.sum() < 2:
        return float("nan")
    err = np.abs(np.asarray(pred, np.float64)[ok] - truth[ok])
    return float(rowwise_pcc(average_ranks(np.asarray(unc, np.float64)[ok])[None], average_ranks(err)[None])[0])


def coverage_80(unc: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of finite-truth entries inside ``pred +- Z80 * unc``."""
    truth = np.asarray(truth, np.float64)
    ok = np.isfinite(truth)
    if not ok.any():
        return float("nan")
    inside = np.abs(np.asarray(pred, np.float64) - truth) <= Z80 * np.asarray(unc, np.float64)
    return float(inside[ok].mean())


def gene_pcc_finite(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PCC across spots for each gene over the spots where truth is finite [G] (NaN for a
    gene with fewer than 2 such spots, 0 where either side is constant)."""
    t = np.asarray(truth, np.float64)
    ok = np.isfinite(t)
    p = np.where(ok, np.asarray(pred, np.float64), 0.0)
    t = np.where(ok, t, 0.0)
    n = ok.sum(0)
    nn = np.maximum(n, 1)
    pc = np.where(ok, p - p.sum(0) / nn, 0.0)
    tc = np.where(ok, t - t.sum(0) / nn, 0.0)
    num = (pc * tc).sum(0)
    den = np.sqrt((pc * pc).sum(0) * (tc * tc).sum(0))
    r = np.where(den > _EPS, num / np.where(den > _EPS, den, 1.0), 0.0)
    return np.where(n >= 2, r, np.nan)


def gene_pcc_table(preds: Mapping[str, np.ndarray], truth: np.ndarray, sections: np.ndarray, genes: np.ndarray) -> pl.DataFrame:
    """Per-gene PCC (:func:`gene_pcc_finite`) of every method on every section with truth:
    long table (method, section, gene, value), what the viewer shows for the gene on screen."""
    sections = np.asarray(sections).astype(str)
    frames = []
    for s in dict.fromkeys(sections.tolist()):
        sel = sections == s
        for method, pred in preds.items():
            frames.append(pl.DataFrame({"method": method, "section": s, "gene": np.asarray(genes).astype(str),
                                        "value": gene_pcc_finite(np.asarray(pred)[sel], truth[sel])}))
    if not frames:
        return pl.DataFrame(schema={"method": pl.Utf8, "section": pl.Utf8, "gene": pl.Utf8, "value": pl.Float64})
    return pl.concat(frames)


UNCERTAINTY_METRICS = {"unc_spearman": unc_spearman, "unc_spearman_all": unc_spearman_all, "coverage_80": coverage_80}


def uncertainty_table(unc: np.ndarray, pred: np.ndarray, truth: np.ndarray, sections: np.ndarray, method: str = "asign") -> pl.DataFrame:
    """Rows (method, section, metric, value) of :data:`UNCERTAINTY_METRICS` per section and
    ``pooled`` (unweighted mean over sections), in the layout of :func:`evaluate_sections`."""
    sections = np.asarray(sections).astype(str)
    rows: list[dict] = []
    per: dict[str, list[float]] = {m: [] for m in UNCERTAINTY_METRICS}
    for s in dict.fromkeys(sections.tolist()):
        sel = sections == s
        for m, f in UNCERTAINTY_METRICS.items():
            v = f(unc[sel], pred[sel], truth[sel])
            rows.append({"method": method, "section": s, "metric": m, "value": v})
            per[m].append(v)
    for m in UNCERTAINTY_METRICS:
        rows.append({"method": method, "section": "pooled", "metric": m, "value": float(np.nanmean(per[m])) if per[m] else float("nan")})
    return pl.DataFrame(rows, schema={"method": pl.Utf8, "section": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64})


def section_metrics(
    pred: np.ndarray, truth: np.ndarray, ref_mean: np.ndarray, ref_sd: np.ndarray, hvg_idx: np.ndarray
) -> dict[str, float]:
    return {
        "mse": mse(pred, truth),
        "mae": mae(pred, truth),
        "spot_pcc": spot_pcc(pred, truth),
        "spot_pcc_z": spot_pcc_z(pred, truth, ref_mean, ref_sd),
        "gene_pcc": gene_pcc(pred, truth),
        "gene_pcc_hvg50": gene_pcc(pred, truth, hvg_idx),
    }


def scored_genes(truth: np.ndarray, section: str = "") -> np.ndarray:
    """Boolean per gene: truth finite at every spot (measured); partial columns are an error."""
    finite = np.isfinite(np.asarray(truth, dtype=np.float64))
    full, some = finite.all(axis=0), finite.any(axis=0)
    partial = some & ~full
    if partial.any():
        raise ValueError(
            f"section {section!r}: {int(partial.sum())} gene(s) have truth at some spots and NaN at others "
            f"(columns {np.flatnonzero(partial)[:5].tolist()}); a gene is either measured on a section or not"
        )
    return full


def evaluate_sections(
    preds: Mapping[str, np.ndarray],
    truth: np.ndarray,
    sections: np.ndarray,
    ref_mean: np.ndarray,
    ref_sd: np.ndarray,
    hvg_idx: np.ndarray,
) -> pl.DataFrame:
    """Long-form table (method, section, metric, value), per section and ``pooled``.

    ``truth`` and every prediction are [n, G] over the evaluated spots only (the caller
    removes the measured section); ``sections`` names each row's section. NaN truth marks
    genes the section did not measure (see the module docstring).
    """
    sections = np.asarray(sections).astype(str)
    truth = np.asarray(truth)
    names = list(dict.fromkeys(sections.tolist()))
    ref_mean, ref_sd = np.asarray(ref_mean), np.asarray(ref_sd)
    sel_of = {s: sections == s for s in names}
    scored_of = {s: scored_genes(truth[sel_of[s]], s) for s in names}
    any_scored = np.logical_or.reduce(list(scored_of.values())) if names else np.zeros(truth.shape[1], bool)
    rows: list[dict] = []
    for method, pred in preds.items():
        pred = np.asarray(pred)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {method!r} has shape {pred.shape}, truth {truth.shape}")
        per: dict[str, list[float]] = {m: [] for m in METRICS}
        for s in names:
            sel, cols = sel_of[s], scored_of[s]
            rows.append({"method": method, "section": s, "metric": GENES_SCORED, "value": float(cols.sum())})
            if not cols.any():
                continue
            # HVG positions inside the scored subset, in the original HVG order.
            new_pos = np.cumsum(cols) - 1
            hvg = np.asarray(hvg_idx, dtype=np.int64)
            hvg = new_pos[hvg[cols[hvg]]]
            vals = section_metrics(pred[sel][:, cols], truth[sel][:, cols], ref_mean[cols], ref_sd[cols], hvg)
            for m in METRICS:
                rows.append({"method": method, "section": s, "metric": m, "value": vals[m]})
                per[m].append(vals[m])
        for m in METRICS:
            if per[m]:
                rows.append({"method": method, "section": "pooled", "metric": m, "value": float(np.mean(per[m]))})
        rows.append({"method": method, "section": "pooled", "metric": GENES_SCORED, "value": float(any_scored.sum())})
    return pl.DataFrame(rows, schema={"method": pl.Utf8, "section": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64})


def markdown_table(df: pl.DataFrame, section: str = "pooled", digits: int = 3) -> str:
    """Methods x metrics markdown table for one section (default the pooled row)."""
    sub = df.filter(pl.col("section") == section)
    methods = list(dict.fromkeys(sub["method"].to_list()))
    present = set(sub["metric"].to_list())
    metrics = [m for m in (*METRICS, GENES_SCORED) if m in present]
    lut = {(r["method"], r["metric"]): r["value"] for r in sub.iter_rows(named=True)}
    lines = ["| method | " + " | ".join(metrics) + " |", "| --- |" + " ---: |" * len(metrics)]
    for me in methods:
        cells = [
            ("" if (me, m) not in lut else f"{lut[(me, m)]:.0f}" if m == GENES_SCORED else f"{lut[(me, m)]:.{digits}f}")
            for m in metrics
        ]
        lines.append(f"| {me} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
