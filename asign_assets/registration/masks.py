"""Tissue masks as SimpleITK images on their physical grid, warped by a registration, and their Dice.

One place for the pixel-centre convention (pixel ``j`` at ``(j + 0.5) * um_per_px``)
shared by the search, its QC and the overlay.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from asign_assets.registration.params import SectionRegistration

__all__ = ["mask_image", "image_dice", "mask_dice", "warp_masks"]


def mask_image(mask: np.ndarray, um_per_px: float) -> sitk.Image:
    """A mask as a float32 image whose physical frame is the section's own um."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.float32))
    img.SetSpacing((float(um_per_px), float(um_per_px)))
    img.SetOrigin((0.5 * um_per_px, 0.5 * um_per_px))
    return img


def image_dice(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the masks (> 0.5) after warping ``moving`` onto ``fixed``; 0 when both are empty."""
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    a, b = sitk.Cast(fixed > 0.5, sitk.sitkUInt8), warped > 0.5
    stats = sitk.StatisticsImageFilter()
    stats.Execute(a + b)
    if stats.GetSum() == 0:
        return 0.0
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(a, b)
    return float(overlap.GetDiceCoefficient())


def mask_dice(fixed_mask: np.ndarray, fixed_um_per_px: float, moving_mask: np.ndarray, moving_um_per_px: float, transform: sitk.Transform | None = None) -> float:
    """Tissue Dice on the fixed mask's grid after warping the moving mask with T (fixed -> moving)."""
    f = mask_image(np.asarray(fixed_mask, bool), fixed_um_per_px)
    m = mask_image(np.asarray(moving_mask, bool), moving_um_per_px)
    return image_dice(f, m, transform or sitk.Transform(2, sitk.sitkIdentity))


def warp_masks(
    masks: Sequence[np.ndarray],
    mask_um_per_px: Sequence[float],
    regs: Sequence[SectionRegistration],
    reference: int,
) -> list[np.ndarray]:
    """Every section's mask warped onto the reference mask's grid (bool [H, W] each), for
    :func:`asign_assets.registration.overlay.render_overlay`."""
    ref_img = mask_image(np.asarray(masks[reference], bool), mask_um_per_px[reference])
    out = []
    for m, s, reg in zip(masks, mask_um_per_px, regs):
        warped = sitk.Resample(mask_image(np.asarray(m, bool), s), ref_img, reg.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(warped) > 0.5)
    return out
