"""Expression targets of the measured sections: spot filtering, gene selection, normalisation.

Normalisation is computed on *all* genes of a spot (the library size is the spot's total
count) and only then restricted to the selected genes, so a gene's value does not depend on
which other genes were selected. With several measured sections each is normalised on its
own panel and genes are selected among those all of them measured. Evaluation re-normalises held-out truth with
:func:`normalise_to_genes`, which uses exactly the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from asign_assets.errors import InputError

if TYPE_CHECKING:
    import anndata

NormMethod = Literal["log1p_cp10k", "stnet"]
MIN_SPOTS = 20
#: Measured sections must share at least this many genes (or ``n_genes``, if smaller).
MIN_COMMON_GENES = 50


@dataclass(frozen=True)
class ExpressionParams:
    n_genes: int = 250
    selection: Literal["mean", "hvg"] = "mean"
    normalisation: NormMethod = "log1p_cp10k"
    min_counts: int = 100


def _as_csr(counts: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    if sp.issparse(counts):
        return sp.csr_matrix(counts, dtype=np.float64)
    return sp.csr_matrix(np.asarray(counts, dtype=np.float64))


def normalise(counts: sp.spmatrix | np.ndarray, method: str = "log1p_cp10k") -> np.ndarray:
    """Per-spot normalised expression (float32, dense [spots, genes]).

    ``log1p_cp10k``: log(1 + 1e4 * c / total); ``stnet`` (ST-Net / the paper):
    log((c + 1) / sum_g (c_g + 1)). Spots with zero total get zeros under log1p_cp10k.
    """
    c = _as_csr(counts)
    totals = np.asarray(c.sum(axis=1)).ravel()
    if method == "log1p_cp10k":
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        x = sp.diags(scale) @ c
        return np.log1p(x.toarray()).astype(np.float32)
    if method == "stnet":
        dense = c.toarray() + 1.0
        return np.log(dense / (totals + c.shape[1])[:, None]).astype(np.float32)
    raise InputError(None, f"unknown normalisation {method!r} (use 'log1p_cp10k' or 'stnet')", field="normalisation")


def select_genes(X_norm: np.ndarray, genes: np.ndarray, params: ExpressionParams) -> np.ndarray:
    """Indices (into ``genes``) of the selected genes, in decreasing order of the score.

    ``mean``: highest mean normalised expression (the paper's rule). ``hvg``: highest
    dispersion (variance / mean) among genes with above-median mean, a simple
    Seurat-flavoured HVG rule that does not need scanpy.
    """
    X = np.asarray(X_norm, dtype=np.float64)
    if X.shape[1] != len(genes):
        raise InputError(None, f"{X.shape[1]} expression columns but {len(genes)} gene names", field="genes")
    n = min(int(params.n_genes), X.shape[1])
    mean = X.mean(axis=0)
    if params.selection == "mean":
        score = mean
    elif params.selection == "hvg":
        var = X.var(axis=0)
        disp = np.divide(var, mean, out=np.zeros_like(var), where=mean > 0)
        expressed = mean >= np.median(mean)
        score = np.where(expressed, disp, -np.inf)
    else:
        raise InputError(None, f"unknown gene selection {params.selection!r}", field="selection")
    # stable sort on (-score, index) so ties are broken by gene order, deterministically
    order = np.lexsort((np.arange(len(score)), -score))
    return order[:n].astype(np.int64)


@dataclass(frozen=True)
class MeasuredCounts:
    """Raw counts of one measured section (rows ``spot_ids``, columns ``genes``)."""

    section: str
    counts: sp.spmatrix | np.ndarray
    spot_ids: np.ndarray
    genes: np.ndarray
    source: str = "<counts>"


def common_genes(parts: Sequence[MeasuredCounts], needed: int) -> np.ndarray:
    """Genes every measured section has, in the first section's order.

    Sections can come from different panels (e.g. two Visium runs): a gene is selectable
    only where every measured section measured it. Raises :class:`InputError` naming the
    files when fewer than ``needed`` genes are shared.
    """
    first = np.asarray(parts[0].genes).astype(str)
    shared = set(first)
    for p in parts[1:]:
        shared &= set(np.asarray(p.genes).astype(str))
    out = first[np.isin(first, list(shared))]
    if len(out) < needed:
        panels = ", ".join(f"{p.section}: {len(p.genes)} genes ({p.source})" for p in parts)
        raise InputError(
            parts[-1].source, f"the measured sections share only {len(out)} gene names (need at least {needed}); panels: {panels}. "
            "Measured sections must measure the same genes (check the gene name column or the feature type)",
        )
    return out


def _columns(genes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Column of each ``wanted`` gene in ``genes`` (all present)."""
    pos = {g: i for i, g in enumerate(np.asarray(genes).astype(str))}
    return np.array([pos[g] for g in wanted], dtype=np.int64)


def _kept_normalised(part: MeasuredCounts, params: ExpressionParams) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """(kept counts, kept mask, totals, normalised kept spots on all genes) of one section."""
    c = _as_csr(part.counts)
    spot_ids = np.asarray(part.spot_ids).astype(str)
    genes = np.asarray(part.genes).astype(str)
    if c.shape != (len(spot_ids), len(genes)):
        raise InputError(part.source, f"counts shape {c.shape} does not match {len(spot_ids)} spots x {len(genes)} genes")
    if c.nnz and c.data.min() < 0:
        raise InputError(part.source, "counts contain negative values")
    if len(set(spot_ids)) != len(spot_ids):
        raise InputError(part.source, "duplicate spot ids")
    totals = np.asarray(c.sum(axis=1)).ravel()
    keep = totals >= params.min_counts
    n_kept = int(keep.sum())
    if n_kept < MIN_SPOTS:
        where = f"section {part.section}: " if part.section else ""
        raise InputError(part.source, f"{where}only {n_kept} spots have >= {params.min_counts} counts (need at least {MIN_SPOTS})")
    c = c[keep]
    return c, keep, totals, normalise(c, params.normalisation)


def build_expression_sections(parts: Sequence[MeasuredCounts], params: ExpressionParams = ExpressionParams()) -> tuple[anndata.AnnData, dict]:
    """AnnData of every measured section's spots: ``X`` normalised float32, ``layers['counts']`` raw.

    Each section is filtered (spots below ``params.min_counts`` dropped) and normalised on
    its own full panel; genes are then selected among :func:`common_genes` over the kept
    spots of all sections together. ``obs_names`` are ``<section>:<spot_id>`` (the imputed
    volume's index; bare spot ids for an unnamed single section), ``obs`` holds ``section``,
    ``spot_id`` and ``total_counts``. Raises :class:`InputError` naming the file when a
    section keeps fewer than 20 spots or no gene can be selected.
    """
    if not parts:
        raise InputError(None, "no measured section", field="sections[].measured")
    kept = [_kept_normalised(p, params) for p in parts]
    shared = common_genes(parts, min(int(params.n_genes), MIN_COMMON_GENES) if len(parts) > 1 else 0)
    cols = [_columns(p.genes, shared) for p in parts]
    X_all = np.concatenate([x[:, col] for (_c, _k, _t, x), col in zip(kept, cols)])
    counts = sp.vstack([c[:, col] for (c, _k, _t, _x), col in zip(kept, cols)]).tocsr()
    source = ", ".join(p.source for p in parts)
    detected = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    if not detected.any() or params.n_genes < 1:
        raise InputError(source, "no gene has any counts in the kept spots")
    idx = select_genes(X_all, shared, params)
    idx = idx[detected[idx]]
    if len(idx) == 0:
        raise InputError(source, "zero genes selected")
    norm = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in asdict(params).items()}
    import anndata  # imported here: ~1.5 s, and the asset definitions import this module

    ids = [np.asarray(p.spot_ids).astype(str) for p in parts]
    keys = [np.char.add(f"{p.section}:", i) if p.section else i for p, i in zip(parts, ids)]
    keep_masks = [k for (_c, k, _t, _x) in kept]
    adata = anndata.AnnData(
        X=X_all[:, idx].astype(np.float32),
        obs={
            "section": np.concatenate([np.full(int(k.sum()), p.section) for p, k in zip(parts, keep_masks)]),
            "spot_id": np.concatenate([i[k] for i, k in zip(ids, keep_masks)]),
            "total_counts": np.concatenate([t[k] for (_c, k, t, _x) in kept]).astype(np.float64),
        },
        layers={"counts": sp.csr_matrix(counts[:, idx], dtype=np.float32)},
    )
    adata.obs_names = np.concatenate([key[k] for key, k in zip(keys, keep_masks)])
    adata.var_names = shared[idx]
    adata.uns["normalisation"] = norm
    adata.uns["sections"] = [p.section for p in parts]
    n_in = sum(len(i) for i in ids)
    info = {
        "n_spots_in": int(n_in),
        "n_spots": int(adata.n_obs),
        "n_spots_dropped": int(n_in - adata.n_obs),
        "dropped_spot_ids": np.concatenate([key[~k] for key, k in zip(keys, keep_masks)]).tolist(),
        "n_genes_in": int(len(shared)),
        "n_genes": int(len(idx)),
        "params": norm,
    }
    if len(parts) > 1:
        info["genes_per_section"] = {p.section: int(len(p.genes)) for p in parts}
        info["spots_per_section"] = {p.section: int(k.sum()) for p, k in zip(parts, keep_masks)}
    return adata, info


def build_expression(
    counts: sp.spmatrix | np.ndarray,
    spot_ids: np.ndarray,
    genes: np.ndarray,
    params: ExpressionParams = ExpressionParams(),
    source: str = "<counts>",
) -> tuple[anndata.AnnData, dict]:
    """:func:`build_expression_sections` of one unnamed section: ``obs_names`` are the spot ids."""
    return build_expression_sections([MeasuredCounts("", counts, spot_ids, genes, source)], params)


def normalise_to_genes(
    counts: sp.spmatrix | np.ndarray,
    genes_all: np.ndarray,
    selected_genes: np.ndarray,
    method: str = "log1p_cp10k",
    missing: Literal["error", "zero", "nan"] = "error",
    source: str = "<counts>",
) -> np.ndarray:
    """Normalise ``counts`` (columns ``genes_all``) on all genes, then take ``selected_genes``.

    A selected gene absent from ``genes_all`` raises :class:`InputError` by default;
    ``missing='nan'`` marks it unmeasured (NaN: the truth of a section whose gene panel
    lacks it, which metrics must skip); ``missing='zero'`` treats it as never detected
    (normalised value of a zero count), which is only right for genes known to be zero.
    """
    genes_all = np.asarray(genes_all).astype(str)
    selected = np.asarray(selected_genes).astype(str)
    c = _as_csr(counts)
    if c.shape[1] != len(genes_all):
        raise InputError(source, f"{c.shape[1]} count columns but {len(genes_all)} gene names")
    pos = {g: i for i, g in enumerate(genes_all)}
    col = np.array([pos.get(g, -1) for g in selected], dtype=np.int64)
    absent = col < 0
    if absent.any() and missing == "error":
        names = ", ".join(selected[absent][:10])
        raise InputError(source, f"{int(absent.sum())} selected genes are missing: {names}")
    X = normalise(c, method)
    out = X[:, np.where(absent, 0, col)]
    if absent.any() and missing == "nan":
        out[:, absent] = np.nan
    elif absent.any():
        totals = np.asarray(c.sum(axis=1)).ravel()
        zero_val = np.zeros(len(totals), np.float32) if method == "log1p_cp10k" else np.log(
            1.0 / (totals + c.shape[1])
        ).astype(np.float32)
        out[:, absent] = zero_val[:, None]
    return out.astype(np.float32)
