"""What a registration is asked to do (``RegistrationParams``) and what it reports (``SectionRegistration``).

Kept apart from the search so that Dagster config and QC readers can use them
without pulling in the optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["RegistrationParams", "SectionRegistration"]


@dataclass(frozen=True)
class RegistrationParams:
    """Knobs of the mask registration (defaults tuned on HER2ST patient C)."""

    working_um_per_px: float = 40.0  # final rigid level
    coarse_um_per_px: float = 120.0  # multi-start level (tiny images, cheap starts)
    blur_sigma_um: float = 80.0  # mask blur: smooth basin for mean squares
    n_angles: int = 36  # brute-force start every 360/n_angles degrees (cheap: metric only)
    try_flip: bool = True  # also start from the mirrored section
    flip_margin: float = 0.01  # a flip must win by this much Dice (shapes can be near-symmetric)
    n_refine: int = 2  # best coarse starts (per flip state) refined at working resolution
    refine: Literal["none", "affine", "bspline"] = "none"
    bspline_mesh_um: float = 2000.0  # control-point spacing for refine="bspline"
    min_dice: float = 0.85  # below this a section is reported as failed
    compose_neighbours: bool = True  # also chain neighbour registrations to the reference
    pad_um: float = 1000.0  # zero border so tissue can move partly out of its image
    coarse_iterations: int = 100
    working_iterations: int = 100
    n_threads: int | None = None  # None: respect sitk's global default
    seed: int = 0


@dataclass
class SectionRegistration:
    """One section's transform (common um -> own um) and its QC."""

    name: str
    transform: sitk.Transform
    flipped: bool
    rotation_deg: float
    translation_um: tuple[float, float]  # displacement of the reference tissue centroid
    dice_before: float  # raw images overlaid (no alignment)
    dice_after: float
    metric: float  # mean squares of blurred masks at working resolution (lower is better)
    seconds: float
    method: str = "direct"  # identity | direct | composed
    chain_discrepancy_um: float | None = None  # composed vs direct, mean over reference tissue
    dice_direct: float | None = None
    dice_composed: float | None = None
    min_dice: float = 0.85  # the threshold this registration is judged by

    @property
    def ok(self) -> bool:
        return bool(self.dice_after >= self.min_dice)

    def qc_row(self) -> dict:
        """One row of registrations/qc.parquet."""
        return {
            "section": self.name,
            "dice_before": float(self.dice_before),
            "dice_after": float(self.dice_after),
            "metric": float(self.metric),
            "flipped": bool(self.flipped),
            "rotation_deg": float(self.rotation_deg),
            "tx_um": float(self.translation_um[0]),
            "ty_um": float(self.translation_um[1]),
            "seconds": float(self.seconds),
            "method": self.method,
            "chain_discrepancy_um": (
                float("nan") if self.chain_discrepancy_um is None else float(self.chain_discrepancy_um)
            ),
        }
