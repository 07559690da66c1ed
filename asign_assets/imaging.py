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
from scipy import ndimage as ndi

from asign_assets.errors import InputError
from asign_assets.paths import require_regular_file

# A deliberate bound: above the ~92 Mpx HER2ST slides and typical 40x crops, far below
# anything that would exhaust memory on a laptop by accident (500 Mpx RGB = 1.5 GB).
Image.MAX_IMAGE_PIXELS = 500_000_000
# Truncated files must fail loudly, never decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

__all__ = [
    "read_image_size",
    "read_thumbnail",
    "read_rgb",
    "tissue_mask",
    "tissue_area_mm2",
]


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """Open an image, turning every failure into an InputError naming the file."""
    path = Path(path)
    if require_regular_file(path, "image file").st_size == 0:
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


# --------------------------------------------------------------------------- tissue mask


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def _optical_density(rgb01: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(rgb01, 1.0 / 255.0, 1.0))


def _fit_background(rgb01: np.ndarray, bg: np.ndarray, max_samples: int = 20000) -> np.ndarray:
    """Smooth (quadratic) background colour field fitted on background pixels.

    Dividing by it flattens vignetting and a faintly pink, graded background
    (HER2ST slides have one) so a single threshold separates tissue everywhere.
    """
    h, w = bg.shape
    ys, xs = np.nonzero(bg)
    if ys.size < 200:
        # Almost no background: assume a uniform one as bright as the brightest pixels.
        level = np.percentile(rgb01.reshape(-1, 3), 99, axis=0)
        return np.broadcast_to(np.maximum(level, 0.5), rgb01.shape)
    rng = np.random.default_rng(0)
    if ys.size > max_samples:
        pick = rng.choice(ys.size, max_samples, replace=False)
        ys, xs = ys[pick], xs[pick]
    u, v = xs / max(w - 1, 1), ys / max(h - 1, 1)
    A = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    coef, *_ = np.linalg.lstsq(A, np.log(np.clip(rgb01[ys, xs], 1e-3, 1.0)), rcond=None)
    uu, vv = np.meshgrid(np.arange(w) / max(w - 1, 1), np.arange(h) / max(h - 1, 1))
    basis = np.stack([np.ones_like(uu), uu, vv, uu * uu, uu * vv, vv * vv], axis=-1)
    return np.clip(np.exp(basis @ coef), 0.3, 1.0)


def tissue_mask(
    thumb_rgb: np.ndarray,
    min_threshold: float = 0.3,
    max_threshold: float = 0.9,
    min_object_frac: float = 0.002,
    min_object_rel: float = 0.05,
) -> np.ndarray:
    """Boolean tissue mask at thumbnail scale.

    Optical density (summed over RGB) after flat-fielding the background (a quadratic
    fit seeded by an Otsu split, refined on background-like pixels); tissue is what
    lies 8 robust sigmas above the background, with the threshold clamped to
    ``[min_threshold, max_threshold]`` (so a blank slide is not split on noise; the
    0.3 floor also leaves out the faint pink eosin halo HER2ST slides show around the
    tissue, which sits at 0.15-0.3 while tissue starts at ~0.4), then opening/closing,
    removal of debris (objects smaller than ``min_object_frac`` of the image or
    ``min_object_rel`` of the largest piece) and hole filling. A blank image gives an all-False mask.
    """
    rgb = np.asarray(thumb_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"thumb_rgb must be [h, w, 3], got {rgb.shape}")
    rgb01 = rgb.astype(np.float32) / 255.0
    h, w = rgb.shape[:2]

    # Pass 1: rough background = below Otsu on optical density, only to seed the fit.
    od = _optical_density(rgb01).sum(-1)
    t1 = float(np.clip(_otsu(od), 0.05, max_threshold))
    background = od < t1
    # Pass 2: flat-field by a smooth background fit, refined twice on the pixels that
    # look like background after correction (pale tissue must not bend the fit).
    for _ in range(3):
        seed = ndi.binary_erosion(background, iterations=2) if background.sum() > 1000 else background
        flat = np.clip(rgb01 / _fit_background(rgb01, seed), 0.0, 1.0)
        od2 = ndi.uniform_filter(_optical_density(flat).sum(-1), size=3)  # JPEG/scan noise
        vals = od2[background] if background.any() else od2.ravel()
        med = float(np.median(vals))
        sigma = 1.4826 * float(np.median(np.abs(vals - med))) + 1e-3
        background = od2 < med + 3.0 * sigma
    # Tissue = clearly above the background noise; not Otsu, which on slides with both
    # pale stroma and dense tumour would split the tissue instead of tissue/background.
    thr = float(np.clip(med + 8.0 * sigma, min_threshold, max_threshold))
    mask = od2 > thr
    if not mask.any():
        return mask

    r = max(1, round(min(h, w) / 500))
    struct = ndi.generate_binary_structure(2, 1)
    mask = ndi.binary_opening(mask, structure=struct, iterations=r)
    mask = ndi.binary_closing(mask, structure=struct, iterations=2 * r, border_value=0)
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep_min = max(min_object_frac * h * w, min_object_rel * sizes.max())
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= keep_min
    mask = keep[labels]
    return ndi.binary_fill_holes(mask)


def tissue_area_mm2(mask: np.ndarray, thumb_scale: float, pixel_size_um: float) -> float:
    """Tissue area in mm^2: mask pixels -> full-resolution pixels -> microns."""
    if thumb_scale <= 0 or pixel_size_um <= 0:
        raise ValueError("thumb_scale and pixel_size_um must be positive")
    full_px = float(np.count_nonzero(mask)) / (thumb_scale**2)
    return full_px * pixel_size_um**2 / 1e6
