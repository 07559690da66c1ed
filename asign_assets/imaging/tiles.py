"""Multi-resolution patches for every spot of a section, written to zarr (v3).

Scale convention: every patch is defined at a COMMON PHYSICAL SCALE, not in the
image's own pixels, so sections scanned at different resolutions give comparable
patches. With the defaults:

- spot patch: 224 px at 0.8 um/px = 179 um square centred on the spot (the
  reference's 224 px field on HER2ST/legacy-ST scans, which are ~0.7-0.8 um/px,
  i.e. the 100 um spot plus context, without upsampling); ``spot_downsample`` stores
  it coarser (e.g. 56 px at 3.2 um/px) for scans coarser than 0.8 um/px, where 224 px
  would only upsample (``auto_spot_downsample`` picks the factor for a stack);
- region tiles: a grid of 512 px x 0.8 um/px = 410 um tiles, stored 4x
  downsampled (128 px at 3.2 um/px);
- global tiles: a grid of 1024 px x 0.8 um/px = 819 um tiles, stored 8x
  downsampled (128 px at 6.4 um/px).

Tile arrays are sharded (``batch`` tiles per file, one chunk per tile inside), so a
Visium-size stack writes thousands of files, not hundreds of thousands.

Grids are anchored at the image's top-left corner; only tiles that contain at
least one spot are stored (row-major order). A spot's own pixel (rounded) sits at
patch index ``[s // 2, s // 2]``; at native scale a patch is an exact pixel crop.
Anything outside the image is padded with white.

Patches are read as windows from a :class:`asign_assets.readers.slide.Slide` (batch by batch, at
the pyramid level matching each patch's stored resolution), so a whole-slide TIFF is
never held in memory; a JPEG is decoded once and windows are slices of it.
:func:`write_stack_tiles` does a stack's sections in a few worker processes, one decoded image each.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from asign_assets.errors import InputError
from asign_assets.runtime.parallel import local_group_path, map_in_processes
from asign_assets.readers.slide import Slide

if TYPE_CHECKING:  # pragma: no cover
    import zarr

__all__ = ["TILE_LEVELS", "TileParams", "SectionImage", "auto_spot_downsample", "write_section_tiles", "write_stack_tiles"]

TileLevel = Literal["spot", "region", "global"]
TILE_LEVELS: tuple[TileLevel, ...] = ("spot", "region", "global")


@dataclass(frozen=True)
class TileParams:
    """Patch sizes in px at ``spot_um_per_px``; ``*_downsample`` are storage factors."""

    spot_size: int = 224
    spot_um_per_px: float = 0.8
    region_size: int = 512
    global_size: int = 1024
    region_downsample: int = 4
    global_downsample: int = 8
    batch: int = 256  # spots resampled and written per step (bounds memory); also the zarr shard length
    spot_downsample: int = 1  # store spot patches at spot_um_per_px * this (see auto_spot_downsample)

    def __post_init__(self) -> None:
        if self.spot_size < 1 or self.spot_um_per_px <= 0 or self.batch < 1:
            raise ValueError("spot_size, spot_um_per_px and batch must be positive")
        for level in TILE_LEVELS:
            size, f = self._size_and_factor(level)
            if f < 1 or size < 1 or size % f:
                raise ValueError(f"{level}_size ({size}) must be a positive multiple of {level}_downsample ({f})")

    def _size_and_factor(self, level: TileLevel) -> tuple[int, int]:
        return getattr(self, f"{level}_size"), getattr(self, f"{level}_downsample")

    def stored_px(self, level: TileLevel) -> int:
        """Side of a stored tile of ``level`` in px (its size over its storage factor)."""
        size, f = self._size_and_factor(level)
        return size // f

    def stored_um_per_px(self, level: TileLevel) -> float:
        return self.spot_um_per_px * self._size_and_factor(level)[1]

    def tile_um(self, level: TileLevel) -> float:
        """Side of a tile of ``level`` on the tissue in um."""
        return self._size_and_factor(level)[0] * self.spot_um_per_px


def auto_spot_downsample(pixel_sizes_um: "list[float] | np.ndarray", params: TileParams = TileParams(), max_downsample: int = 4) -> int:
    """Largest power-of-two storage factor that never stores spot patches finer than the
    FINEST section's own pixels (one factor per stack, so features stay comparable).

    At 0.8 um/px a 224 px patch upsamples a 4 um/px scan 5x: 25x the pixels, disk and
    encoder time for no information. HER2ST (~0.69 um/px) and full-resolution Visium
    (~0.25-0.5 um/px) get 1, i.e. the unchanged 224 px patches."""
    finest = float(np.min(np.asarray(pixel_sizes_um, dtype=np.float64)))
    f = 1
    while (
        f * 2 <= max_downsample
        and params.spot_size % (f * 2) == 0
        and params.spot_um_per_px * f * 2 <= finest * (1 + 1e-6)
    ):
        f *= 2
    return f


def _validate(W: int, H: int, xy: np.ndarray, pixel_size_um: float, source: str) -> None:
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(source, f"pixel size must be positive, got {pixel_size_um}", field="pixel_size_um")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(source, f"spot coordinates must be [N, 2], got {xy.shape}")
    if not np.isfinite(xy).all():
        raise InputError(source, "spot coordinates contain NaN or infinite values")
    if xy.shape[0] == 0:
        return
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    if hi[0] > 1.5 * W or hi[1] > 1.5 * H:
        raise InputError(
            source,
            f"image is {W}x{H} px but spot coordinates reach x={hi[0]:.0f}, y={hi[1]:.0f}: "
            "the image is far smaller than the spots imply (downscaled image or wrong spot file?)",
        )
    bad = (xy[:, 0] < -0.5) | (xy[:, 0] > W - 0.5) | (xy[:, 1] < -0.5) | (xy[:, 1] > H - 0.5)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            source,
            f"{int(bad.sum())} spot(s) lie outside the {W}x{H} px image "
            f"(first: row {i} at x={xy[i, 0]:.1f}, y={xy[i, 1]:.1f}; coordinates: min {lo.round(1).tolist()}, max {hi.round(1).tolist()})",
        )


def _grid(xy: np.ndarray, tile_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Tiles (row, col) that hold spots, row-major, and each spot's tile index."""
    # spot pixel centre x covers edge coordinates [x, x+1) -> its centre is x + 0.5
    rc = np.floor((xy[:, ::-1] + 0.5) / tile_px).astype(np.int64)
    tiles, inverse = np.unique(rc, axis=0, return_inverse=True)
    return tiles, inverse.reshape(-1).astype(np.int32)


def _create(group: "zarr.Group", name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None, shard: int = 0):
    """One chunk per tile; with ``shard`` > 1, ``shard`` tiles share one file (zarr v3
    sharding): a tile is still read alone, but 100k tiles are not 100k tiny files."""
    kw: dict[str, Any] = {"shape": shape, "dtype": dtype, "overwrite": True}
    if chunks is not None:
        kw["chunks"] = tuple(max(1, c) for c in chunks)
        if shard > 1 and shape[0] > 1:
            kw["shards"] = (min(shard, shape[0]),) + kw["chunks"][1:]
    return group.create_array(name, **kw)


def write_section_tiles(
    image: Slide | np.ndarray,
    xy_px: np.ndarray,
    pixel_size_um: float,
    group: "zarr.Group",
    params: TileParams = TileParams(),
    source: str | None = None,
) -> dict:
    """Write one section's spot/region/global patches into ``group`` (see module doc).

    ``image`` is an open :class:`Slide` (read window by window) or a uint8 RGB array.
    Arrays: ``spot`` uint8 [N,s,s,3], ``region`` [R,r,r,3], ``global`` [G,g,g,3] (one
    chunk per tile), ``spot_region``/``spot_global`` int32 [N], ``region_xy_px``/
    ``global_xy_px`` float64 [R|G, 2] tile centres in own-image px. Input is validated
    before anything is written. Returns the metadata also stored in ``group.attrs``.
    """
    t0 = time.perf_counter()
    where = source or (image.source if isinstance(image, Slide) else "section image")
    slide = image if isinstance(image, Slide) else Slide.from_array(image, where)
    xy = np.asarray(xy_px, dtype=np.float64)
    _validate(slide.width, slide.height, xy, float(pixel_size_um), where)
    n = xy.shape[0]
    um = float(pixel_size_um)

    spot_scale = params.stored_um_per_px("spot") / um  # own px per stored patch px
    region_px = params.tile_um("region") / um
    global_px = params.tile_um("global") / um
    region_rc, spot_region = _grid(xy, region_px)
    global_rc, spot_global = _grid(xy, global_px)

    s, rs, gs = (params.stored_px(level) for level in TILE_LEVELS)
    a_spot = _create(group, "spot", (n, s, s, 3), np.uint8, (1, s, s, 3), params.batch)
    a_region = _create(group, "region", (len(region_rc), rs, rs, 3), np.uint8, (1, rs, rs, 3), params.batch)
    a_global = _create(group, "global", (len(global_rc), gs, gs, 3), np.uint8, (1, gs, gs, 3), params.batch)

    # Spot patches, in batches so memory stays bounded for Visium-size sections.
    half = (s // 2 + 0.5) * spot_scale
    origin = xy + 0.5 - half
    spot_boxes = np.c_[origin, origin + s * spot_scale]
    for b0 in range(0, n, params.batch):
        b1 = min(n, b0 + params.batch)
        a_spot[b0:b1] = slide.read_regions(spot_boxes[b0:b1], s)

    def tiles(rc: np.ndarray, tile_px: float, out: int, arr) -> np.ndarray:
        boxes = np.c_[rc[:, ::-1], rc[:, ::-1] + 1].astype(np.float64) * tile_px
        for b0 in range(0, len(rc), params.batch):
            b1 = min(len(rc), b0 + params.batch)
            arr[b0:b1] = slide.read_regions(boxes[b0:b1], out)
        # centre in pixel-centre coordinates (pixel i has centre i)
        return (rc[:, ::-1].astype(np.float64) + 0.5) * tile_px - 0.5

    region_xy = tiles(region_rc, region_px, rs, a_region)
    global_xy = tiles(global_rc, global_px, gs, a_global)

    _create(group, "spot_region", (n,), np.int32)[...] = spot_region
    _create(group, "spot_global", (n,), np.int32)[...] = spot_global
    _create(group, "region_xy_px", (len(region_rc), 2), np.float64)[...] = region_xy.reshape(-1, 2)
    _create(group, "global_xy_px", (len(global_rc), 2), np.float64)[...] = global_xy.reshape(-1, 2)

    meta = {
        "n_spots": int(n),
        "n_region": int(len(region_rc)),
        "n_global": int(len(global_rc)),
        "pixel_size_um": um,
        "spot_um_per_px": params.spot_um_per_px,
        "spot_size": s,
        "spot_downsample": params.spot_downsample,
        "spot_stored_um_per_px": params.stored_um_per_px("spot"),
        "spot_patch_um": params.tile_um("spot"),
        "region_tile_um": params.tile_um("region"),
        "global_tile_um": params.tile_um("global"),
        "region_stored_px": rs,
        "global_stored_px": gs,
        "region_downsample": params.region_downsample,
        "global_downsample": params.global_downsample,
        "region_um_per_px": params.stored_um_per_px("region"),
        "global_um_per_px": params.stored_um_per_px("global"),
        "grid_origin_px": [-0.5, -0.5],
        "params": {k: v for k, v in asdict(params).items()},
    }
    group.attrs.update(meta)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return meta


@dataclass(frozen=True)
class SectionImage:
    """One section to tile: its group name, image file, spot centres [N, 2] (own px) and um/px."""

    name: str
    image: Path
    xy_px: np.ndarray
    pixel_size_um: float


#: Chunks zarr encodes/decodes per batch. Its default (1) spends a fifth of a section's tiling
#: in per-chunk coroutine overhead (one chunk per tile); the bytes written are the same.
ZARR_CODEC_BATCH = 64


def zarr_batched() -> Any:
    """Context in which zarr reads and writes chunks :data:`ZARR_CODEC_BATCH` at a time."""
    import zarr

    return zarr.config.set({"codec_pipeline.batch_size": ZARR_CODEC_BATCH})


def _tile_section(root: "str | zarr.Group", params: TileParams, sec: SectionImage) -> tuple[dict, int]:
    """One section into a new group ``root/<name>`` (``root`` is a path in a worker process),
    its image opened and closed here; returns its metadata and the image's pyramid level count."""
    import zarr

    group = (zarr.open_group(root, mode="r+") if isinstance(root, str) else root).create_group(sec.name)
    with Slide(sec.image) as slide, zarr_batched():
        meta = write_section_tiles(slide, sec.xy_px, sec.pixel_size_um, group, params, source=str(sec.image))
        levels = len(slide.levels)
    gc.collect()  # the decoded image goes now, before this worker opens its next one
    return meta, levels


def write_stack_tiles(
    root: "zarr.Group",
    sections: Sequence[SectionImage],
    params: TileParams = TileParams(),
    workers: int = 1,
    on_section: Callable[[dict], None] | None = None,
) -> list[dict]:
    """:func:`write_section_tiles` for every section into ``root/<name>``, ``workers`` sections at
    a time (worker processes, see :mod:`asign_assets.runtime.parallel`; a root outside the local
    filesystem runs here); each section's image is opened, tiled and closed by one worker, so
    at most ``workers`` decoded images are held at once.

    The files are the same bytes whatever ``workers`` is. Returns one row per section
    (input order): section, spots, pyramid_levels, region/global tile counts, started_s
    (after the call) and seconds (its own wall time); ``on_section`` gets each row in the
    calling process (see :func:`asign_assets.runtime.parallel.map_in_processes` for when). An
    ``InputError`` (e.g. naming an image) is re-raised unchanged.
    """
    where = local_group_path(root) if workers > 1 else None
    rows: list[dict] = [{} for _ in sections]

    def done(i: int, result: tuple[dict, int], started: float, seconds: float) -> None:
        meta, levels = result
        rows[i] = {
            "section": sections[i].name,
            "spots": int(meta["n_spots"]),
            "pyramid_levels": levels,
            "region_tiles": int(meta["n_region"]),
            "global_tiles": int(meta["n_global"]),
            "started_s": round(started, 2),
            "seconds": round(seconds, 2),
        }
        if on_section is not None:
            on_section(rows[i])

    map_in_processes(partial(_tile_section, where or root, params), list(sections), workers if where else 1, on_result=done)
    return rows
