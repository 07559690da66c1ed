"""An H&E image you can read windows and thumbnails from, without holding it whole.

Whole-slide scans are 0.5-1.5 Gpx (a 40x section is ~25,500 x 27,200 px), so TIFF-family
files (TIFF/BigTIFF tiled or striped, pyramidal TIFF with SubIFDs or series levels,
OME-TIFF, and what tifffile reads of SVS/NDPI/SCN) are opened through tifffile's zarr
store: a window read decodes only the tiles (or strips) it touches, at the pyramid
level nearest to, but not coarser than, the requested scale. Thumbnails come from the
level nearest the thumbnail's resolution, area-averaged band by band, so no full-
resolution copy ever exists. JPEG/PNG and other formats go through Pillow
(:mod:`asign_assets.readers.images`): one whole decode, checked against the decode budget
before it happens, kept for all later windows (JPEG thumbnails use draft mode).

Coordinates are level-0 pixel edges: pixel (i, j) spans x in [i, i+1), y in [j, j+1).
Everything returned is uint8 RGB [h, w, 3]; RGBA is composited on white, greyscale is
repeated, 16-bit is scaled by 1/257, planar (samples-first) data is interleaved.
Outside the image is white.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from asign_assets.readers import images as imaging
from asign_assets.errors import InputError
from asign_assets.readers.paths import require_regular_file

__all__ = ["Level", "Slide", "file_pixel_size_um", "is_tiff"]

_FILL = 255
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A pixel size outside this range is a placeholder (72/96/300 dpi written by image
# software, 1 px/unit written by default), not a scanner calibration.
_PLAUSIBLE_UM = (0.05, 20.0)
_BAND_BYTES = 64 * 2**20  # decoded bytes per band of a block-wise thumbnail reduction

Reader = Callable[[int, int, int, int], np.ndarray]  # (x0, y0, x1, y1) inside the level -> uint8 RGB


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size and level-0 px per level px along x and y."""

    width: int
    height: int
    downsample_x: float
    downsample_y: float

    @property
    def downsample(self) -> float:
        return min(self.downsample_x, self.downsample_y)


def is_tiff(path: Path) -> bool:
    """TIFF or BigTIFF by magic bytes (SVS, NDPI, SCN and OME-TIFF are TIFFs)."""
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _check_file(path: Path) -> Path:
    path = Path(path)
    if require_regular_file(path, "image file").st_size == 0:
        raise InputError(path, "image file is empty (0 bytes)")
    return path


# --------------------------------------------------------------------------- pixel conversion


def _to_rgb8(a: np.ndarray, photometric: int, colormap: np.ndarray | None, hi: float) -> np.ndarray:
    """[h, w, c] samples of any dtype -> uint8 RGB (the TIFF counterpart of imaging's conversion)."""
    if colormap is not None:  # palette: indices into a 16-bit colour map
        lut = (colormap.T.astype(np.uint32) // 257).astype(np.uint8)
        return lut[np.clip(a[..., 0].astype(np.int64), 0, len(lut) - 1)]
    if a.dtype == np.uint8:
        v = a
    elif a.dtype == np.uint16:
        v = (a // 257).astype(np.uint8)
    else:
        v = np.clip(np.nan_to_num(a.astype(np.float32)) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    c = v.shape[2]
    colour = v[..., :3] if c >= 3 else np.repeat(v[..., :1], 3, axis=2)
    if photometric == 0:  # MINISWHITE
        colour = 255 - colour
    if c in (2, 4):  # the last sample is alpha
        alpha = v[..., c - 1 : c].astype(np.float32) / 255.0
        out = colour.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(colour)


def _largest_series(tif: Any) -> Any:
    """The main image: the series with the most Y x X pixels (SVS/NDPI/SCN files also hold
    thumbnail, label and macro images as series; for most files this is series 0)."""

    def px(s: Any) -> int:
        ax = s.axes
        return int(s.shape[ax.index("Y")]) * int(s.shape[ax.index("X")]) if "Y" in ax and "X" in ax else 0

    return max(tif.series, key=px)


class _TiffLevels:
    """tifffile/zarr access to every pyramid level of a file's main image series."""

    def __init__(self, path: Path):
        import tifffile
        import zarr

        try:
            self.tif = tifffile.TiffFile(path)
            series = _largest_series(self.tif)
            self.axes = series.axes
            page = series.keyframe
            self.photometric = int(page.photometric)
            self.colormap = page.colormap if self.photometric == 3 else None
            self.arrays = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        except InputError:
            raise
        except Exception as exc:  # tifffile raises many types on malformed files
            if getattr(self, "tif", None) is not None:
                self.tif.close()
            raise InputError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from exc
        if "Y" not in self.axes or "X" not in self.axes:
            self.tif.close()
            raise InputError(path, f"TIFF series has axes {self.axes!r}, no Y and X image plane")
        self.sample_axis = "S" if "S" in self.axes else ("C" if "C" in self.axes else None)
        if self.sample_axis and self.arrays[0].shape[self.axes.index(self.sample_axis)] > 4:
            self.tif.close()
            raise InputError(path, f"TIFF has {self.arrays[0].shape[self.axes.index(self.sample_axis)]} channels along {self.sample_axis}; expected 1-4 (grey, RGB, RGBA)")
        dtype = self.arrays[0].dtype
        if dtype.kind == "f":  # float data is 0..1 unless the file says its maximum is larger
            self.hi = 1.0 if float(page.tags.valueof("SMaxSampleValue", 1.0) or 1.0) <= 1.0 else 65535.0
        else:  # integers span their type's range (uint16 is divided by 257 in _to_rgb8)
            self.hi = float(np.iinfo(dtype).max)
        budget = imaging.decode_budget_bytes()
        chunk = int(np.prod(self.arrays[0].chunks)) * dtype.itemsize
        if chunk > budget:
            self.tif.close()
            raise InputError(path, f"one TIFF strip/tile decodes to {chunk / 1e6:.0f} MB, over the decode budget of "
                             f"{budget / 1e6:.0f} MB ({imaging.DECODE_BUDGET_ENV}); {imaging.CONVERT_HINT}")

    def shape(self, i: int) -> tuple[int, int]:
        sh = self.arrays[i].shape
        return int(sh[self.axes.index("Y")]), int(sh[self.axes.index("X")])

    def chunk(self, i: int) -> tuple[int, int]:
        ch = self.arrays[i].chunks
        return int(ch[self.axes.index("Y")]), int(ch[self.axes.index("X")])

    def read(self, i: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Window [y0:y1, x0:x1] of level ``i`` as uint8 RGB; only its chunks are decoded."""
        idx: list[Any] = []
        kept: list[str] = []
        for ax in self.axes:
            if ax == "Y":
                idx.append(slice(y0, y1))
            elif ax == "X":
                idx.append(slice(x0, x1))
            elif ax == self.sample_axis:
                idx.append(slice(None))
            else:
                idx.append(0)
                continue
            kept.append(ax)
        a = np.asarray(self.arrays[i][tuple(idx)])
        if self.sample_axis is None:
            a = a[..., None]
            kept.append("S")
            sample = "S"
        else:
            sample = self.sample_axis
        a = np.moveaxis(a, [kept.index("Y"), kept.index("X"), kept.index(sample)], [0, 1, 2])
        return _to_rgb8(a, self.photometric, self.colormap, self.hi)

    def close(self) -> None:
        self.tif.close()


# --------------------------------------------------------------------------- windows


def _window_bounds(box: Sequence[float], ow: int, oh: int) -> tuple[int, int, int, int, bool]:
    """Integer window (x0, y0, x1, y1) a box needs, and whether the box is an exact crop
    (native scale, integer origin). Inexact boxes get room for the antialiasing filter."""
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / ow, (y1 - y0) / oh
    exact = abs(sx - 1.0) < 1e-9 and abs(sy - 1.0) < 1e-9 and abs(x0 - round(x0)) < 1e-6 and abs(y0 - round(y0)) < 1e-6
    if exact:
        ix0, iy0 = int(round(x0)), int(round(y0))
        return ix0, iy0, ix0 + ow, iy0 + oh, True
    pad = int(math.ceil(max(sx, sy, 1.0))) + 2
    return int(math.floor(x0)) - pad, int(math.floor(y0)) - pad, int(math.ceil(x1)) + pad, int(math.ceil(y1)) + pad, False


def _resample(read: Reader, W: int, H: int, box: Sequence[float], ow: int, oh: int) -> np.ndarray:
    """``oh x ow`` patch of ``box`` (pixel edges) from an image of W x H read by ``read``:
    white outside; exact copy at native scale; else Pillow's antialiased bilinear resize."""
    ix0, iy0, ix1, iy1, exact = _window_bounds(box, ow, oh)
    crop = np.full((iy1 - iy0, ix1 - ix0, 3), _FILL, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, W), min(iy1, H)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = read(sx0, sy0, sx1, sy1)
    if exact:
        return crop
    x0, y0, x1, y1 = box
    res = Image.fromarray(crop).resize((ow, oh), Image.Resampling.BILINEAR, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0))
    return np.asarray(res)


def _chunks_touched(b: np.ndarray, ch: tuple[int, int]) -> np.ndarray:
    """Number of (chunk_h x chunk_w) chunks each integer window [x0, y0, x1, y1] touches."""
    cy, cx = ch
    ny = np.floor_divide(b[:, 3] - 1, cy) - np.floor_divide(b[:, 1], cy) + 1
    nx = np.floor_divide(b[:, 2] - 1, cx) - np.floor_divide(b[:, 0], cx) + 1
    return np.maximum(ny, 0) * np.maximum(nx, 0)


class Slide:
    """A lazily read H&E image: ``width``/``height`` (level 0), ``levels``,
    ``read_region``/``read_regions`` (windows resampled to an output size) and
    ``thumbnail``. Use as a context manager (or call ``close``)."""

    def __init__(self, path: Path | str):
        self.path = _check_file(Path(path))
        self.source = str(self.path)
        self._tiff: _TiffLevels | None = None
        self._rgb: np.ndarray | None = None  # whole decoded image (Pillow-read and in-memory images)
        if is_tiff(self.path):
            self._tiff = _TiffLevels(self.path)
            shapes = [self._tiff.shape(i) for i in range(len(self._tiff.arrays))]
            self.kind = "tiff"
        else:
            w, h = imaging.read_image_size(self.path)
            with Image.open(self.path) as im:
                mode = im.mode
            # Fail at open, not at the first window: the pipeline needs the whole decode.
            imaging.check_decode_budget(self.path, mode, w, h)
            shapes = [(h, w)]
            self.kind = "pillow"
        self._set_levels(shapes)

    @classmethod
    def from_array(cls, rgb: np.ndarray, source: str = "image array") -> "Slide":
        """A single-level slide over an in-memory uint8 RGB(A) array (no copy)."""
        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise InputError(source, f"image must be uint8 [H, W, 3], got {a.dtype} {a.shape}")
        self = cls.__new__(cls)
        self.path, self.source, self.kind = None, source, "array"
        self._tiff, self._rgb = None, a
        self._set_levels([a.shape[:2]])
        return self

    def _set_levels(self, shapes: list[tuple[int, int]]) -> None:
        H, W = shapes[0]
        if W <= 0 or H <= 0:
            raise InputError(self.source, f"image has zero size {W}x{H}")
        self.width, self.height = int(W), int(H)
        self.levels = [Level(int(w), int(h), W / w, H / h) for h, w in shapes]

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        if self.kind != "array":
            self._rgb = None

    def __repr__(self) -> str:
        return f"Slide({self.source!r}, {self.width}x{self.height}, {len(self.levels)} level(s), {self.kind})"

    # ----------------------------------------------------------------- level access

    def level_for(self, downsample: float) -> int:
        """Index of the coarsest level not coarser than ``downsample`` (level-0 px per output px)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * (1 + 1e-6) and lv.downsample > self.levels[best].downsample:
                best = i
        return best

    def _reader(self, level: int) -> Reader:
        if self._tiff is not None:
            t = self._tiff
            return lambda x0, y0, x1, y1: t.read(level, x0, y0, x1, y1)
        if self._rgb is None:
            self._rgb = imaging.read_rgb(self.path)  # one whole decode (budget-checked), kept
        rgb = self._rgb
        return lambda x0, y0, x1, y1: rgb[y0:y1, x0:x1, :3]

    def _chunk(self, level: int) -> tuple[int, int] | None:
        return self._tiff.chunk(level) if self._tiff is not None else None

    # ----------------------------------------------------------------- windows

    def read_region(self, x0: float, y0: float, x1: float, y1: float, out_size: int | tuple[int, int]) -> np.ndarray:
        """uint8 RGB [oh, ow, 3] of the level-0 box (x0, y0, x1, y1) (pixel edges), resampled
        to ``out_size`` (int = square, or (w, h)) from the level nearest to, not coarser
        than, the requested scale. A native-scale box with integer origin is an exact crop."""
        return self.read_regions(np.array([[x0, y0, x1, y1]], dtype=np.float64), out_size)[0]

    def read_regions(self, boxes: np.ndarray, out_size: int | tuple[int, int], group_px: int = 2048) -> np.ndarray:
        """``read_region`` for many boxes [n, 4] of one output size -> [n, oh, ow, 3].

        Boxes are grouped by a coarse grid (``group_px`` level px, at least 4 boxes wide);
        a group whose bounding window decodes no more tile/strip chunks than its boxes'
        own windows together is read as one window, otherwise box by box."""
        ow, oh = (out_size, out_size) if isinstance(out_size, (int, np.integer)) else (int(out_size[0]), int(out_size[1]))
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty((len(b), oh, ow, 3), dtype=np.uint8)
        if len(b) == 0:
            return out
        scale = np.minimum((b[:, 2] - b[:, 0]) / ow, (b[:, 3] - b[:, 1]) / oh)
        uniq, inv = np.unique(scale, return_inverse=True)
        lv_of = np.array([self.level_for(float(s)) for s in uniq])[inv.reshape(-1)]
        for li in np.unique(lv_of):
            lv = self.levels[int(li)]
            sel = np.flatnonzero(lv_of == li)
            lb = b[sel] / np.array([lv.downsample_x, lv.downsample_y, lv.downsample_x, lv.downsample_y])
            read = self._reader(int(li))
            ch = self._chunk(int(li))
            if ch is None:  # in memory: every window is a slice
                for k, i in enumerate(sel):
                    out[i] = _resample(read, lv.width, lv.height, lb[k], ow, oh)
                continue
            win = np.array([_window_bounds(x, ow, oh)[:4] for x in lb], dtype=np.int64)
            clip = np.c_[np.maximum(win[:, :2], 0), np.minimum(win[:, 2], lv.width), np.minimum(win[:, 3], lv.height)]
            cell = max(group_px, 4 * int(np.max(win[:, 2:] - win[:, :2])))
            keys = np.floor_divide(win[:, :2], cell)
            _, grp = np.unique(keys, axis=0, return_inverse=True)
            for g in np.unique(grp):
                m = np.flatnonzero(grp.reshape(-1) == g)
                gx0, gy0 = clip[m, 0].min(), clip[m, 1].min()
                gx1, gy1 = clip[m, 2].max(), clip[m, 3].max()
                one = _chunks_touched(np.array([[gx0, gy0, gx1, gy1]]), ch)[0]
                if len(m) > 1 and gx1 > gx0 and gy1 > gy0 and one <= _chunks_touched(clip[m], ch).sum():
                    buf = read(int(gx0), int(gy0), int(gx1), int(gy1))

                    def sub(x0: int, y0: int, x1: int, y1: int, buf: np.ndarray = buf, gx0: int = int(gx0), gy0: int = int(gy0)) -> np.ndarray:
                        return buf[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0]

                    for k in m:
                        out[sel[k]] = _resample(sub, lv.width, lv.height, lb[k], ow, oh)
                else:
                    for k in m:
                        out[sel[k]] = _resample(read, lv.width, lv.height, lb[k], ow, oh)
        return out

    # ----------------------------------------------------------------- thumbnails

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """Area-averaged RGB thumbnail whose longer side is ``max_side`` (never enlarged) and
        its scale (thumbnail px per level-0 px), as ``imaging.read_thumbnail`` returns.

        Read from the level nearest the thumbnail's resolution (not coarser), reduced band
        by band (``_BAND_BYTES`` at a time) by integer-factor block means, then resized
        by the remaining (< 2x) factor with a box filter."""
        if max_side < 1:
            raise ValueError("max_side must be >= 1")
        if self.kind == "pillow":
            return imaging.read_thumbnail(self.path, max_side)  # JPEG draft mode
        W, H = self.width, self.height
        scale = min(1.0, max_side / max(W, H))
        tw, th = max(1, round(W * scale)), max(1, round(H * scale))
        li = self.level_for(1.0 / scale)
        lv = self.levels[li]
        k = max(1, int(math.floor(min(lv.width / tw, lv.height / th) + 1e-9)))
        read = self._reader(li)
        ch = self._chunk(li) or (lv.height, lv.width)
        row_bytes = lv.width * 3
        rows = max(k, _BAND_BYTES // row_bytes // k * k)  # whole k-blocks per band
        aligned = math.lcm(k, ch[0])
        if aligned * row_bytes <= 4 * _BAND_BYTES:  # and whole strips/tile rows, so none is decoded twice
            rows = max(aligned, rows // aligned * aligned)
        cols = np.arange(0, lv.width, k)
        ncol = np.diff(np.append(cols, lv.width)).astype(np.float32)
        small = np.empty((-(-lv.height // k), len(cols), 3), dtype=np.float32)
        for y0 in range(0, lv.height, rows):
            y1 = min(lv.height, y0 + rows)
            band = read(0, y0, lv.width, y1)
            starts = np.arange(0, y1 - y0, k)
            nrow = np.diff(np.append(starts, y1 - y0)).astype(np.float32)
            sums = np.add.reduceat(np.add.reduceat(band, starts, axis=0, dtype=np.uint32), cols, axis=1)
            small[y0 // k : y0 // k + len(starts)] = sums / (nrow[:, None, None] * ncol[None, :, None])
        thumb = np.clip(small + 0.5, 0, 255).astype(np.uint8)
        if thumb.shape[:2] != (th, tw):
            thumb = np.asarray(Image.fromarray(thumb).resize((tw, th), Image.Resampling.BOX))
        return np.ascontiguousarray(thumb), float(scale)


# --------------------------------------------------------------------------- pixel size

_UNIT_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _plausible(um: float) -> bool:
    return math.isfinite(um) and _PLAUSIBLE_UM[0] <= um <= _PLAUSIBLE_UM[1]


def _ome_pixel_size(xml: str) -> float | None:
    """PhysicalSizeX of the first OME Pixels element, in um (OME's default unit is um)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            if unit not in _UNIT_UM:
                return None
            return float(el.attrib["PhysicalSizeX"]) * _UNIT_UM[unit]
    return None


def _tiff_pixel_size(path: Path) -> tuple[float, str] | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if tif.is_ome and tif.ome_metadata:
            um = _ome_pixel_size(tif.ome_metadata)
            if um is not None and _plausible(um):
                return um, "OME PhysicalSizeX"
        if tif.is_svs:
            m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
            if m and _plausible(float(m.group(1))):
                return float(m.group(1)), "SVS MPP"
        xres = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if xres is None:
            return None
        num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
        px_per_unit = num / den if den else 0.0
        unit_v = int(unit.value) if unit is not None else 2  # TIFF default: inch
        per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit_v)
        if per_unit_um is None or px_per_unit <= 0:
            return None
        um = per_unit_um / px_per_unit
        if not _plausible(um):
            return None
        where = "NDPI XResolution" if tif.is_ndpi else "TIFF XResolution"
        return um, f"{where} ({'cm' if unit_v == 3 else 'inch'})"


def file_pixel_size_um(path: Path | str) -> tuple[float, str] | None:
    """Pixel size (um per level-0 pixel) recorded in the image file, and where it came from,
    or None when the file has none or only a placeholder.

    Sources, in order: OME-XML ``Pixels/@PhysicalSizeX`` (with its unit) -> "OME PhysicalSizeX";
    the Aperio ``MPP = ...`` field of an SVS description -> "SVS MPP"; the TIFF
    ``XResolution``/``ResolutionUnit`` tags (NDPI writes them in cm) -> "TIFF XResolution
    (cm|inch)" / "NDPI XResolution (cm)"; a JPEG's JFIF density or a PNG's pHYs chunk ->
    "JPEG dpi" / "PNG dpi". Leica SCN's XML sizes are not read (give the pixel size in the
    manifest). Values outside 0.05-20 um/px are ignored: image software writes 72,
    96 or 300 dpi (352, 265, 85 um/px) as a default, not as a calibration, and unit-less
    resolution tags carry no physical size at all. Only the x pixel size is reported
    (scanners write square pixels). Raises InputError only for a missing or empty file;
    an unreadable file gives None (the readers report it)."""
    path = _check_file(Path(path))
    try:
        if is_tiff(path):
            return _tiff_pixel_size(path)
        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            fmt = im.format
    except Exception:  # malformed metadata: no calibration; the image readers report the file
        return None
    if dpi and float(dpi[0]) > 0:
        um = 25400.0 / float(dpi[0])
        if _plausible(um):
            return um, f"{fmt or 'image'} dpi"
    return None
