"""Reading H&E images and finding the tissue on them.

Whole-slide JPEGs here are ~92 Mpx, so readers decode at reduced size where they
can (JPEG draft mode for thumbnails) and never make more than one full-size copy.
Pixel coordinates follow the spot tables: x = column, y = row, raw pixel grid
(EXIF orientation is deliberately ignored, as the spot coordinates are on the raw grid).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from asign_assets.errors import InputError

# A deliberate bound: above the ~92 Mpx HER2ST slides and typical 40x crops, far below
# anything that would exhaust memory on a laptop by accident (500 Mpx RGB = 1.5 GB).
Image.MAX_IMAGE_PIXELS = 500_000_000
# Truncated files must fail loudly, never decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

__all__ = [
    "read_image_size",
    "read_thumbnail",
    "read_rgb",
]


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """Open an image, turning every failure into an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "image file is empty (0 bytes)")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"image is larger than the {Image.MAX_IMAGE_PIXELS} pixel bound ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from exc
    with im:
        # Pillow only warns between 1x and 2x its bound and would then decode it all.
        w, h = im.size
        if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
            raise InputError(path, f"image is larger than the {Image.MAX_IMAGE_PIXELS} pixel bound ({w}x{h} = {w * h} pixels)")
        yield im


def _load(im: Image.Image, path: Path) -> None:
    """Decode pixel data; truncated or corrupt data becomes an InputError."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"image is larger than the {Image.MAX_IMAGE_PIXELS} pixel bound ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(path, f"image is corrupt or truncated ({exc})") from exc


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only; cheap even for 92 Mpx files."""
    with _open(path) as im:
        w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(path, f"image has zero size {w}x{h}")
    return int(w), int(h)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB; alpha composited on white, 16-bit scaled down."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float64)
            hi = 1.0 if np.nanmax(a) <= 1.0 else 65535.0
            g = np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
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
