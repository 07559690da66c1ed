"""HER2ST patient C benchmark: the whole library chain, every choice of measured section.

    .venv/bin/python benchmarks/patient_c_eval.py [--data ../shared/data/her2st] [--cache DIR]

Chain: thumbnails -> tissue masks -> registration -> tiles -> embeddings -> 3D graph ->
expression (measured section only) -> train -> impute -> baselines -> metrics. Stages that
do not depend on the measured section (everything up to the graph) run once and are cached
in ``--cache`` (outside the project). Truth counts of the other sections are read only
after imputation, for the metrics. Prints the pooled table averaged over the five choices,
the per-choice ASIGN rows and timings.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asign_assets.ingest.expression import ExpressionParams, build_expression, normalise_to_genes  # noqa: E402
from asign_assets.evaluation.metrics import evaluate_sections, hvg_indices, markdown_table  # noqa: E402

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
PATIENT = "C"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- cached stages


def prepare(data: Path, cache: Path) -> dict:
    """Spots, registration, tiles and embeddings for all sections (no expression read)."""
    f = cache / "prepared.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    import zarr
    from PIL import Image

    from asign_assets.imaging.encoders import embed_tiles, get_encoder
    from asign_assets.importers.her2st import estimate_pixel_size_um, her2st_paths
    from asign_assets.readers.images import read_rgb, read_thumbnail
    from asign_assets.imaging.tissue import tissue_mask
    from asign_assets.registration.params import RegistrationParams
    from asign_assets.registration.search import register_stack
    from asign_assets.registration.transforms import to_common_frame
    from asign_assets.imaging.tiles import write_section_tiles

    Image.MAX_IMAGE_PIXELS = 400_000_000  # HER2ST slides are ~92 Mpx; one at a time
    t0 = time.perf_counter()
    secs: list[dict] = []
    masks, mask_um = [], []
    for s in SECTIONS:
        image, spot_file, _counts = her2st_paths(data, PATIENT, s)
        px = estimate_pixel_size_um(spot_file)
        raw = pl.read_csv(spot_file, separator="\t")
        ids = np.array([f"{int(x)}x{int(y)}" for x, y in zip(raw["x"], raw["y"])])
        xy_px = np.column_stack([raw["pixel_x"].to_numpy(), raw["pixel_y"].to_numpy()]).astype(np.float64)
        thumb, scale = read_thumbnail(image, 1024)
        m = tissue_mask(thumb)
        masks.append(m)
        mask_um.append(px / scale)
        secs.append({"name": s, "image": image, "px_um": px, "spot_ids": ids, "xy_px": xy_px})
    t_masks = time.perf_counter() - t0
    log(f"thumbnails + masks {t_masks:.1f}s")
    t1 = time.perf_counter()
    ref = len(SECTIONS) // 2
    regs = register_stack(masks, mask_um, SECTIONS, reference=ref, params=RegistrationParams())
    for s, r in zip(secs, regs):
        s["xy_um"] = to_common_frame(r, s["xy_px"] * s["px_um"])
        s["dice"] = r.dice_after
    t_reg = time.perf_counter() - t1
    log(f"registration {t_reg:.1f}s; dice {[round(r.dice_after, 3) for r in regs]}")
    t2 = time.perf_counter()
    tiles_root = zarr.open_group(str(cache / "tiles.zarr"), mode="w")
    for s in secs:
        rgb = read_rgb(s["image"])
        write_section_tiles(rgb, s["xy_px"], s["px_um"], tiles_root.require_group(s["name"]), source=str(s["image"]))
        del rgb
    t_tiles = time.perf_counter() - t2
    log(f"tiles {t_tiles:.1f}s")
    t3 = time.perf_counter()
    emb_root = zarr.open_group(str(cache / "embeddings.zarr"), mode="w")
    embed_tiles(tiles_root, emb_root, SECTIONS, get_encoder("histology", torch.device("cpu")))
    for s in secs:
        g = tiles_root[s["name"]]
        e = emb_root[s["name"]]
        s["spot_region"] = np.asarray(g["spot_region"][...], dtype=np.int64)
        s["spot_global"] = np.asarray(g["spot_global"][...], dtype=np.int64)
        s["region_xy_px"] = np.asarray(g["region_xy_px"][...])
        s["global_xy_px"] = np.asarray(g["global_xy_px"][...])
        for lv in ("spot", "region", "global"):
            s[f"emb_{lv}"] = np.asarray(e[lv][...], dtype=np.float32)
    t_emb = time.perf_counter() - t3
    log(f"embeddings {t_emb:.1f}s (dim {secs[0]['emb_spot'].shape[1]})")
    out = {"sections": secs, "seconds": {"masks": t_masks, "registration": t_reg, "tiles": t_tiles, "embeddings": t_emb}}
    f.write_bytes(pickle.dumps(out))
    return out


def read_section_counts(data: Path, s: str):
    from asign_assets.readers.counts import read_counts

    return read_counts(data / "ST-cnts" / f"{s}.tsv.gz")


def build_graph(prep: dict, z_um: list[float] | None = None, params=None):
    """graph.build_graph_3d over the cached stages (spots in the common frame).

    ``z_um``: one depth per section (default: the block layout of her2st.her2st_z_um).
    """
    from asign_assets.graph.build import GraphParams, build_graph_3d
    from asign_assets.importers.her2st import her2st_z_um

    secs = prep["sections"]
    z_um = her2st_z_um(SECTIONS) if z_um is None else z_um
    spots = pl.DataFrame({
        "section": np.concatenate([[s["name"]] * len(s["spot_ids"]) for s in secs]),
        "section_index": np.concatenate([[i] * len(s["spot_ids"]) for i, s in enumerate(secs)]).astype(np.int32),
        "spot_id": np.concatenate([s["spot_ids"] for s in secs]),
        "x_um": np.concatenate([s["xy_um"][:, 0] for s in secs]),
        "y_um": np.concatenate([s["xy_um"][:, 1] for s in secs]),
        "z_um": np.concatenate([[z_um[i]] * len(s["spot_ids"]) for i, s in enumerate(secs)]).astype(np.float64),
    })
    r_off = np.cumsum([0] + [len(s["region_xy_px"]) for s in secs])
    g_off = np.cumsum([0] + [len(s["global_xy_px"]) for s in secs])
    return build_graph_3d(
        spots,
        np.concatenate([s["emb_spot"] for s in secs]),
        np.concatenate([s["spot_region"] + r_off[i] for i, s in enumerate(secs)]),
        np.concatenate([s["spot_global"] + g_off[i] for i, s in enumerate(secs)]),
        np.concatenate([s["region_xy_px"] for s in secs]),
        np.concatenate([[i] * len(s["region_xy_px"]) for i, s in enumerate(secs)]),
        np.concatenate([s["global_xy_px"] for s in secs]),
        np.concatenate([[i] * len(s["global_xy_px"]) for i, s in enumerate(secs)]),
        params or GraphParams(),
    )


# ----------------------------------------------------------------------------- one choice


def measured_expression(data: Path, prep: dict, measured: list[str]):
    """(measured_idx, y_measured, genes, n_dropped) of one or several measured sections.

    Several sections: their counts are stacked over the genes they all measured and
    normalised together (one gene selection over all measured spots).
    """
    import scipy.sparse as sp

    secs = prep["sections"]
    names = np.concatenate([[s["name"]] * len(s["spot_ids"]) for s in secs])
    ids = np.concatenate([s["spot_ids"] for s in secs])
    nodes, mats, gene_lists = [], [], []
    for m in measured:
        cm = read_section_counts(data, m)
        row = {sid: i for i, sid in enumerate(cm.spot_ids.astype(str))}
        node_m = np.nonzero(names == m)[0]
        node_m = node_m[[ids[i] in row for i in node_m]]
        nodes.append(node_m)
        mats.append((sp.csr_matrix(cm.X[[row[s] for s in ids[node_m]]]), np.asarray(cm.genes).astype(str)))
        gene_lists.append(set(np.asarray(cm.genes).astype(str)))
    common = np.array(sorted(set.intersection(*gene_lists))) if len(measured) > 1 else mats[0][1]
    cols = [{g: j for j, g in enumerate(gn)} for _, gn in mats]
    counts = sp.vstack([X[:, [c[g] for g in common]] for (X, _), c in zip(mats, cols)]).tocsr()
    node_all = np.concatenate(nodes)
    keys = np.array([f"{names[i]}:{ids[i]}" for i in node_all])
    ad, info = build_expression(counts, keys, common, ExpressionParams(), source=",".join(f"{m}.tsv.gz" for m in measured))
    pos = {k: i for i, k in enumerate(keys)}
    kept = [pos[k] for k in ad.obs_names]
    return node_all[kept].astype(np.int64), np.asarray(ad.X, np.float32), np.asarray(ad.var_names), info["n_spots_dropped"]


BLEND_SHIFTS = (-0.4, -0.2, -0.1, 0.1, 0.2)


def run_choice(data: Path, prep: dict, graph, measured: str | list[str], params, device: torch.device) -> tuple[pl.DataFrame, dict]:
    """Train on the measured section(s), impute, score every other section against its truth."""
    from asign_assets.evaluation.baselines import run_baselines
    from asign_assets.model.inference import impute
    from asign_assets.model.inputs import ModelInputs
    from asign_assets.model.train import train_model

    measured_list = [measured] if isinstance(measured, str) else list(measured)
    secs = prep["sections"]
    names = np.concatenate([[s["name"]] * len(s["spot_ids"]) for s in secs])
    ids = np.concatenate([s["spot_ids"] for s in secs])
    t0 = time.perf_counter()
    # ---- expression of the measured section(s) only
    measured_idx, y_measured, genes, dropped = measured_expression(data, prep, measured_list)
    spot_emb = np.concatenate([s["emb_spot"] for s in secs])
    region_emb = np.concatenate([s["emb_region"] for s in secs])
    global_emb = np.concatenate([s["emb_global"] for s in secs])
    t_expr = time.perf_counter() - t0
    # ---- train + impute
    inputs = ModelInputs(graph, spot_emb, region_emb, global_emb, y_measured, measured_idx)
    res = train_model(inputs, params, device)
    t1 = time.perf_counter()
    out = impute(res, inputs, device)
    t_imp = time.perf_counter() - t1
    t2 = time.perf_counter()
    base = run_baselines(graph, spot_emb, y_measured, measured_idx)
    t_base = time.perf_counter() - t2
    # ---- truth (read only now), spots >= 100 counts of the other sections
    ev_rows, truth_rows, ev_secs = [], [], []
    for s in SECTIONS:
        if s in measured_list:
            continue
        c = read_section_counts(data, s)
        r = {sid: i for i, sid in enumerate(c.spot_ids.astype(str))}
        nodes = np.nonzero(names == s)[0]
        nodes = nodes[[ids[i] in r for i in nodes]]
        X = c.X[[r[ids[i]] for i in nodes]]
        tot = np.asarray(X.sum(1)).ravel()
        ok = tot >= ExpressionParams().min_counts
        truth_rows.append(normalise_to_genes(X[ok], c.genes, genes, "log1p_cp10k", missing="nan"))
        ev_rows.append(nodes[ok])
        ev_secs += [s] * int(ok.sum())
    ev = np.concatenate(ev_rows)
    truth = np.concatenate(truth_rows)
    preds = {
        "asign": out["blend"][ev], "asign_network": out["model"][ev], "asign_propagation": out["propagation"][ev],
        **{k: v[ev] for k, v in base.items()},
        "avg_knn_image": 0.5 * (base["gauss_knn"][ev] + base["image_2d"][ev]),
    }
    # the blend with its propagation weight moved by t (every gene): what a Δz-dependent
    # weight could reach on each section (accuracy_report.dz_blend_table)
    towards_prop = out["propagation"][ev] - out["model"][ev]
    preds.update({f"asign_w{t:+.2f}": out["blend"][ev] + t * towards_prop for t in BLEND_SHIFTS})
    df = evaluate_sections(preds, truth, np.array(ev_secs), y_measured.mean(0), y_measured.std(0), hvg_indices(y_measured, 50))
    df = df.with_columns(pl.lit("+".join(measured_list)).alias("measured"))
    timing = {"measured": "+".join(measured_list), "expression_s": t_expr, "train_s": res.seconds, "impute_s": t_imp, "baselines_s": t_base,
              "best_epoch": res.best_epoch, "epochs_run": len(res.curves), "n_measured": len(measured_idx),
              "epochs_all_members": sum(len(c) for c in res.member_curves),
              "dropped": dropped}
    return df, timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "her2st")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/asign_patient_c_cache"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--measured", nargs="*", default=SECTIONS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="TrainParams overrides key=value")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--out-md", type=Path, default=ROOT / "docs" / "patient_c.md",
                    help="write the final tables here (markdown); '-' to skip")
    args = ap.parse_args()
    from asign_assets.model.params import TrainParams, params_for

    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: HER2ST data folder not found")
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prep = prepare(args.data.resolve(), args.cache)
    log(f"prepared in {time.perf_counter() - t0:.1f}s (cached stage seconds {json.dumps({k: round(v, 1) for k, v in prep['seconds'].items()})})")
    if args.prepare_only:
        return
    tg = time.perf_counter()
    graph = build_graph(prep)
    log(f"graph {time.perf_counter() - tg:.1f}s: {graph.num_nodes} nodes, {graph.edge_index.shape[1]} edges, "
        f"types {torch.bincount(graph.edge_type, minlength=3).tolist()}")
    types = {f.name: f.type for f in TrainParams.__dataclass_fields__.values()}
    over = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        t = types[k]
        over[k] = (v.lower() in ("1", "true", "yes")) if t in ("bool", bool) else (int(v) if t in ("int", int) else (float(v) if t in ("float", float) else v))
    params = params_for(args.preset, **over)
    log(f"params {params}")
    dfs, timings = [], []
    for m in args.measured:
        df, tm = run_choice(args.data.resolve(), prep, graph, m, params, torch.device("cpu"))
        dfs.append(df)
        timings.append(tm)
        a = df.filter((pl.col("section") == "pooled") & (pl.col("method") == "asign"))
        log(f"measured {m}: " + ", ".join(f"{r['metric']} {r['value']:.3f}" for r in a.iter_rows(named=True)) + f" | {json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in tm.items()})}")
    all_df = pl.concat(dfs)
    mean = (all_df.filter(pl.col("section") == "pooled").group_by(["method", "metric"], maintain_order=True)
            .agg(pl.col("value").mean()).with_columns(pl.lit("pooled").alias("section")))
    print(f"\n## Mean over {len(args.measured)} choices of measured section (pooled over evaluated sections)\n")
    print(markdown_table(mean.select(["method", "section", "metric", "value"])))
    for m in args.measured:
        print(f"\n### measured {m}\n")
        print(markdown_table(all_df.filter(pl.col("measured") == m).drop("measured")))
    print("\n### seconds\n")
    print(pl.DataFrame(timings))
    total = time.perf_counter() - t0
    print(f"total {total:.1f}s")
    if str(args.out_md) != "-":
        md = report_markdown(mean, all_df, timings, params, args, graph, total)
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out_md.with_name(args.out_md.name + ".tmp")
        tmp.write_text(md)
        tmp.replace(args.out_md)
        log(f"wrote {args.out_md}")


def report_markdown(mean: pl.DataFrame, all_df: pl.DataFrame, timings: list[dict], params, args, graph, total_s: float) -> str:
    """docs/patient_c.md: the mean-over-choices table, per-choice ASIGN rows, settings, seconds."""
    from dataclasses import asdict

    from asign_assets.evaluation.metrics import METRICS

    asign = all_df.filter((pl.col("section") == "pooled") & (pl.col("method") == "asign"))
    lut = {(r["measured"], r["metric"]): r["value"] for r in asign.iter_rows(named=True)}
    per = ["| measured | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for m in args.measured:
        per.append(f"| {m} | " + " | ".join(f"{lut[(m, k)]:.3f}" for k in METRICS) + " |")
    tcols = ["measured", "train_s", "impute_s", "baselines_s", "best_epoch", "epochs_run", "n_measured"]
    trows = ["| " + " | ".join(tcols) + " |", "| --- |" + " ---: |" * (len(tcols) - 1)]
    for t in timings:
        trows.append("| " + " | ".join(f"{t[c]:.1f}" if isinstance(t[c], float) else str(t[c]) for c in tcols) + " |")
    p = asdict(params)
    return "\n".join([
        "# HER2ST patient C: ASIGN vs baselines",
        "",
        "Generated by `benchmarks/patient_c_eval.py` (do not edit by hand). Sections C2..C6; each section in turn",
        "is the measured one and the other four are imputed and scored against their held-out counts",
        "(250 genes by mean expression, log1p per 10k, spots with >= 100 counts). Metrics are pooled over",
        "the evaluated sections (unweighted mean of per-section values), then averaged over the",
        f"{len(args.measured)} choices of measured section.",
        "",
        f"## Mean over {len(args.measured)} choices of measured section",
        "",
        markdown_table(mean.select(["method", "section", "metric", "value"])),
        "",
        "`asign` is the final output (blend of network and propagation, ensemble-averaged and calibrated);",
        "`asign_network` and `asign_propagation` are its two parts. Baselines: `mean` profile, label",
        "propagation over `overlap` or `similarity` edges, `gauss_knn` (registration only), `image_2d`",
        "(ridge on spot embeddings), `avg_knn_image` (their average).",
        "",
        "## ASIGN per choice of measured section",
        "",
        "\n".join(per),
        "",
        "## Settings",
        "",
        f"- preset `{args.preset}`, overrides `{' '.join(args.set) or 'none'}`, torch threads {args.threads}, device cpu",
        f"- training parameters: `{json.dumps(p)}`",
        f"- graph: {int(graph.num_nodes)} nodes, {int(graph.edge_index.shape[1])} edges "
        f"(intra/overlap/similarity {torch.bincount(graph.edge_type, minlength=3).tolist()})",
        "",
        "## Seconds",
        "",
        "\n".join(trows),
        "",
        f"Total wall time {total_s:.0f} s (on a shared 2-core machine; cached registration/tiles/embeddings).",
        "",
    ])


if __name__ == "__main__":
    main()
