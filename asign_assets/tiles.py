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
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from asign_assets.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import zarr

__all__ = ["TileParams", "auto_spot_downsample", "write_section_tiles", "extract_patch"]

_FILL = 255


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
        if self.spot_downsample < 1 or self.spot_size % self.spot_downsample:
            raise ValueError(f"spot_size ({self.spot_size}) must be a positive multiple of spot_downsample ({self.spot_downsample})")
        for size, f, name in ((self.region_size, self.region_downsample, "region"), (self.global_size, self.global_downsample, "global")):
            if f < 1 or size < 1 or size % f:
                raise ValueError(f"{name}_size ({size}) must be a positive multiple of {name}_downsample ({f})")

    @property
    def spot_stored(self) -> int:
        return self.spot_size // self.spot_downsample

    @property
    def spot_stored_um_per_px(self) -> float:
        return self.spot_um_per_px * self.spot_downsample

    @property
    def region_stored(self) -> int:
        return self.region_size // self.region_downsample

    @property
    def global_stored(self) -> int:
        return self.global_size // self.global_downsample

    @property
    def region_tile_um(self) -> float:
        return self.region_size * self.spot_um_per_px

    @property
    def global_tile_um(self) -> float:
        return self.global_size * self.spot_um_per_px


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


def extract_patch(rgb: np.ndarray, box: tuple[float, float, float, float], out: int) -> np.ndarray:
    """``out x out`` uint8 RGB patch resampled from ``box`` = (x0, y0, x1, y1) in pixel-edge
    coordinates (pixel i spans [i, i+1)); white outside the image. Integer boxes at
    native scale are copied exactly; otherwise antialiased bilinear resampling."""
    H, W = rgb.shape[:2]
    x0, y0, x1, y1 = box
    scale = (x1 - x0) / out
    exact = abs(scale - 1.0) < 1e-9 and abs(x0 - round(x0)) < 1e-6 and abs(y0 - round(y0)) < 1e-6
    if exact:
        ix0, iy0 = int(round(x0)), int(round(y0))
        ix1, iy1 = ix0 + out, iy0 + out
    else:
        pad = int(math.ceil(max(scale, 1.0))) + 2  # room for the antialiasing filter support
        ix0, iy0 = int(math.floor(x0)) - pad, int(math.floor(y0)) - pad
        ix1, iy1 = int(math.ceil(x1)) + pad, int(math.ceil(y1)) + pad
    crop = np.full((iy1 - iy0, ix1 - ix0, 3), _FILL, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, W), min(iy1, H)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = rgb[sy0:sy1, sx0:sx1, :3]
    if exact:
        return crop
    im = Image.fromarray(crop)
    res = im.resize((out, out), Image.Resampling.BILINEAR, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0))
    return np.asarray(res)


def _validate(rgb: np.ndarray, xy: np.ndarray, pixel_size_um: float, source: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise InputError(source, f"image must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(source, f"pixel size must be positive, got {pixel_size_um}", field="pixel_size_um")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(source, f"spot coordinates must be [N, 2], got {xy.shape}")
    if not np.isfinite(xy).all():
        raise InputError(source, "spot coordinates contain NaN or infinite values")
    if xy.shape[0] == 0:
        return
    H, W = rgb.shape[:2]
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
    rgb: np.ndarray,
    xy_px: np.ndarray,
    pixel_size_um: float,
    group: "zarr.Group",
    params: TileParams = TileParams(),
    source: str | None = None,
) -> dict:
    """Write one section's spot/region/global patches into ``group`` (see module doc).

    Arrays: ``spot`` uint8 [N,s,s,3], ``region`` [R,r,r,3], ``global`` [G,g,g,3] (one
    chunk per tile), ``spot_region``/``spot_global`` int32 [N], ``region_xy_px``/
    ``global_xy_px`` float64 [R|G, 2] tile centres in own-image px. Input is validated
    before anything is written. Returns the metadata also stored in ``group.attrs``.
    """
    t0 = time.perf_counter()
    where = source or "section image"
    rgb = np.asarray(rgb)
    xy = np.asarray(xy_px, dtype=np.float64)
    _validate(rgb, xy, float(pixel_size_um), where)
    n = xy.shape[0]
    um = float(pixel_size_um)

    spot_scale = params.spot_stored_um_per_px / um  # own px per stored patch px
    region_px = params.region_tile_um / um
    global_px = params.global_tile_um / um
    region_rc, spot_region = _grid(xy, region_px)
    global_rc, spot_global = _grid(xy, global_px)

    s, rs, gs = params.spot_stored, params.region_stored, params.global_stored
    a_spot = _create(group, "spot", (n, s, s, 3), np.uint8, (1, s, s, 3), params.batch)
    a_region = _create(group, "region", (len(region_rc), rs, rs, 3), np.uint8, (1, rs, rs, 3), params.batch)
    a_global = _create(group, "global", (len(global_rc), gs, gs, 3), np.uint8, (1, gs, gs, 3), params.batch)

    # Spot patches, in batches so memory stays bounded for Visium-size sections.
    half = (s // 2 + 0.5) * spot_scale
    for b0 in range(0, n, params.batch):
        b1 = min(n, b0 + params.batch)
        buf = np.empty((b1 - b0, s, s, 3), dtype=np.uint8)
        for k, (x, y) in enumerate(xy[b0:b1]):
            x0 = x + 0.5 - half
            y0 = y + 0.5 - half
            buf[k] = extract_patch(rgb, (x0, y0, x0 + s * spot_scale, y0 + s * spot_scale), s)
        a_spot[b0:b1] = buf

    def tiles(rc: np.ndarray, tile_px: float, out: int, arr) -> np.ndarray:
        for b0 in range(0, len(rc), params.batch):
            b1 = min(len(rc), b0 + params.batch)
            buf = np.empty((b1 - b0, out, out, 3), dtype=np.uint8)
            for k, (r, c) in enumerate(rc[b0:b1]):
                buf[k] = extract_patch(rgb, (c * tile_px, r * tile_px, (c + 1) * tile_px, (r + 1) * tile_px), out)
            arr[b0:b1] = buf
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
        "spot_stored_um_per_px": params.spot_stored_um_per_px,
        "spot_patch_um": params.spot_size * params.spot_um_per_px,
        "region_tile_um": params.region_tile_um,
        "global_tile_um": params.global_tile_um,
        "region_stored_px": rs,
        "global_stored_px": gs,
        "region_downsample": params.region_downsample,
        "global_downsample": params.global_downsample,
        "region_um_per_px": params.spot_um_per_px * params.region_downsample,
        "global_um_per_px": params.spot_um_per_px * params.global_downsample,
        "grid_origin_px": [-0.5, -0.5],
        "params": {k: v for k, v in asdict(params).items()},
    }
    group.attrs.update(meta)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return meta
