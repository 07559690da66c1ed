"""The registration transform (common um -> own um) applied to points, forwards and backwards.

Spots are moved between frames in bulk, so the affine case is done with numpy
on the matrix instead of one ``TransformPoint`` call per point; SimpleITK is
only needed to build an affine transform object and to take a refined
(affine o B-spline) one apart for its inverse.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from asign_assets.errors import RegistrationError
from asign_assets.registration.params import SectionRegistration

__all__ = [
    "affine_matrix",
    "affine_transform",
    "split_affine",
    "transform_points",
    "inverse_transform_points",
    "to_common_frame",
    "to_own_frame",
]


def affine_matrix(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, t) with T(p) = A p + t when the transform is affine, else None."""
    probe = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [3717.0, -2291.0], [-5003.0, 8111.0]])
    out = np.array([transform.TransformPoint(tuple(p)) for p in probe])
    t = out[0]
    a = np.stack([(out[1] - t) / 1000.0, (out[2] - t) / 1000.0], axis=1)
    pred = probe @ a.T + t
    if np.max(np.abs(pred - out)) > 1e-6 * (1.0 + np.max(np.abs(out))):
        return None
    return a, t


def affine_transform(a: np.ndarray, t: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK transform p -> A p + t."""
    tx = sitk.AffineTransform(2)
    tx.SetMatrix(tuple(float(v) for v in np.asarray(a).ravel()))
    tx.SetTranslation(tuple(float(v) for v in t))
    return tx


def _as_points(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got shape {xy.shape}")
    return xy


def transform_points(transform: sitk.Transform, xy_um: np.ndarray) -> np.ndarray:
    """Apply T (common -> own) to [N, 2] points; vectorised for affine transforms."""
    xy = _as_points(xy_um)
    m = affine_matrix(transform)
    if m is not None:
        a, t = m
        return xy @ a.T + t
    return np.array([transform.TransformPoint(tuple(p)) for p in xy], dtype=np.float64).reshape(-1, 2)


def split_affine(transform: sitk.Transform) -> tuple[tuple[np.ndarray, np.ndarray], sitk.Transform | None]:
    """Split T = A o B (B non-linear applied first) as built by refine='bspline'."""
    if transform.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(transform)
        n = comp.GetNumberOfTransforms()
        if n == 2:
            first_added = comp.GetNthTransform(0)  # applied last
            last_added = comp.GetNthTransform(1)  # applied first
            m = affine_matrix(first_added)
            if m is not None and affine_matrix(last_added) is None:
                return m, last_added
    raise RegistrationError(
        f"cannot invert transform {transform.GetName()}: expected affine or CompositeTransform(affine, bspline)"
    )


def _bspline_field(tx: sitk.Transform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Displacement field of a BSpline transform sampled on its own domain (grid origin, spacing, [2,H,W])."""
    b = sitk.BSplineTransform(tx)
    origin = np.array(b.GetTransformDomainOrigin())
    size_um = np.array(b.GetTransformDomainPhysicalDimensions())
    spacing = np.maximum(size_um / 256.0, 1.0)
    size = [int(math.ceil(s / sp)) + 1 for s, sp in zip(size_um, spacing)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(tuple(origin))
    ref.SetSpacing(tuple(spacing))
    fld = sitk.TransformToDisplacementField(b, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(), ref.GetSpacing())
    arr = sitk.GetArrayFromImage(fld)  # [H, W, 2]
    return origin, spacing, np.moveaxis(arr, -1, 0)


def _sample_field(origin, spacing, fld, xy: np.ndarray) -> np.ndarray:
    cols = (xy[:, 0] - origin[0]) / spacing[0]
    rows = (xy[:, 1] - origin[1]) / spacing[1]
    coords = np.stack([rows, cols])
    return np.stack([ndi.map_coordinates(fld[k], coords, order=1, mode="nearest") for k in range(2)], axis=1)


def inverse_transform_points(transform: sitk.Transform, xy_um: np.ndarray, n_iter: int = 30) -> np.ndarray:
    """Apply T^-1 (own -> common) to [N, 2] points, vectorised.

    Affine: exact matrix inverse. Affine o BSpline: exact affine inverse, then a
    fixed-point inversion of the (small, smooth) B-spline displacement field.
    """
    xy = _as_points(xy_um)
    m = affine_matrix(transform)
    if m is not None:
        a, t = m
        return (xy - t) @ np.linalg.inv(a).T
    (a, t), nonlin = split_affine(transform)
    q = (xy - t) @ np.linalg.inv(a).T  # = B(p)
    origin, spacing, fld = _bspline_field(nonlin)
    p = q.copy()
    for _ in range(n_iter):
        p_new = q - _sample_field(origin, spacing, fld, p)
        if np.max(np.abs(p_new - p), initial=0.0) < 1e-3:
            p = p_new
            break
        p = p_new
    return p


def to_common_frame(reg: SectionRegistration, xy_um: np.ndarray) -> np.ndarray:
    """Own-image um [N, 2] -> common-frame um [N, 2]."""
    return inverse_transform_points(reg.transform, xy_um)


def to_own_frame(reg: SectionRegistration, xy_um: np.ndarray) -> np.ndarray:
    """Common-frame um [N, 2] -> own-image um [N, 2]."""
    return transform_points(reg.transform, xy_um)
