"""H&E stain separation (Macenko et al. 2009, "A method for normalizing histology slides for
quantitative analysis", ISBI): optical density of tissue pixels, the plane of its two top
principal directions, and the robust (``alpha`` percentile) extreme angles give the
haematoxylin and eosin OD vectors. Estimated once per section, so the H concentration is
comparable across sections and blocks stained differently; concentrations are scaled by their
99th percentile (the normalisation step of the method). Nuclear features (imaging.nuclei) and
stain-aware comparisons of sections build on it.
"""

from __future__ import annotations

import numpy as np


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
