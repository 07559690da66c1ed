from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from asign_assets.errors import InputError
from asign_assets.ingest.lattice import LatticeGeometry, infer_lattice, lattice_over_mask


def _lattice(kind: str, pitch_px: float, angle_deg: float, n: int = 12, jitter: float = 0.0, drop: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = math.radians(angle_deg)
    u = np.array([math.cos(a), math.sin(a)])
    v = np.array([-math.sin(a), math.cos(a)])
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r, c = r.ravel(), c.ravel()
    if kind == "square":
        pts = c[:, None] * u + r[:, None] * v
    else:
        pts = (c + 0.5 * (r % 2))[:, None] * u + (r * math.sqrt(3) / 2)[:, None] * v
    pts = 3000 + pts * pitch_px + rng.normal(0, jitter, size=pts.shape)
    keep = rng.uniform(size=len(pts)) >= drop
    return pts[keep]


def test_square_lattice_rotated_with_jitter_and_gaps():
    xy = _lattice("square", pitch_px=255.0, angle_deg=17.0, jitter=6.0, drop=0.15)
    g = infer_lattice(xy, pixel_size_um=200 / 255)
    assert g.kind == "square"
    assert g.pitch_um == pytest.approx(200.0, rel=0.01)
    assert math.degrees(g.angle_rad) == pytest.approx(17.0, abs=0.7)
    assert g.diameter_um == pytest.approx(100.0, rel=0.01)


def test_square_angle_is_folded_by_symmetry():
    xy = _lattice("square", pitch_px=100.0, angle_deg=80.0)
    g = infer_lattice(xy, pixel_size_um=1.0)
    assert math.degrees(g.angle_rad) == pytest.approx(-10.0, abs=1e-6)


def test_hex_lattice_visium_like():
    xy = _lattice("hex", pitch_px=100 / 0.5, angle_deg=-12.0, jitter=2.0, drop=0.1, n=15)
    g = infer_lattice(xy, pixel_size_um=0.5)
    assert g.kind == "hex"
    assert g.pitch_um == pytest.approx(100.0, rel=0.01)
    assert math.degrees(g.angle_rad) == pytest.approx(-12.0, abs=0.7)
    assert g.diameter_um == pytest.approx(55.0, rel=0.01)
    assert infer_lattice(xy, 0.5, spot_diameter_um=65.0).diameter_um == 65.0


def test_hex_angle_folded_to_sixty_degree_symmetry():
    g = infer_lattice(_lattice("hex", 50.0, 50.0), 1.0)  # 50 deg == -10 deg for a hex lattice
    assert g.kind == "hex" and math.degrees(g.angle_rad) == pytest.approx(-10.0, abs=1e-6)


def test_infer_lattice_errors():
    with pytest.raises(InputError, match="at least 3"):
        infer_lattice(np.array([[0.0, 0.0], [1.0, 1.0]]), 1.0)
    with pytest.raises(InputError, match="NaN"):
        infer_lattice(np.array([[0.0, 0.0], [np.nan, 1.0], [2.0, 2.0]]), 1.0)
    with pytest.raises(InputError, match="spots.tsv"):
        infer_lattice(np.zeros((5, 3)), 1.0, source="spots.tsv")


def _disc_mask(h=400, w=500, cy=200, cx=260, r=150):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.mark.parametrize("kind,angle", [("square", 0.0), ("square", 0.3), ("hex", -0.2)])
def test_lattice_over_mask_covers_tissue_with_pitch(kind, angle):
    mask = _disc_mask()
    mask_scale = 0.1  # thumbnail px per full-res px -> full image 5000 x 4000
    px_um = 0.8
    geom = LatticeGeometry(kind=kind, pitch_um=200.0, angle_rad=angle, diameter_um=100.0)
    xy, ids = lattice_over_mask(geom, mask, mask_scale, px_um, image_size=(5000, 4000))
    pitch_px = 200.0 / px_um
    assert xy.shape[1] == 2 and len(ids) == len(xy) == len(set(ids))
    assert all(i.startswith("v") and "_" in i for i in ids)
    # every centre is on the tissue
    mi = np.floor((xy + 0.5) * mask_scale).astype(int)
    assert mask[mi[:, 1], mi[:, 0]].all()
    # spacing is the pitch, count matches tissue area / cell area
    d, _ = cKDTree(xy).query(xy, k=2)
    np.testing.assert_allclose(d[:, 1], pitch_px, rtol=1e-6)
    cell = pitch_px**2 * (1.0 if kind == "square" else math.sqrt(3) / 2)
    expected = mask.sum() / mask_scale**2 / cell
    assert len(xy) == pytest.approx(expected, rel=0.08)
    # the virtual lattice has the requested geometry
    g2 = infer_lattice(xy, px_um)
    assert g2.kind == kind and g2.pitch_um == pytest.approx(200.0, rel=1e-6)
    assert g2.angle_rad == pytest.approx(angle, abs=1e-6)


def test_lattice_over_mask_ids_and_empty():
    geom = LatticeGeometry("square", 100.0, 0.0, 50.0)
    mask = np.zeros((50, 50), bool)
    assert lattice_over_mask(geom, mask, 0.1, 1.0, (500, 500))[0].shape == (0, 2)
    mask[10:40, 10:40] = True  # full-res 100..400 px -> 3x3 .. 4x4 points at 100 px pitch
    xy, ids = lattice_over_mask(geom, mask, 0.1, 1.0, (500, 500))
    assert ids[0] == "v0_0"
    rows = sorted({int(i[1:].split("_")[0]) for i in ids})
    assert rows == list(range(len(rows)))
    # row-major: y non-decreasing along the list
    assert np.all(np.diff(xy[:, 1]) >= -1e-6)
