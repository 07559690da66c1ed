"""Expression targets of the measured section: spot filtering, gene selection, normalisation.

Normalisation is computed on *all* genes of a spot (the library size is the spot's total
count) and only then restricted to the selected genes, so a gene's value does not depend on
which other genes were selected. Evaluation re-normalises held-out truth with
:func:`normalise_to_genes`, which uses exactly the same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from asign_assets.errors import InputError

if TYPE_CHECKING:
    import anndata

NormMethod = Literal["log1p_cp10k", "stnet"]
MIN_SPOTS = 20


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


def build_expression(
    counts: sp.spmatrix | np.ndarray,
    spot_ids: np.ndarray,
    genes: np.ndarray,
    params: ExpressionParams = ExpressionParams(),
    source: str = "<counts>",
) -> tuple[anndata.AnnData, dict]:
    """AnnData of the measured section: ``X`` normalised float32, ``layers['counts']`` raw.

    Spots with fewer than ``params.min_counts`` total counts are dropped (reported in the
    returned info dict). Raises :class:`InputError` naming ``source`` when fewer than
    20 spots remain or no gene can be selected.
    """
    c = _as_csr(counts)
    spot_ids = np.asarray(spot_ids).astype(str)
    genes = np.asarray(genes).astype(str)
    if c.shape != (len(spot_ids), len(genes)):
        raise InputError(source, f"counts shape {c.shape} does not match {len(spot_ids)} spots x {len(genes)} genes")
    if c.nnz and c.data.min() < 0:
        raise InputError(source, "counts contain negative values")
    if len(set(spot_ids)) != len(spot_ids):
        raise InputError(source, "duplicate spot ids")
    totals = np.asarray(c.sum(axis=1)).ravel()
    keep = totals >= params.min_counts
    n_kept = int(keep.sum())
    if n_kept < MIN_SPOTS:
        raise InputError(
            source, f"only {n_kept} spots have >= {params.min_counts} counts (need at least {MIN_SPOTS})"
        )
    c = c[keep]
    X_all = normalise(c, params.normalisation)
    detected = np.asarray((c > 0).sum(axis=0)).ravel() > 0
    if not detected.any() or params.n_genes < 1:
        raise InputError(source, "no gene has any counts in the kept spots")
    idx = select_genes(X_all, genes, params)
    idx = idx[detected[idx]]
    if len(idx) == 0:
        raise InputError(source, "zero genes selected")
    norm = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in asdict(params).items()}
    import anndata  # imported here: ~1.5 s, and the asset definitions import this module

    adata = anndata.AnnData(
        X=X_all[:, idx].astype(np.float32),
        obs={"total_counts": totals[keep].astype(np.float64)},
        layers={"counts": sp.csr_matrix(c[:, idx], dtype=np.float32)},
    )
    adata.obs_names = spot_ids[keep]
    adata.var_names = genes[idx]
    adata.uns["normalisation"] = norm
    info = {
        "n_spots_in": int(len(spot_ids)),
        "n_spots": n_kept,
        "n_spots_dropped": int(len(spot_ids) - n_kept),
        "dropped_spot_ids": spot_ids[~keep].tolist(),
        "n_genes_in": int(len(genes)),
        "n_genes": int(len(idx)),
        "params": norm,
    }
    return adata, info


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
