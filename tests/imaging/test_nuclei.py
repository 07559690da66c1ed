"""Macenko stain vectors and nuclear features on synthetic H&E-like images."""

from __future__ import annotations

import numpy as np
import pytest

from asign_assets.imaging.nuclei import FEATURES, NucleiParams, nuclei_features
from asign_assets.imaging.stain import macenko_stain_vectors, section_stain_reference, stain_concentrations

H = np.array([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11])
H, E = H / np.linalg.norm(H), E / np.linalg.norm(E)


def _render(conc_h: np.ndarray, conc_e: np.ndarray) -> np.ndarray:
    od = conc_h[..., None] * H + conc_e[..., None] * E
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).round().astype(np.uint8)


def test_macenko_recovers_the_stain_vectors_of_a_mixture():
    rng = np.random.default_rng(0)
    n = 20000
    ch = rng.gamma(2.0, 0.4, n) * (rng.random(n) < 0.6)
    ce = rng.gamma(2.0, 0.3, n) + 0.05
    rgb = _render(ch, ce)[None]
    v = macenko_stain_vectors(rgb)
    assert np.dot(v[0], H) > 0.99 and np.dot(v[1], E) > 0.99
    c = stain_concentrations(rgb, v)[0]
    tissue = (ch > 0.3) & (ce > 0.3)
    assert np.corrcoef(c[tissue, 0], ch[tissue])[0, 1] > 0.95
    stains, h_scale = section_stain_reference(rgb.reshape(1, 100, 200, 3), max_pixels=5000)
    assert np.dot(stains[0], H) > 0.98
    assert h_scale == pytest.approx(np.percentile(ch[(_render(ch, ce) < 219).all(1)], 99), rel=0.2)


def _blob_tiles(counts, radius_px=5, size=128, seed=0):
    """Patches with ``counts[i]`` dark round nuclei (H) on pink stroma (E) near the centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    tiles = []
    for k in counts:
        ch = np.zeros((size, size))
        placed = []
        while len(placed) < k:
            c = rng.uniform(size * 0.3, size * 0.7, 2)
            if all(np.hypot(*(c - p)) > 2.5 * radius_px for p in placed):
                placed.append(c)
                ch[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius_px**2] = 1.2
        tiles.append(_render(ch + 0.02 * rng.random((size, size)), 0.4 + 0.05 * rng.random((size, size))))
    return np.stack(tiles)


def test_nuclei_counts_and_areas_on_known_blobs():
    counts = [0, 3, 7, 12]
    tiles = _blob_tiles(counts)
    um = 0.8
    # stains known here (Macenko is tested above; with nuclei under 1% of pixels its
    # robust extremes would both fall in the eosin cluster)
    f = nuclei_features(tiles, um, np.stack([H, E]), 1.2, NucleiParams(radius_um=60.0, smooth_um=0.0))
    col = {k: i for i, k in enumerate(FEATURES)}
    disc = np.pi * min(60.0, 64 * um) ** 2
    found = f[:, col["nuclei_density"]] * disc / 1e4
    np.testing.assert_allclose(found, counts, atol=0.01)
    area = np.pi * 5**2 * um**2  # ~63 um2 per nucleus
    assert f[1:, col["area_mean"]] == pytest.approx(np.full(3, area), rel=0.15)
    assert np.all(f[1:, col["eccentricity_mean"]] < 0.5)  # round
    assert np.all(np.diff(f[:, col["h_area_frac"]]) > 0)
    assert f[0].sum() == 0.0
