"""Reading H&E images (JPEG, PNG, small TIFFs) through Pillow, and finding the tissue on them.

These readers decode whole images, so every decode is checked against a byte budget
first (:func:`decode_budget_bytes`); whole-slide TIFFs are read window by window
through :mod:`asign_assets.readers.slide` instead. Thumbnails of JPEGs use draft mode (DCT
scaling), so a 92 Mpx slide costs ~0.1 s. Pixel coordinates follow the spot tables:
x = column, y = row, raw pixel grid (EXIF orientation is deliberately ignored, as the
spot coordinates are on the raw grid).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from asign_assets.errors import InputError
from asign_assets.readers.paths import require_regular_file

# Pillow's own bound counts pixels and would refuse (or only warn about) a file before
# anything is known about the decode; ours (decode_budget_bytes) counts the bytes the
# decode would need, per colour mode, and is checked before every decode. Header reads
# (size, mode, tags) never allocate pixel memory, so they stay unbounded.
Image.MAX_IMAGE_PIXELS = None
# Truncated files must fail loudly, never decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DECODE_BUDGET_ENV = "ASIGN_MAX_DECODE_MB"
DEFAULT_DECODE_BUDGET_MB = 3000.0  # a 750 Mpx RGB decode (4 B/px in Pillow): fits a 8-16 GB laptop
CONVERT_HINT = (
    "convert it to a tiled pyramidal TIFF, which is read window by window: "
    "`vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg --Q 90 --bigtiff`"
)

__all__ = [
    "check_decode_budget",
    "decode_budget_bytes",
    "read_image_size",
    "read_thumbnail",
    "read_rgb",
]


def decode_budget_bytes() -> int:
    """Most bytes one whole-image decode may allocate: ``ASIGN_MAX_DECODE_MB`` (MB = 10^6
    bytes), default 3000. Read at call time so a run can raise it without a restart."""
    raw = os.environ.get(DECODE_BUDGET_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_DECODE_BUDGET_MB
    except ValueError as exc:
        raise ValueError(f"{DECODE_BUDGET_ENV}={raw!r} is not a number of megabytes") from exc
    if not mb > 0:
        raise ValueError(f"{DECODE_BUDGET_ENV}={raw!r} must be positive")
    return int(mb * 1e6)


# Bytes per pixel of Pillow's decoded buffer (RGB is stored as 4 bytes).
_STORAGE_BPP = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _decode_bytes(mode: str, w: int, h: int) -> int:
    """Peak bytes of decoding a ``w x h`` image of ``mode`` to uint8 RGB: Pillow's buffer,
    plus, for any mode but RGB (returned zero-copy), the RGB result (3 B/px; the
    conversion runs in row bands, see _to_rgb_array)."""
    per_px = _STORAGE_BPP.get(mode, 4) + (0 if mode == "RGB" else 3)
    return w * h * per_px


def check_decode_budget(path: Path, mode: str, w: int, h: int) -> None:
    """InputError naming the file, its size and the budget if a whole decode would exceed it."""
    need, budget = _decode_bytes(mode, w, h), decode_budget_bytes()
    if need > budget:
        raise InputError(
            path,
            f"image is {w}x{h} px ({w * h / 1e6:.0f} Mpx, mode {mode}); decoding it whole needs ~{need / 1e6:.0f} MB, "
            f"over the decode budget of {budget / 1e6:.0f} MB (set {DECODE_BUDGET_ENV} to raise it if this machine has "
            f"the memory, or {CONVERT_HINT})",
        )


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """Open an image, turning every failure into an InputError naming the file."""
    path = Path(path)
    if require_regular_file(path, "image file").st_size == 0:
        raise InputError(path, "image file is empty (0 bytes)")
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from exc
    with im:
        yield im


def _load(im: Image.Image, path: Path) -> None:
    """Decode pixel data (after the budget check); truncated or corrupt data becomes an InputError."""
    check_decode_budget(path, im.mode, *im.size)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(path, f"image is corrupt or truncated ({exc})") from exc


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only; cheap even for 92 Mpx files."""
    with _open(path) as im:
        w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(path, f"image has zero size {w}x{h}")
    return int(w), int(h)


def _band_to_rgb(im: Image.Image, hi: float) -> np.ndarray:
    """One band (or all) of any PIL mode -> uint8 RGB; alpha composited on white,
    16-bit scaled down, float scaled by ``hi`` (1 or 65535)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            g = np.clip(np.nan_to_num(a.astype(np.float64)) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            # 16-bit greyscale (PNG/TIFF): full range 0..65535 -> 0..255.
            g = (np.clip(a.astype(np.int64), 0, 65535) // 257).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        a = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * a + 255.0 * (1.0 - a)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def _to_rgb_array(im: Image.Image, band_px: int = 1 << 20) -> np.ndarray:
    """Any PIL mode -> uint8 RGB, converted in row bands of ~``band_px`` pixels so the
    conversion's float/int temporaries never reach full-image size."""
    if im.mode == "RGB":
        return np.asarray(im)
    hi = 1.0
    if im.mode == "F":
        lo_hi = im.getextrema()
        hi = 1.0 if not (lo_hi[1] > 1.0) else 65535.0
    w, h = im.size
    rows = max(1, band_px // max(w, 1))
    out = np.empty((h, w, 3), dtype=np.uint8)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        out[y0:y1] = _band_to_rgb(im.crop((0, y0, w, y1)), hi)
    return out


def read_thumbnail(path: Path, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """Downsampled RGB thumbnail and its scale (thumbnail px per full-resolution px).

    JPEGs are decoded with DCT scaling (draft mode), so a 92 Mpx slide costs ~0.1 s.
    """
    if max_side < 1:
        raise ValueError("max_side must be >= 1")
    with _open(path) as im:
        W, H = im.size
        scale = min(1.0, max_side / max(W, H))
        tw, th = max(1, round(W * scale)), max(1, round(H * scale))
        if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
            im.draft("RGB", (tw, th))  # decodes at >= (tw, th), a power-of-2 reduction
        _load(im, path)
        rgb = _to_rgb_array(im)
    if rgb.shape[:2] != (th, tw):
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((tw, th), Image.Resampling.BOX))
    return np.ascontiguousarray(rgb), float(scale)


def _rgb_view_zero_copy(im: Image.Image) -> np.ndarray | None:
    """Zero-copy [H,W,3] view of a loaded RGB PIL image via its Arrow export, or None."""
    try:
        import pyarrow as pa

        arr = pa.array(im)
        buf = arr.buffers()[-1]
        w, h = im.size
        if buf is None or buf.size < w * h * 4:
            return None
        x = np.frombuffer(buf, dtype=np.uint8, count=w * h * 4).reshape(h, w, 4)
        return x[..., :3]
    except Exception:  # pragma: no cover - depends on the Pillow build
        return None


def read_rgb(path: Path) -> np.ndarray:
    """Full-resolution uint8 RGB [H, W, 3].

    For RGB images the result is a READ-ONLY, possibly non-contiguous view onto the
    decoded buffer (no second full-size copy: ~0.3 s instead of ~1.5 s for 92 Mpx).
    Call ``np.array(...)`` if you need to write into it.
    """
    with _open(path) as im:
        if im.mode == "RGB":
            # One allocation block for the whole image makes Pillow's Arrow export possible.
            old = Image.core.get_block_size()
            w, h = im.size
            need = -(-(w * h * 4) // 4096) * 4096
            Image.core.set_block_size(max(old, need))
            try:
                _load(im, path)
            finally:
                Image.core.set_block_size(old)
            view = _rgb_view_zero_copy(im)
            if view is not None:
                return view
            return np.asarray(im)
        _load(im, path)
        return _to_rgb_array(im)
