"""Weight-free nuclear morphology of spot patches: haematoxylin nuclei (on the Macenko stain
separation of imaging.stain), per-spot counts, sizes, shapes, chromatin and class fractions.

Not part of the default encoder: on patient C these features predict expression alone (ridge
gene_pcc about 0.18) but add nothing to the colour/texture embedding (docs/accuracy.md, item 4,
benchmarks/nuclei_features.py). They stay in the library as a measured, tested feature set.

Why: colour and texture statistics do not see cells. Cell composition (tumour vs immune
vs stroma) is what drives most of a spot's expression, and nuclei show it.

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

from asign_assets.imaging.stain import stain_concentrations

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


def nuclei_features(tiles: np.ndarray, um_per_px: float, stains: np.ndarray, h_scale: float,
                    params: NucleiParams = NucleiParams()) -> np.ndarray:
    """[N, len(FEATURES)] nuclear features of uint8 patches [N, h, w, 3] centred on spots.

    ``stains`` from :func:`asign_assets.imaging.stain.macenko_stain_vectors` and ``h_scale`` (the H concentration's
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


