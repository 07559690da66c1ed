"""How high can per-gene PCC on an imputed section go? A noise ceiling and same-section references.

    .venv/bin/python benchmarks/accuracy_ceiling.py [--her2st ../shared/data/her2st] \
        [--cache /tmp/asign_patient_c_cache] [--dlpfc-work DIR] [--out docs/accuracy_ceiling.md]

Diagnostics, not a method: every number here is computed FROM the held-out section's own
counts, which the pipeline never sees. ``noise`` bounds what any prediction can reach; the
``same_*`` references are what simple predictors reach when they are trained on the held-out
section itself (no registration error, no section-to-section shift): how much of the truth
these image features and neighbouring spots explain at all.

- ``noise``: counting-noise ceiling. Each spot's counts are split in two halves by binomial
  thinning; the per-gene PCC between the halves, Spearman-Brown corrected to full depth, is
  the reliability r of the measured profile, and sqrt(r) the PCC that a noiseless, perfect
  prediction would reach against the noisy truth.
- ``same_knn``: the section predicted from ITS OWN other spots (5 random folds; Gaussian
  weights over the spots within 1.6 pitches): what perfect registration at zero distance,
  with 80% of the section measured, would give propagation.
- ``same_image``: a ridge from the spot/region/global embeddings to the section's own
  expression, 5 random folds: the image features without any section-to-section shift.
- ``same_image_blocked``: the same with spatially blocked folds (blocks of 4 pitches), so a
  held-out spot's neighbourhood is held out too.
- ``same_both``: the mean of ``same_knn`` and ``same_image`` predictions.

Genes: the 250 selected on the measured section of each choice (as the evaluation does);
spots with at least 100 counts; log1p per 10k; a gene the section did not measure is skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from asign_assets.ingest.expression import ExpressionParams, normalise_to_genes  # noqa: E402
from asign_assets.evaluation.metrics import gene_pcc_finite  # noqa: E402

CEILINGS = ("noise", "same_knn", "same_image", "same_image_blocked", "same_both")
FOLDS = 5


def _mean_pcc(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.nanmean(gene_pcc_finite(pred, truth)))


def thinning_ceiling(counts: sp.csr_matrix, genes_all: np.ndarray, genes: np.ndarray, seed: int = 0) -> float:
    """Mean over genes of sqrt(Spearman-Brown reliability) of binomial split halves."""
    rng = np.random.default_rng(seed)
    c = sp.csr_matrix(counts, dtype=np.int64)
    half = c.copy()
    half.data = rng.binomial(c.data, 0.5)
    other = c - half
    a = normalise_to_genes(half, genes_all, genes, missing="nan")
    b = normalise_to_genes(other, genes_all, genes, missing="nan")
    r = gene_pcc_finite(a, b)
    rel = np.clip(2 * r / (1 + np.abs(r)), 0.0, 1.0)
    return float(np.nanmean(np.sqrt(rel)))


def _folds(n: int, xy_um: np.ndarray, pitch_um: float, blocked: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not blocked:
        return rng.permutation(n) % FOLDS
    cell = np.floor((xy_um - xy_um.min(0)) / (4 * pitch_um)).astype(np.int64)
    _, block = np.unique(cell, axis=0, return_inverse=True)
    order = rng.permutation(block.max() + 1) % FOLDS
    return order[block.ravel()]


def _knn_predict(xy_train: np.ndarray, y_train: np.ndarray, xy_test: np.ndarray, pitch_um: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(xy_train)
    dist, idx = tree.query(xy_test, k=12, distance_upper_bound=1.6 * pitch_um)
    w = np.where(np.isfinite(dist), np.exp(-0.5 * (dist / (0.5 * pitch_um)) ** 2), 0.0)
    idx = np.where(np.isfinite(dist), idx, 0)
    wsum = w.sum(1, keepdims=True)
    pred = np.einsum("nk,nkg->ng", w, y_train[idx]) / np.maximum(wsum, 1e-12)
    return np.where(wsum > 0, pred, y_train.mean(0))  # a spot with no neighbour: the mean


def _ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit((x_train - mu) / sd, y_train)
    return model.predict((x_test - mu) / sd)


def same_section_ceilings(truth: np.ndarray, xy_um: np.ndarray, features: np.ndarray, pitch_um: float) -> dict[str, float]:
    """Cross-validated predictions of a section from itself (see the module docstring)."""
    y = np.where(np.isfinite(truth), truth, 0.0)  # unmeasured genes are skipped when scored
    out: dict[str, float] = {}
    for blocked in (False, True):
        fold = _folds(len(y), xy_um, pitch_um, blocked)
        knn, img = np.zeros_like(y), np.zeros_like(y)
        for f in range(FOLDS):
            te, tr = fold == f, fold != f
            img[te] = _ridge_predict(features[tr], y[tr], features[te])
            if not blocked:
                knn[te] = _knn_predict(xy_um[tr], y[tr], xy_um[te], pitch_um)
        if blocked:
            out["same_image_blocked"] = _mean_pcc(img, truth)
        else:
            out["same_knn"] = _mean_pcc(knn, truth)
            out["same_image"] = _mean_pcc(img, truth)
            out["same_both"] = _mean_pcc(0.5 * (knn + img), truth)
    return out


def section_row(counts: sp.csr_matrix, genes_all: np.ndarray, genes: np.ndarray, xy_um: np.ndarray, features: np.ndarray, pitch_um: float) -> dict[str, float]:
    ok = np.asarray(counts.sum(1)).ravel() >= ExpressionParams().min_counts
    counts, xy_um, features = sp.csr_matrix(counts)[ok], xy_um[ok], features[ok]
    truth = normalise_to_genes(counts, genes_all, genes, missing="nan")
    return {"noise": thinning_ceiling(counts, genes_all, genes), **same_section_ceilings(truth, xy_um, features, pitch_um), "spots": int(ok.sum())}


# ----------------------------------------------------------------------------- datasets


def patient_c_rows(data: Path, cache: Path) -> pl.DataFrame:
    import patient_c_eval as pce

    from asign_assets.importers.her2st import LEGACY_PITCH_UM

    prep = pce.prepare(data, cache)
    secs = {s["name"]: s for s in prep["sections"]}
    rows = []
    for measured in pce.SECTIONS:
        _, _, genes, _ = pce.measured_expression(data, prep, [measured])
        for target in pce.SECTIONS:
            if target == measured:
                continue
            s = secs[target]
            c = pce.read_section_counts(data, target)
            pos = {sid: i for i, sid in enumerate(c.spot_ids.astype(str))}
            keep = np.array([sid in pos for sid in s["spot_ids"]])
            X = c.X[[pos[sid] for sid in s["spot_ids"][keep]]]
            feats = np.hstack([s["emb_spot"], s["emb_region"][s["spot_region"]], s["emb_global"][s["spot_global"]]])[keep]
            t0 = time.perf_counter()
            r = section_row(X, np.asarray(c.genes), genes, s["xy_um"][keep], feats, LEGACY_PITCH_UM)
            rows.append({"dataset": "her2st C", "measured": measured, "imputed": target, **r})
            print(f"[{time.strftime('%H:%M:%S')}] {measured}->{target} {time.perf_counter() - t0:.1f}s {r}", flush=True)
    return pl.DataFrame(rows)


def dlpfc_rows(work: Path, data: Path) -> pl.DataFrame:
    """Each direction's truth section, from the sample folders that benchmarks/dlpfc_eval.py --work stored."""
    import anndata as ad
    import zarr

    from asign_assets.readers.counts import read_counts
    from asign_assets.readers.visium import VISIUM_PITCH_UM

    rows = []
    for home in sorted(work.glob("home_*")):
        sample = next((home / "samples").iterdir())
        genes = np.asarray(ad.read_h5ad(sample / "expression.h5ad", backed="r").var_names).astype(str)
        spots = pl.read_parquet(sample / "registrations" / "spots.parquet")
        measured = spots.filter(pl.col("measured"))["section"][0]
        target = next(s for s in spots["section"].unique().to_list() if s != measured)
        sp_t = spots.filter(pl.col("section") == target)
        emb = zarr.open_group(str(sample / "embeddings.zarr"), mode="r")[target]
        tiles = zarr.open_group(str(sample / "tiles.zarr"), mode="r")[target]
        feats = np.hstack([np.asarray(emb["spot"][:]), np.asarray(emb["region"][:])[np.asarray(tiles["spot_region"][:])],
                           np.asarray(emb["global"][:])[np.asarray(tiles["spot_global"][:])]])
        c = read_counts(data / target / "filtered_feature_bc_matrix.h5")
        pos = {sid: i for i, sid in enumerate(c.spot_ids.astype(str))}
        ids = sp_t["spot_id"].to_numpy().astype(str)
        keep = np.array([sid in pos for sid in ids])
        X = c.X[[pos[sid] for sid in ids[keep]]]
        xy = np.c_[sp_t["x_um"].to_numpy(), sp_t["y_um"].to_numpy()][keep]
        t0 = time.perf_counter()
        r = section_row(X, np.asarray(c.genes), genes, xy, feats[keep], VISIUM_PITCH_UM)
        rows.append({"dataset": "dlpfc", "measured": measured, "imputed": target, **r})
        print(f"[{time.strftime('%H:%M:%S')}] dlpfc {measured}->{target} {time.perf_counter() - t0:.1f}s {r}", flush=True)
    return pl.DataFrame(rows)


# ----------------------------------------------------------------------------- report


def _asign_scores(cache: Path, config: str) -> pl.DataFrame | None:
    f = cache / f"acc_{config}.parquet"
    if not f.exists():
        return None
    d = pl.read_parquet(f).filter((pl.col("metric") == "gene_pcc") & pl.col("method").is_in(["asign", "image_2d"]) & (pl.col("section") != "pooled"))
    return d.pivot(on="method", index=["measured", "section"], values="value").rename({"section": "imputed"})


def report(table: pl.DataFrame, asign: pl.DataFrame | None, config: str) -> str:
    t = table
    if asign is not None:
        t = t.join(asign, on=["measured", "imputed"], how="left")
    cols = [c for c in ("asign", "image_2d") if c in t.columns] + list(CEILINGS)
    head = "| dataset | measured | imputed | " + " | ".join(cols) + " |"
    lines = [head, "| --- | --- | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for r in t.iter_rows(named=True):
        vals = " | ".join("" if r.get(c) is None else f"{r[c]:.3f}" for c in cols)
        lines.append(f"| {r['dataset']} | {r['measured']} | {r['imputed']} | {vals} |")
    means = t.group_by("dataset", maintain_order=True).agg([pl.col(c).mean() for c in cols])
    lines += ["", "| dataset (mean over rows) | " + " | ".join(cols) + " |", "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for r in means.iter_rows(named=True):
        lines.append(f"| {r['dataset']} | " + " | ".join("" if r[c] is None else f"{r[c]:.3f}" for c in cols) + " |")
    src = f"`asign` and `image_2d` (the cross-section image baseline) are the `{config}` rows of docs/accuracy.md" if asign is not None else ""
    return "\n".join([
        "# Accuracy ceilings: what each held-out section allows",
        "",
        "Generated by `benchmarks/accuracy_ceiling.py` (do not edit by hand); definitions in its docstring.",
        "These numbers use the held-out sections' own counts: diagnostics, never inputs of the pipeline.",
        "`noise` is an upper bound (a perfect, noiseless prediction against the noisy truth); the `same_*`",
        "columns are references trained on the held-out section itself (5-fold cross-validation). " + src + ".",
        "",
        *lines,
        "",
        *_summary(means, cols),
        "",
    ])


def _summary(means: pl.DataFrame, cols: list[str]) -> list[str]:
    out = []
    for r in means.iter_rows(named=True):
        if r.get("asign") is None:
            continue
        refs = [c for c in cols if c.startswith("same_")]
        best = max(refs, key=lambda c: r[c])
        out.append(
            f"- {r['dataset']}: ASIGN {r['asign']:.3f} is {r['asign'] / r['noise']:.0%} of the noise ceiling {r['noise']:.3f}; "
            f"the best same-section reference (`{best}`, trained on the held-out section itself) reaches {r[best]:.3f}."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--her2st", type=Path, default=ROOT / ".." / "shared" / "data" / "her2st")
    ap.add_argument("--dlpfc", type=Path, default=ROOT / ".." / "shared" / "data" / "dlpfc")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/asign_patient_c_cache"), help="benchmarks/patient_c_eval.py cache")
    ap.add_argument("--dlpfc-work", type=Path, help="work folder of benchmarks/dlpfc_eval.py --work (optional)")
    ap.add_argument("--config", default="stop10", help="accuracy_report configuration to compare with")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy_ceiling.md")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    tables = [patient_c_rows(args.her2st.resolve(), args.cache)]
    if args.dlpfc_work is not None:
        tables.append(dlpfc_rows(args.dlpfc_work, args.dlpfc.resolve()))
    table = pl.concat(tables, how="diagonal_relaxed")
    asign = _asign_scores(args.cache, args.config)
    if args.dlpfc_work is not None and (dl := _asign_scores(args.dlpfc_work, f"dlpfc_{args.config}")) is not None:
        asign = dl if asign is None else pl.concat([asign, dl], how="diagonal_relaxed")
    md = report(table, asign, args.config)
    args.out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
