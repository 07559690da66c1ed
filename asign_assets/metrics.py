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

METRICS = ("mse", "mae", "spot_pcc", "spot_pcc_z", "gene_pcc", "gene_pcc_hvg50")
GENES_SCORED = "genes_scored"
_EPS = 1e-12


def _rowwise_pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    num = (a * b).sum(axis=1)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    ok = den > _EPS * max(1.0, float(np.abs(num).max(initial=0.0)))
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


def spot_pcc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over spots of the PCC across genes."""
    return float(_rowwise_pcc(pred, truth).mean())


def gene_pcc_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PCC across spots for each gene (0 where either side is constant)."""
    return _rowwise_pcc(np.asarray(pred).T, np.asarray(truth).T)


def gene_pcc(pred: np.ndarray, truth: np.ndarray, genes: np.ndarray | None = None) -> float:
    """Mean over genes (optionally a subset of gene indices) of the PCC across spots."""
    r = gene_pcc_per_gene(pred, truth)
    if genes is not None:
        r = r[np.asarray(genes, dtype=np.int64)]
    return float(r.mean()) if r.size else float("nan")


def spot_pcc_z(pred: np.ndarray, truth: np.ndarray, ref_mean: np.ndarray, ref_sd: np.ndarray) -> float:
    """spot_pcc after z-scoring genes with the measured section's mean and SD."""
    sd = np.where(np.asarray(ref_sd) > _EPS, ref_sd, 1.0)
    return spot_pcc((pred - ref_mean) / sd, (truth - ref_mean) / sd)


def mse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - truth) ** 2))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def hvg_indices(y_measured: np.ndarray, n: int = 50) -> np.ndarray:
    """The ``n`` genes of highest variance across the measured section's spots."""
    var = np.asarray(y_measured, np.float64).var(axis=0)
    return np.lexsort((np.arange(len(var)), -var))[: min(n, len(var))]


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
