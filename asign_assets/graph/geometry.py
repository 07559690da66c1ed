"""Closed-form disc geometry (replaces the reference code's 100-gon polygon IoU)."""

from __future__ import annotations

import numpy as np

__all__ = ["disc_intersection_area", "disc_iou"]


def disc_intersection_area(d: np.ndarray | float, r1: np.ndarray | float, r2: np.ndarray | float) -> np.ndarray:
    """Area of the lens where two discs (centre distance ``d``, radii ``r1, r2``) overlap.

    Exact and vectorised (broadcasts its arguments); 0 when disjoint or tangent,
    the smaller disc's area when one contains the other.
    """
    d, r1, r2 = np.broadcast_arrays(
        np.abs(np.asarray(d, np.float64)), np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    )
    if np.any(r1 < 0) or np.any(r2 < 0):
        raise ValueError("radii must be non-negative")
    out = np.zeros(d.shape, np.float64)
    rmin = np.minimum(r1, r2)
    inside = d <= np.abs(r1 - r2)
    out[inside] = np.pi * rmin[inside] ** 2
    lens = ~inside & (d < r1 + r2)
    if np.any(lens):
        dd, a, b = d[lens], r1[lens], r2[lens]
        c1 = np.clip((dd**2 + a**2 - b**2) / (2 * dd * a), -1.0, 1.0)
        c2 = np.clip((dd**2 + b**2 - a**2) / (2 * dd * b), -1.0, 1.0)
        k = (-dd + a + b) * (dd + a - b) * (dd - a + b) * (dd + a + b)
        out[lens] = a**2 * np.arccos(c1) + b**2 * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0.0))
    return out


def disc_iou(d: np.ndarray | float, r1: np.ndarray | float, r2: np.ndarray | float) -> np.ndarray:
    """Intersection over union of two discs; 0 for two empty discs."""
    inter = disc_intersection_area(d, r1, r2)
    r1 = np.asarray(r1, np.float64)
    r2 = np.asarray(r2, np.float64)
    union = np.pi * r1**2 + np.pi * r2**2 - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.clip(iou, 0.0, 1.0)
