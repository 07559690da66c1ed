"""Closed-form disc intersection / IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asign_assets.graph.geometry import disc_intersection_area, disc_iou


def test_identical_tangent_disjoint_contained():
    assert disc_iou(0.0, 50.0, 50.0) == pytest.approx(1.0)
    assert disc_iou(100.0, 50.0, 50.0) == pytest.approx(0.0, abs=1e-12)  # tangent
    assert disc_iou(250.0, 50.0, 50.0) == 0.0
    # small disc inside a big one: intersection = small disc, IoU = (r/R)^2
    assert disc_intersection_area(10.0, 50.0, 20.0) == pytest.approx(math.pi * 400.0)
    assert disc_iou(10.0, 50.0, 20.0) == pytest.approx(0.16)
    assert disc_iou(30.0, 20.0, 50.0) == pytest.approx(0.16)  # internally tangent, argument order swapped


def test_known_offset_analytic():
    r = 50.0
    # equal discs at distance r: lens area = r^2 (2 pi / 3 - sqrt(3) / 2)
    lens = r**2 * (2 * math.pi / 3 - math.sqrt(3) / 2)
    assert disc_intersection_area(r, r, r) == pytest.approx(lens, rel=1e-12)
    assert disc_iou(r, r, r) == pytest.approx(lens / (2 * math.pi * r**2 - lens), rel=1e-12)


def test_unequal_radii_matches_grid_estimate():
    d, r1, r2 = 37.0, 30.0, 18.0
    g = np.linspace(-60, 60, 2401)
    x, y = np.meshgrid(g, g)
    inside = ((x**2 + y**2) <= r1**2) & (((x - d) ** 2 + y**2) <= r2**2)
    est = inside.sum() * (g[1] - g[0]) ** 2
    assert disc_intersection_area(d, r1, r2) == pytest.approx(est, rel=5e-3)


def test_vectorised_and_symmetric():
    d = np.array([0.0, 25.0, 50.0, 99.0, 100.0, 150.0])
    iou = disc_iou(d, 50.0, 50.0)
    assert iou.shape == (6,)
    assert np.all(np.diff(iou) <= 0)  # monotone in distance
    assert np.all((iou >= 0) & (iou <= 1))
    a = disc_intersection_area(d[:, None], np.array([10.0, 40.0]), 30.0)
    assert a.shape == (6, 2)
    np.testing.assert_allclose(disc_intersection_area(d, 30.0, 45.0), disc_intersection_area(d, 45.0, 30.0))
    with pytest.raises(ValueError):
        disc_intersection_area(1.0, -1.0, 2.0)
