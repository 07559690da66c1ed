"""Registration transforms on disk: ``registrations/transforms/<section>.tfm`` (ITK text format).

Separate from the search so that readers of a stored sample (the volume asset)
need only this and :mod:`transforms`, not the optimiser.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from asign_assets.registration.transforms import affine_matrix, affine_transform

__all__ = ["save_transform", "load_transform"]


def save_transform(transform: sitk.Transform, path: str | Path) -> None:
    """Write a transform as .tfm (common um -> own um)."""
    sitk.WriteTransform(transform, str(path))


def load_transform(path: str | Path) -> sitk.Transform:
    """Read a .tfm written by :func:`save_transform` (flattened to its concrete type when possible)."""
    tx = sitk.ReadTransform(str(path))
    m = affine_matrix(tx)
    if m is not None:
        return affine_transform(*m)
    return tx
