"""Weight-free nuclear morphology of spot patches: Macenko stain vectors, haematoxylin
nuclei, per-spot counts, sizes, shapes, chromatin and class fractions.

Why: colour and texture statistics do not see cells. Cell composition (tumour vs immune
vs stroma) is what drives most of a spot's expression, and nuclei show it.

- Stain vectors (Macenko et al. 2009, "A method for normalizing histology slides for
  quantitative analysis", ISBI): optical density of tissue pixels, plane of its two top
  principal directions, the robust (``alpha`` percentile) extreme angles give the
  haematoxylin and eosin OD vectors. Estimated once per section, so the H concentration
  is comparable across sections with different staining; concentrations are scaled by
  their 99th percentile (the normalisation step of the method).
- Nuclei: the normalised H concentration, lightly smoothed, above ``h_threshold``; 2D
  connected components of all patches at once (no loop over spots), components smaller
  than ``min_area_um2`` dropped. Per nucleus: area, mean H (chromatin density), and the
  eccentricity of its second moments. Classes by size/shape: small round dark
  (lymphocyte-like), large (tumour-like), elongated (stroma-like).
- Per spot (nuclei whose centre lies within ``radius_um`` of the patch centre): density
  per 0.01 mm2, mean and SD of area, mean eccentricity, mean and SD of chromatin, H area
  fraction, the three class fractions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FEATURES = (
    "nuclei_density", "area_mean", "area_sd", "eccentricity_mean", "chromatin_mean", "chromatin_sd",
    "h_area_frac", "frac_small_round", "frac_large", "frac_elongated",
)


@dataclass(frozen=True)
class NucleiParams:
    h_threshold: float = 0.35  # normalised H concentration (99th percentile = 1)
    smooth_um: float = 1.0
    min_area_um2: float = 12.0
    radius_um: float = 55.0  # nuclei counted within this distance of the spot centre
    small_area_um2: float = 35.0
    large_area_um2: float = 70.0
    elongated_ecc: float = 0.9


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> OD = -log((I + 1) / 256) (Beer-Lambert, so stains add linearly)."""
    return -np.log((np.asarray(rgb, np.float64)[..., :3] + 1.0) / 256.0)


def macenko_stain_vectors(rgb: np.ndarray, od_min: float = 0.15, alpha: float = 1.0) -> np.ndarray:
    """[2, 3] unit OD vectors (haematoxylin, eosin) of the pixels in ``rgb`` (any shape [..., 3]).

    Pixels with every channel's OD below ``od_min`` (background) are ignored. H is the
    extreme direction with the larger red OD component (haematoxylin absorbs red
    strongest), which fixes the order of the two vectors.
    """
    od = optical_density(rgb).reshape(-1, 3)
    od = od[(od > od_min).all(1)]
    if len(od) < 10:
        raise ValueError("too few tissue pixels to estimate stain vectors")
    _, _, vt = np.linalg.svd(od, full_matrices=False)  # directions of OD (not centred, as in the method)
    plane = vt[:2]
    plane = plane * np.sign(plane.sum(1, keepdims=True))  # both directions point into positive OD
    proj = od @ plane.T
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = np.cos(lo) * plane[0] + np.sin(lo) * plane[1]
    v2 = np.cos(hi) * plane[0] + np.sin(hi) * plane[1]
    v = np.stack([v1, v2])
    v = v * np.sign(v.sum(1, keepdims=True))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v if v[0, 0] >= v[1, 0] else v[::-1].copy()


def stain_concentrations(rgb: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """[..., 2] H and E concentrations: least squares of OD on the two stain vectors."""
    od = optical_density(rgb)
    c, *_ = np.linalg.lstsq(np.asarray(stains, np.float64).T, od.reshape(-1, 3).T, rcond=None)
    return c.T.reshape(*od.shape[:-1], 2)


def nuclei_features(tiles: np.ndarray, um_per_px: float, stains: np.ndarray, h_scale: float,
                    params: NucleiParams = NucleiParams()) -> np.ndarray:
    """[N, len(FEATURES)] nuclear features of uint8 patches [N, h, w, 3] centred on spots.

    ``stains`` from :func:`macenko_stain_vectors` and ``h_scale`` (the H concentration's
    99th percentile over the section's tissue) come from the whole section, so patches of
    one section share one threshold.
    """
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    out = np.zeros((n, len(FEATURES)), np.float32)
    if n == 0:
        return out
    hconc = stain_concentrations(tiles, stains)[..., 0] / max(h_scale, 1e-6)
    sig = params.smooth_um / um_per_px
    if sig > 0.3:
        hconc = ndimage.gaussian_filter(hconc, sigma=(0, sig, sig))
    fg = hconc > params.h_threshold
    # 2D components in every patch at once: no connectivity along the patch axis
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, n_lab = ndimage.label(fg, structure=structure)
    if n_lab == 0:
        return out
    lab = labels.ravel()
    tile_idx = np.broadcast_to(np.arange(n)[:, None, None], labels.shape).ravel()
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    yy = np.broadcast_to(yy, labels.shape).ravel()
    xx = np.broadcast_to(xx, labels.shape).ravel()
    sel = lab > 0
    lab, tile_idx, yy, xx, hv = lab[sel], tile_idx[sel], yy[sel], xx[sel], hconc.ravel()[sel]
    cnt = np.bincount(lab, minlength=n_lab + 1)[1:].astype(np.float64)
    mean = lambda v: np.bincount(lab, weights=v, minlength=n_lab + 1)[1:] / np.maximum(cnt, 1)  # noqa: E731
    cy, cx, chrom = mean(yy), mean(xx), mean(hv)
    vyy, vxx, vxy = mean(yy * yy) - cy**2, mean(xx * xx) - cx**2, mean(xx * yy) - cx * cy
    tr, det = vyy + vxx, vyy * vxx - vxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    ecc = np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-12), 0, 1))
    tile_of = np.zeros(n_lab, np.int64)
    tile_of[lab - 1] = tile_idx
    area = cnt * um_per_px**2
    r_px = params.radius_um / um_per_px
    keep = (area >= params.min_area_um2) & ((cy - (h - 1) / 2) ** 2 + (cx - (w - 1) / 2) ** 2 <= r_px**2)
    t, a, e, c = tile_of[keep], area[keep], ecc[keep], chrom[keep]
    k = np.bincount(t, minlength=n).astype(np.float64)
    kk = np.maximum(k, 1)
    per = lambda v: np.bincount(t, weights=v, minlength=n) / kk  # noqa: E731
    a_m, c_m = per(a), per(c)
    disc_area = np.pi * min(params.radius_um, w * um_per_px / 2, h * um_per_px / 2) ** 2
    rr = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= r_px**2
    h_area = np.bincount(tile_idx[rr], minlength=n) * um_per_px**2 / disc_area
    small = (a < params.small_area_um2) & (e < params.elongated_ecc)
    large = a >= params.large_area_um2
    elong = (e >= params.elongated_ecc) & ~large
    out[:] = np.column_stack([
        k / disc_area * 1e4, a_m, np.sqrt(np.maximum(per(a * a) - a_m**2, 0)), per(e), c_m,
        np.sqrt(np.maximum(per(c * c) - c_m**2, 0)), h_area, per(small.astype(float)), per(large.astype(float)),
        per(elong.astype(float)),
    ])
    return out


def section_stain_reference(tiles: np.ndarray, max_pixels: int = 400_000, seed: int = 0) -> tuple[np.ndarray, float]:
    """(stain vectors, H 99th percentile) of one section from a pixel sample of its spot patches."""
    px = np.asarray(tiles)[..., :3].reshape(-1, 3)
    if len(px) > max_pixels:
        px = px[np.random.default_rng(seed).choice(len(px), max_pixels, replace=False)]
    stains = macenko_stain_vectors(px)
    od = optical_density(px)
    tissue = (od > 0.15).all(1)
    hc = stain_concentrations(px[tissue], stains)[:, 0] if tissue.any() else np.ones(1)
    return stains, float(np.percentile(hc, 99))
