"""Imaging assets: `tiles` (multi-resolution patches) and `embeddings` (encoder features)."""

import dataclasses
import time

from typing import Optional

import dagster as dg
import numpy as np

from asign_assets.ingest import sections as sections_lib
from asign_assets.pipeline.automation import gpu_asset, sample_asset
from asign_assets.pipeline.resources import DeviceResource, StorageResource, sample_io
from asign_assets.pipeline.assets.metadata import StageMonitor, digest_arrays, log_progress, md_table, path_meta
from asign_assets.pipeline.assets.ingest import sections
from asign_assets.pipeline.assets.sources import raw_inputs
from asign_assets.imaging.encoder_names import EncoderKind, encoder_spec
from asign_assets.imaging.tiles import TileParams
from asign_assets.pipeline.config import params_from
from asign_assets.storage import layout


class TilesConfig(dg.Config):
    """Patch geometry at a common physical scale (um per px), so scanners are comparable
    (defaults: asign_assets.imaging.tiles.TileParams)."""

    spot_size: int = TileParams.spot_size
    spot_um_per_px: float = TileParams.spot_um_per_px
    region_size: int = TileParams.region_size
    global_size: int = TileParams.global_size
    region_downsample: int = TileParams.region_downsample
    global_downsample: int = TileParams.global_downsample
    spot_downsample: Optional[int] = None  # None: automatic (never store patches finer than the finest scan)
    workers: Optional[int] = None  # sections tiled at once (worker processes, one decoded image each); None: min(CPUs, sections, 4); 1: one by one


class EmbeddingsConfig(dg.Config):
    """The image encoder: `histology` (default, no weights) or `torchscript` (your own model,
    a TorchScript file at `encoder_path` on the machine that runs the step)."""

    encoder: EncoderKind = "histology"
    encoder_path: Optional[str] = None
    batch_size: int = 256
    standardise: bool = True
    threads: Optional[int] = 1  # torch intra-op threads, in each worker (1 avoids oversubscription next to other steps; None: torch's default)
    workers: Optional[int] = None  # sections encoded at once (worker processes; CPU encoders that pickle); None: min(CPUs, sections, 4); 1: one by one


@sample_asset(group_name="imaging", code_version="1", kinds={"zarr"}, deps=[sections, raw_inputs])
def tiles(context: dg.AssetExecutionContext, config: TilesConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Spot (224 px), region (512 px grid) and global (1024 px grid) patches of every spot, at a
    common physical scale, in zarr (one chunk per tile). Whole-slide TIFFs are read window by window
    at the matching pyramid level; JPEG/PNG are decoded once."""
    import zarr

    from asign_assets.runtime.parallel import resolve_workers
    from asign_assets.imaging.tiles import SectionImage, auto_spot_downsample, write_stack_tiles

    store, sid = sample_io(context, storage)
    base = params_from(config, TileParams, execution=("workers",))
    with StageMonitor().run() as mon:
        sec_dir = store.local_path(sid, "sections")
        records = sections_lib.load_records(sec_dir)
        spots = sections_lib.load_spots(sec_dir)
        factor = config.spot_downsample or auto_spot_downsample([r.pixel_size_um for r in records], base)
        params = dataclasses.replace(base, spot_downsample=factor)
        jobs = []
        for rec in records:
            sub = spots.filter(spots["section"] == rec.name)
            jobs.append(SectionImage(rec.name, rec.image, np.stack([sub["x_px"].to_numpy(), sub["y_px"].to_numpy()], 1), rec.pixel_size_um))
        workers = resolve_workers(config.workers, len(jobs))
        t0 = time.perf_counter()
        with store.write(sid, layout.path("tiles", "zarr")) as tmp:
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs["params"] = params.__dict__
            root.attrs["sections"] = [r.name for r in records]
            rows = write_stack_tiles(
                root, jobs, params, workers,
                on_section=lambda r: log_progress(context, f"section {r['section']}: {r['spots']} spot patches in {r['seconds']:.1f} s"),
            )
        wall = time.perf_counter() - t0
    version = digest_arrays(spots["x_px"].to_numpy(), spots["y_px"].to_numpy(), extra={"params": params.__dict__, "images": [(r.image, r.width, r.height) for r in records]})
    return dg.MaterializeResult(
        metadata={
            "sections": dg.MetadataValue.md(md_table(rows, ".2f")),
            "workers": workers,
            "tiling_seconds": round(wall, 2),  # wall time; the sections' seconds add up to more when they overlap
            "n_spots": int(spots.height),
            "spot_um_per_px": params.spot_um_per_px,
            "spot_downsample": params.spot_downsample,
            "region_downsample": params.region_downsample,
            "global_downsample": params.global_downsample,
            "path": path_meta(store, sid, layout.path("tiles", "zarr")),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(version),
    )


@gpu_asset(group_name="imaging", code_version="1", kinds={"zarr", "torch"}, deps=[tiles])
def embeddings(context: dg.AssetExecutionContext, config: EmbeddingsConfig, storage: StorageResource, device: DeviceResource) -> dg.MaterializeResult:
    """Features of every spot, region and global tile from the configured encoder, standardised
    within each section (zarr). CNN/TorchScript encoders run in the `gpu` pool."""
    import zarr

    from asign_assets.imaging.encoders import embed_tiles, get_encoder
    from asign_assets.runtime.parallel import resolve_workers

    store, sid = sample_io(context, storage)
    dev = device.torch_device()
    import torch

    old_threads = torch.get_num_threads()
    if config.threads:  # None (or 0, as before): torch's default
        torch.set_num_threads(config.threads)
    try:
        with StageMonitor().run() as mon:
            encoder = get_encoder(encoder_spec(config.encoder, config.encoder_path), dev)
            tiles_root = zarr.open_group(str(store.file(sid, "tiles", "zarr")), mode="r")
            names = list(tiles_root.attrs["sections"])
            workers = resolve_workers(config.workers, len(names))
            t0 = time.perf_counter()
            with store.write(sid, layout.path("embeddings", "zarr")) as tmp:
                out = zarr.open_group(str(tmp), mode="w")
                meta = embed_tiles(
                    tiles_root, out, names, encoder, batch_size=config.batch_size, standardise=config.standardise, workers=workers,
                    on_section=lambda name, row: log_progress(context, f"section {name}: {row['n_spot']} spots encoded in {row['seconds']:.1f} s"),
                )
                wall = time.perf_counter() - t0
                version = digest_arrays(*[np.asarray(out[f"{n}/spot"][:]) for n in names], extra={"encoder": encoder_spec(config.encoder, config.encoder_path)})
    finally:
        torch.set_num_threads(old_threads)
    per = meta.get("per_section") or meta.get("sections") or {}
    rows = [{"section": k, **v} for k, v in per.items()] if isinstance(per, dict) else per
    log_progress(context, f"encoder {encoder.name} v{encoder.version}: {encoder.dim} dims on {dev}")
    return dg.MaterializeResult(
        metadata={
            "encoder": f"{encoder.name} v{encoder.version}",
            "dim": int(encoder.dim),
            "device": str(dev),
            "workers": meta["workers"],  # 1 where the encoder cannot go to worker processes (GPU, TorchScript)
            "encoding_seconds": round(wall, 2),  # wall time; the sections' seconds add up to more when they overlap
            "sections": dg.MetadataValue.md(md_table(rows, ".2f")) if rows else "",
            "path": path_meta(store, sid, layout.path("embeddings", "zarr")),
            **mon.metadata(),
        },
        data_version=dg.DataVersion(version),
    )
