"""Spatial assets: `registrations` (sections in a common 3D frame) and `graph_3d`."""

import json
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl

from asign_assets.ingest import sections as sections_lib
from asign_assets.pipeline.automation import sample_asset
from asign_assets.pipeline.resources import StorageResource, sample_io
from asign_assets.pipeline.assets.metadata import StageMonitor, digest_arrays, log_progress, md_image, md_table, path_meta, viewer_url
from asign_assets.pipeline.assets.imaging import embeddings, tiles
from asign_assets.pipeline.assets.ingest import sections
from asign_assets.pipeline.assets.sources import raw_inputs
from asign_assets.results.plots import png_bytes
from asign_assets.registration.params import RegistrationParams
from asign_assets.storage.stack_inputs import section_names, stacked, tile_arrays
from asign_assets.pipeline.config import param_fields, params_from
from asign_assets.storage import layout

DICE_CHECK = "registration_dice"


class RegistrationConfig(dg.Config):
    """Mask registration to the reference measured section (rigid multi-start, flips, neighbour chains)."""

    working_um_per_px: float = RegistrationParams.working_um_per_px
    n_angles: int = 16  # fewer starts than the library default (36): enough for stacks of serial sections
    try_flip: bool = RegistrationParams.try_flip
    refine: Literal["none", "affine", "bspline"] = RegistrationParams.refine
    compose_neighbours: bool = RegistrationParams.compose_neighbours
    min_dice: float = RegistrationParams.min_dice


class GraphConfig(dg.Config):
    """Edges of the 3D spot graph, scaled to the manifest's spot pitch and diameter."""

    k_intra: int = 6
    overlap: Literal["iou", "radius", "gaussian"] = "gaussian"  # true discs | enlarged discs | distance weight
    k_similarity: int = 3
    similarity_radius_pitches: float = 3.0  # anatomy-aware: similarity candidates within this many pitches
    similarity_sections: int = 2  # similarity edges to sections up to this many steps away
    neighbour_sections: int = 2  # overlap edges to sections up to this many steps away (measured: +0.004 gene_pcc on HER2ST C)
    k_tile: int = 6


@sample_asset(
    group_name="registration",
    code_version="1",
    kinds={"parquet", "png"},
    deps=[sections],
    check_specs=[dg.AssetCheckSpec(DICE_CHECK, asset="registrations", blocking=True,
                                   description="Every section's tissue Dice after registration is at least 0.85.")],
    description="Every section aligned to the reference measured section (the one nearest the stack's middle; SimpleITK), spots in a common 3D frame (um), "
    "per-section QC and an overlay PNG. Blocking check: Dice after registration >= 0.85.",
)
def registrations(context: dg.AssetExecutionContext, config: RegistrationConfig, storage: StorageResource) -> dg.MaterializeResult:
    from asign_assets.registration.masks import warp_masks
    from asign_assets.registration.overlay import render_overlay
    from asign_assets.registration.search import register_stack
    from asign_assets.registration.transform_io import save_transform
    from asign_assets.registration.transforms import to_common_frame

    store, sid = sample_io(context, storage)
    with StageMonitor().run() as mon:
        sec_dir = store.local_path(sid, "sections")
        records = sections_lib.load_records(sec_dir)
        spots = sections_lib.load_spots(sec_dir)
        ref = sections_lib.reference_record(records).section_index
        masks = [sections_lib.load_mask(sec_dir, r.name) for r in records]
        mask_um = [r.pixel_size_um / r.thumb_scale for r in records]
        params = params_from(config, RegistrationParams)
        regs = register_stack(masks, mask_um, [r.name for r in records], ref, params)
        xs, ys = np.empty(spots.height), np.empty(spots.height)
        sec_idx = spots["section_index"].to_numpy()
        for rec, reg in zip(records, regs):
            rows = np.flatnonzero(sec_idx == rec.section_index)
            own_um = np.stack([spots["x_px"].to_numpy()[rows], spots["y_px"].to_numpy()[rows]], 1) * rec.pixel_size_um
            common = to_common_frame(reg, own_um)
            xs[rows], ys[rows] = common[:, 0], common[:, 1]
        z = np.array([records[i].z_um for i in sec_idx])
        out = spots.with_columns(pl.Series("x_um", xs), pl.Series("y_um", ys), pl.Series("z_um", z))
        qc = pl.DataFrame([reg.qc_row() for reg in regs])
        thumbs = [sections_lib.load_thumbnail(sec_dir, r.name) for r in records]
        overlay = render_overlay(warp_masks(masks, mask_um, regs, ref), background=thumbs[ref])
        png = png_bytes(overlay)
        with store.write(sid, "registrations") as tmp:
            (tmp / layout.name("registrations", "transforms")).mkdir(parents=True)
            for rec, reg in zip(records, regs):
                save_transform(reg.transform, tmp / layout.name("registrations", "transforms") / f"{rec.name}.tfm")
            out.write_parquet(tmp / layout.name("registrations", "spots"), statistics=False)
            qc.write_parquet(tmp / layout.name("registrations", "qc"), statistics=False)
            (tmp / layout.name("registrations", "overlay")).write_bytes(png)
    failed = qc.filter(pl.col("dice_after") < config.min_dice)
    qc_rows = qc.select("section", "dice_before", "dice_after", "flipped", "rotation_deg", "seconds").to_dicts()
    for r in qc_rows:
        log_progress(context, f"section {r['section']}: Dice {r['dice_before']:.3f} -> {r['dice_after']:.3f}, rotation {r['rotation_deg']:.1f} deg{' (flipped)' if r['flipped'] else ''}")
    check = dg.AssetCheckResult(
        check_name=DICE_CHECK,
        passed=failed.height == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            "all sections registered"
            if failed.height == 0
            else f"registration failed for {failed['section'].to_list()}: Dice after {[round(v, 3) for v in failed['dice_after'].to_list()]} "
            f"< {config.min_dice} (tissue shapes could not be matched: check the images, or the section order / a wrong image)"
        ),
        metadata={
            "min_dice_after": float(qc["dice_after"].min()),
            "threshold": config.min_dice,
            "qc": dg.MetadataValue.md(md_table(qc_rows)),
        },
    )
    version = digest_arrays(xs, ys, z)
    return dg.MaterializeResult(
        metadata={
            "qc": dg.MetadataValue.md(md_table(qc_rows)),
            "overlay": md_image(png_bytes(overlay, 480), "overlay"),
            "overlay_path": path_meta(store, sid, layout.path("registrations", "overlay")),
            "viewer": viewer_url(sid),  # inline link; the markdown image above opens in a dialog only
            "min_dice_after": float(qc["dice_after"].min()),
            "flipped_sections": ", ".join(qc.filter(pl.col("flipped"))["section"].to_list()) or "none",
            "path": path_meta(store, sid, "registrations"),
            **mon.metadata(),
        },
        check_results=[check],
        data_version=dg.DataVersion(version),
    )


@sample_asset(
    group_name="graph",
    code_version="1",
    kinds={"torch", "parquet"},
    deps=[registrations, embeddings, tiles, raw_inputs],
    description="Sparse 3D spot graph (torch_geometric): lattice kNN within sections, registered overlap and "
    "anatomy-limited image similarity across sections, plus region/global tile graphs.",
)
def graph_3d(context: dg.AssetExecutionContext, config: GraphConfig, storage: StorageResource) -> dg.MaterializeResult:
    import torch
    import zarr

    from asign_assets.graph.build import GraphParams, build_graph_3d, write_edges_parquet
    from asign_assets.graph.edge_types import EDGE_TYPE_NAMES

    store, sid = sample_io(context, storage)
    with StageMonitor().run() as mon:
        spots = pl.read_parquet(store.file(sid, "registrations", "spots"))
        emb_root = zarr.open_group(str(store.file(sid, "embeddings", "zarr")), mode="r")
        tiles_root = zarr.open_group(str(store.file(sid, "tiles", "zarr")), mode="r")
        names = section_names(tiles_root)
        spot_emb = stacked(emb_root, names, "spot")
        sr, sg, rxy, rsec, gxy, gsec = tile_arrays(tiles_root, names)
        manifest = store.load_registered(sid).without_truth()
        params = GraphParams.for_lattice(
            manifest.spot_pitch_um, manifest.spot_diameter_um,
            **param_fields(config, GraphParams, execution=("similarity_radius_pitches",), similarity_radius_um=config.similarity_radius_pitches * manifest.spot_pitch_um),
        )
        data = build_graph_3d(spots, spot_emb, sr, sg, rxy, rsec, gxy, gsec, params)
        with store.write(sid, "graph_3d") as tmp:
            tmp.mkdir()
            torch.save(data, tmp / layout.name("graph_3d", "graph"))
            write_edges_parquet(data, tmp / layout.name("graph_3d", "edges"))
            (tmp / layout.name("graph_3d", "params")).write_text(json.dumps(params.__dict__, default=str))
    et = data.edge_type.numpy()
    counts = {name: int((et == i).sum()) for i, name in enumerate(EDGE_TYPE_NAMES)}
    log_progress(context, f"{data.num_nodes} nodes, edges {counts}")
    return dg.MaterializeResult(
        metadata={
            "nodes": int(data.num_nodes),
            "edges": dg.MetadataValue.md(md_table([{"type": k, "edges": v} for k, v in counts.items()])),
            "region_tiles": int(len(rxy)),
            "global_tiles": int(len(gxy)),
            "params": dg.MetadataValue.json({k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in params.__dict__.items()}),
            "path": path_meta(store, sid, "graph_3d"),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(digest_arrays(data.edge_index.numpy(), data.edge_weight.numpy())),
    )
