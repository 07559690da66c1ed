"""Held-out evaluation of one sample: truth aligned to the volume, ASIGN and the baselines scored.

The only library code that reads truth; its asset (`evaluation`) only writes the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from asign_assets.errors import InputError
from asign_assets.ingest.manifest import Manifest
from asign_assets.storage.stack_inputs import StackInputs

#: Baselines scored next to ASIGN (asign_assets.evaluation.baselines.run_baselines), in report order.
BASELINES = ("mean", "overlap", "similarity", "gauss_knn", "image_2d")
METRICS_SCHEMA = {"method": pl.Utf8, "section": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64, "dz_nearest_um": pl.Float64}


def nearest_measured_dz(manifest: Manifest) -> dict[str, float]:
    """|z| distance in um from each section to the nearest measured section (0 for a measured one).

    Imputation accuracy falls with this distance, so per-section metrics are read next to it.
    """
    z = np.array([s.z_um for s in manifest.sections], dtype=np.float64)
    zm = z[list(manifest.measured_indices)]
    dz = np.abs(z[:, None] - zm[None, :]).min(axis=1)
    return {s.name: float(d) for s, d in zip(manifest.sections, dz)}


def with_dz(table: pl.DataFrame, dz: dict[str, float]) -> pl.DataFrame:
    """``table`` with a ``dz_nearest_um`` column by section (null for the ``pooled`` rows)."""
    lut = pl.DataFrame({"section": list(dz), "dz_nearest_um": list(dz.values())}, schema={"section": pl.Utf8, "dz_nearest_um": pl.Float64})
    return table.join(lut, on="section", how="left", maintain_order="left")


def measured_pitch_um(inp: StackInputs) -> float:
    """Spot pitch of the measured sections in the common frame: each section's median
    nearest-neighbour distance, median over sections. Pooling several measured sections
    would pair spots of different sections a registration error apart."""
    from asign_assets.results.volume import spot_pitch_um

    meas = inp.spots[inp.measured_idx]
    xy = meas.select("x_um", "y_um").to_numpy()
    sec = meas["section"].to_numpy()
    return float(np.median([spot_pitch_um(xy[sec == s]) for s in np.unique(sec)]))


def truth_matrix(manifest: Manifest, inp: StackInputs, genes: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(volume rows, normalised truth) of every unmeasured section with truth.

    Spots are matched by id with a join on the section's spot table; spots whose truth library
    is below the expression stage's ``min_counts`` are dropped, as they were for the measured
    section. Genes a truth file did not measure are NaN (unmeasured, never zero); metrics skip them.
    """
    from asign_assets.ingest.expression import normalise_to_genes
    from asign_assets.readers.counts import read_counts

    rows, mats = [], []
    spots = inp.spots.with_row_index("row")
    min_counts = float(inp.normalisation.get("min_counts", 0))
    for spec in manifest.sections:
        if spec.measured or spec.truth is None:
            continue
        sec = spots.filter(pl.col("section") == spec.name)
        if sec["virtual"].any():
            raise InputError(spec.truth, f"section {spec.name}: truth needs the section's spot table (its spots are virtual)")
        counts = read_counts(spec.truth)
        ids = pl.DataFrame({"spot_id": counts.spot_ids.astype(str), "truth_row": np.arange(len(counts.spot_ids))})
        matched = sec.select("spot_id", "row").join(ids, on="spot_id", how="inner", maintain_order="left")
        if matched.height == 0:
            raise InputError(spec.truth, f"section {spec.name}: no truth row matches a spot id of the section")
        sub = counts.X[matched["truth_row"].to_numpy()]
        keep = np.asarray(sub.sum(1)).ravel() >= min_counts
        y = normalise_to_genes(sub, counts.genes, genes, method, missing="nan", source=str(spec.truth))
        rows.append(matched["row"].to_numpy()[keep])
        mats.append(y[keep])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(genes)), np.float32)
    return np.concatenate(rows).astype(np.int64), np.concatenate(mats).astype(np.float32)


def section_rows(table: pl.DataFrame, method: str = "asign", metrics: tuple[str, ...] = ("gene_pcc", "spot_pcc", "mse")) -> list[dict]:
    """One row per evaluated section: its ``dz_nearest_um`` and ``method``'s ``metrics``."""
    sub = table.filter((pl.col("method") == method) & (pl.col("section") != "pooled") & pl.col("metric").is_in(list(metrics)))
    if sub.height == 0:
        return []
    wide = sub.pivot(on="metric", index=["section", "dz_nearest_um"], values="value", maintain_order=True)
    return wide.select("section", "dz_nearest_um", *[m for m in metrics if m in wide.columns]).to_dicts()


@dataclass
class SampleEvaluation:
    """Long metrics table (method, section, metric, value), per-gene PCC and the aligned truth."""

    table: pl.DataFrame
    rows: np.ndarray
    truth: np.ndarray
    gene_table: pl.DataFrame | None
    pooled_gene_pcc: dict[str, float]

    @property
    def beaten_by(self) -> dict[str, float]:
        """Baselines whose pooled gene_pcc exceeds ASIGN's."""
        asign = self.pooled_gene_pcc.get("asign", float("nan"))
        return {k: round(v, 4) for k, v in self.pooled_gene_pcc.items() if k in BASELINES and v > asign}


def evaluate_sample(manifest: Manifest, inp: StackInputs, vol: Any) -> SampleEvaluation:
    """Score the imputed volume ``vol`` (AnnData) and the baselines on the manifest's truth
    (unmeasured sections only); every row carries its section's ``dz_nearest_um``."""
    from asign_assets.evaluation.baselines import run_baselines
    from asign_assets.evaluation.metrics import evaluate_sections, gene_pcc_table, hvg_indices, uncertainty_table

    genes = np.asarray(vol.var_names)
    rows, truth = truth_matrix(manifest, inp, genes, str(inp.normalisation.get("method", "log1p_cp10k")))
    if len(rows) == 0:
        return SampleEvaluation(pl.DataFrame(schema=METRICS_SCHEMA), rows, truth, None, {})
    # gauss_knn's sigma: half the pitch of one measured section (its default pools all measured spots)
    base = run_baselines(inp.graph, inp.spot_emb, inp.y_measured, inp.measured_idx, knn_sigma_um=0.5 * measured_pitch_um(inp))
    preds = {"asign": np.asarray(vol.X), "asign_network": np.asarray(vol.layers["model"]), "asign_propagation": np.asarray(vol.layers["propagation"])}
    preds.update({k: base[k] for k in BASELINES if k in base})
    at_rows = {k: v[rows] for k, v in preds.items()}
    sec_names = inp.spots["section"].to_numpy()[rows]
    table = evaluate_sections(at_rows, truth, sec_names, inp.y_measured.mean(0), inp.y_measured.std(0), hvg_indices(inp.y_measured, 50))
    if "uncertainty" in vol.layers:
        table = pl.concat([table, uncertainty_table(np.asarray(vol.layers["uncertainty"])[rows], at_rows["asign"], truth, sec_names)])
    table = with_dz(table, nearest_measured_dz(manifest))
    pooled = table.filter((pl.col("section") == "pooled") & (pl.col("metric") == "gene_pcc"))
    return SampleEvaluation(
        table=table, rows=rows, truth=truth, gene_table=gene_pcc_table(at_rows, truth, sec_names, genes),
        pooled_gene_pcc=dict(zip(pooled["method"].to_list(), pooled["value"].to_list())),
    )
