"""Item 4 of issue #13: do nuclear features (asign_assets/imaging/nuclei.py) add to the spot embeddings?

    .venv/bin/python benchmarks/nuclei_features.py [--data ../shared/data/her2st] [--cache DIR]

On the cached spot patches of patient C (``benchmarks/patient_c_eval.py --cache DIR``; 224 px
at 0.8 um/px, the scans' near-native resolution), per section: Macenko stain vectors, the
normalised haematoxylin, nuclei and their per-spot features. Then, for every choice of
measured section, the image ridge (plain and reduced-rank, as in training) fitted on the
measured section with and without the nuclear features, scored by per-gene PCC on the four
other sections. Nothing but the measured section's counts enters a fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import patient_c_eval as pce  # noqa: E402

from asign_assets.stats.ridge import choose_ridge_rank, fit_reduced_rank_ridge, fit_ridge  # noqa: E402
from asign_assets.ingest.expression import ExpressionParams, build_expression, normalise_to_genes  # noqa: E402
from asign_assets.stats.correlation import gene_pcc  # noqa: E402
from asign_assets.imaging.nuclei import FEATURES, nuclei_features  # noqa: E402
from asign_assets.imaging.stain import section_stain_reference  # noqa: E402


def section_features(cache: Path) -> tuple[dict[str, np.ndarray], float]:
    import zarr

    g = zarr.open_group(str(cache / "tiles.zarr"), mode="r")
    t0 = time.perf_counter()
    out = {}
    for s in pce.SECTIONS:
        tiles = np.asarray(g[s]["spot"][...])
        um = float(g[s].attrs["spot_stored_um_per_px"])
        stains, h_scale = section_stain_reference(tiles)
        out[s] = nuclei_features(tiles, um, stains, h_scale)
    return out, time.perf_counter() - t0


def measure(data: Path, cache: Path) -> pl.DataFrame:
    """Long table: measured, features (embedding / embedding+nuclei / nuclei), ridge (plain / reduced-rank), gene_pcc."""
    import pickle

    prep = pickle.loads((cache / "prepared.pkl").read_bytes())
    secs = prep["sections"]
    names = np.concatenate([[s["name"]] * len(s["spot_ids"]) for s in secs])
    ids = np.concatenate([s["spot_ids"] for s in secs])
    emb = np.concatenate([s["emb_spot"] for s in secs])
    feats, seconds = section_features(cache)
    nuc = np.concatenate([feats[s] for s in pce.SECTIONS])
    variants = {"embedding": emb, "embedding+nuclei": np.hstack([emb, nuc]), "nuclei": nuc}
    rows = []
    for m in pce.SECTIONS:
        cm = pce.read_section_counts(data, m)
        row = {sid: i for i, sid in enumerate(cm.spot_ids.astype(str))}
        node_m = np.nonzero(names == m)[0]
        node_m = node_m[[ids[i] in row for i in node_m]]
        ad, _ = build_expression(cm.X[[row[s] for s in ids[node_m]]], ids[node_m], cm.genes, ExpressionParams(), source=m)
        keep = set(ad.obs_names)
        midx = np.array([i for i in node_m if ids[i] in keep])
        y = ad[ids[midx]].X.astype(np.float32)
        genes = np.asarray(ad.var_names)
        truth = []
        for s in pce.SECTIONS:
            if s == m:
                continue
            c = pce.read_section_counts(data, s)
            r = {sid: i for i, sid in enumerate(c.spot_ids.astype(str))}
            nodes = np.nonzero(names == s)[0]
            nodes = nodes[[ids[i] in r for i in nodes]]
            X = c.X[[r[ids[i]] for i in nodes]]
            ok = np.asarray(X.sum(1)).ravel() >= ExpressionParams().min_counts
            truth.append((nodes[ok], normalise_to_genes(X[ok], c.genes, genes, "log1p_cp10k", missing="nan")))
        for vname, X in variants.items():
            rank, _ = choose_ridge_rank(X[midx], y)
            for kind, ridge in (("plain", fit_ridge(X[midx], y)), ("reduced-rank", fit_reduced_rank_ridge(X[midx], y, rank))):
                p = ridge.predict(X)
                rows.append({"measured": m, "features": vname, "ridge": kind,
                             "gene_pcc": float(np.mean([gene_pcc(p[n], t) for n, t in truth]))})
    return pl.DataFrame(rows).with_columns(pl.lit(seconds).alias("nuclei_seconds"))


def table(df: pl.DataFrame) -> str:
    lines = ["| features | ridge | " + " | ".join(pce.SECTIONS) + " | mean |", "| --- | --- |" + " ---: |" * (len(pce.SECTIONS) + 1)]
    for (f, k), d in df.group_by(["features", "ridge"], maintain_order=True):
        v = dict(zip(d["measured"].to_list(), d["gene_pcc"].to_list()))
        lines.append(f"| {f} | {k} | " + " | ".join(f"{v[m]:.3f}" for m in pce.SECTIONS) + f" | {np.mean(list(v.values())):.3f} |")
    return "\n".join(lines) + (f"\n\nNuclear features ({', '.join(FEATURES)}) of all 918 spots took "
                               f"{df['nuclei_seconds'][0]:.0f} s.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "her2st")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/asign_patient_c_cache"))
    args = ap.parse_args()
    print(table(measure(args.data.resolve(), args.cache)))


if __name__ == "__main__":
    main()
