"""Plausibility checks: inputs whose own data shows they are wrong are refused.

Each check compares a figure measured on the data with what the manifest implies, and
fails with an :class:`InputError` naming the file and the field, the measured figure and
what was expected. They run in :func:`asign_assets.ingest.sections.prepare_sections`, so
`asign validate` and the `sections` asset refuse the input before anything is written:

* spots lie on the tissue (transposed coordinates, another unit, another section);
* the spot table's lattice spacing agrees with ``spot_pitch_um`` (a wrong pixel size);
* the tissue area is plausible for the spot count and pitch;
* no two sections share the same (or a near-identical) image.

Count values (finite, non-negative, integer-like unless declared normalised) are checked
where they are read, by :func:`asign_assets.readers.counts.check_count_values`.

Thresholds and exemptions come from the manifest's ``checks:`` mapping (:class:`Checks`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from asign_assets.errors import InputError
from asign_assets.imaging.tissue import spot_coverage
from asign_assets.ingest.manifest import Checks, Manifest, SectionSpec

#: Tissue area / area the spots tile, outside which the pixel size or the image is wrong.
#: The spots of a legacy ST or Visium array tile the tissue they cover, so the ratio is ~1
#: when the array covers the tissue; tissue larger than the array raises it.
AREA_RATIO_RANGE = (0.4, 8.0)
#: Two sections whose 128 px grey thumbnails differ by less than this mean absolute
#: difference (grey levels of 255) are the same slide (re-encoded or rescaled).
NEAR_IDENTICAL_MAD = 2.0
#: A table with fewer spots on tissue than this, whose x/y swap puts at least
#: TRANSPOSED_MARGIN more of them on tissue, is refused as transposed.
TRANSPOSED_MAX_FIT = 0.95
TRANSPOSED_MARGIN = 0.10
_COMPARE_SIDE = 128


@dataclass(frozen=True)
class SectionEvidence:
    """What the checks need of one section; ``xy_px`` is None for a virtual lattice."""

    index: int
    spec: SectionSpec
    thumb: np.ndarray
    thumb_scale: float
    mask: np.ndarray
    xy_px: np.ndarray | None
    spots_source: Path | None


def nn_spacing_px(xy_px: np.ndarray) -> float:
    """Median nearest-neighbour distance between distinct spot centres (px)."""
    xy = np.unique(np.asarray(xy_px, dtype=np.float64), axis=0)
    if len(xy) < 2:
        return float("nan")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def check_spots_on_tissue(ev: SectionEvidence, min_fraction: float) -> float:
    """Refuse a spot table whose spots mostly miss the tissue; returns the fraction."""
    assert ev.xy_px is not None
    frac = spot_coverage(ev.mask, ev.thumb_scale, ev.xy_px)
    if frac < min_fraction:
        raise InputError(
            ev.spots_source, f"section {ev.spec.name}: only {frac:.1%} of {len(ev.xy_px)} spots lie on the tissue of "
            f"{ev.spec.image.name}; expected at least {min_fraction:.0%} (x/y transposed, coordinates in another unit or "
            f"scale, or the spot table of another section?). Lower checks.min_spots_on_tissue only if the tissue "
            f"detection is wrong", field="x_px, y_px",
        )
    # Roughly symmetric tissue keeps most transposed spots on it: compare with the swap.
    swapped = spot_coverage(ev.mask, ev.thumb_scale, ev.xy_px[:, ::-1])
    if frac < TRANSPOSED_MAX_FIT and swapped - frac >= TRANSPOSED_MARGIN:
        raise InputError(
            ev.spots_source, f"section {ev.spec.name}: the spots fit the tissue of {ev.spec.image.name} far better with x "
            f"and y swapped ({swapped:.1%} on tissue against {frac:.1%} as given): the spot table looks transposed "
            f"(x is the image column, y the row)", field="x_px, y_px",
        )
    return frac


def check_pitch(ev: SectionEvidence, manifest: Manifest, tolerance: float) -> float:
    """Refuse a pixel size under which the spot lattice has the wrong pitch; returns the ratio."""
    assert ev.xy_px is not None
    spacing_px = nn_spacing_px(ev.xy_px)
    if not math.isfinite(spacing_px) or spacing_px <= 0:
        return float("nan")
    px = ev.spec.pixel_size_um
    measured_um = spacing_px * px
    ratio = measured_um / manifest.spot_pitch_um
    if abs(ratio - 1.0) > tolerance:
        raise InputError(
            manifest.path, f"section {ev.spec.name}: the spots in {ev.spots_source.name if ev.spots_source else 'the spot table'} "
            f"are {spacing_px:.1f} px apart (median nearest neighbour), i.e. {measured_um:.1f} um at pixel_size_um {px:g}, "
            f"but spot_pitch_um is {manifest.spot_pitch_um:g} (ratio {ratio:.2f}, expected {1 - tolerance:.2f}-{1 + tolerance:.2f}); "
            f"a pixel size of {manifest.spot_pitch_um / spacing_px:.4g} um would agree",
            field=f"sections[{ev.index}].pixel_size_um",
        )
    return ratio


def check_tissue_area(ev: SectionEvidence, manifest: Manifest, tissue_mm2: float) -> float:
    """Refuse a tissue area far from what the spots tile; returns tissue / spot area."""
    assert ev.xy_px is not None
    # Area per spot of the lattice: pitch^2 (square) or pitch^2 * sqrt(3)/2 (hex); take the mean.
    spot_mm2 = len(ev.xy_px) * manifest.spot_pitch_um**2 * (1 + math.sqrt(3) / 2) / 2 * 1e-6
    ratio = tissue_mm2 / spot_mm2
    lo, hi = AREA_RATIO_RANGE
    if not lo <= ratio <= hi:
        raise InputError(
            manifest.path, f"section {ev.spec.name}: the tissue on {ev.spec.image.name} measures {tissue_mm2:.3g} mm2 at "
            f"pixel_size_um {ev.spec.pixel_size_um:g}, but its {len(ev.xy_px)} spots at {manifest.spot_pitch_um:g} um pitch "
            f"tile {spot_mm2:.3g} mm2 (ratio {ratio:.2f}, expected {lo:g}-{hi:g}): wrong pixel size or wrong image?",
            field=f"sections[{ev.index}].pixel_size_um",
        )
    return ratio


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _grey(thumb: np.ndarray) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(thumb)).convert("L").resize((_COMPARE_SIDE, _COMPARE_SIDE), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float32)


def check_distinct_images(evidence: list[SectionEvidence]) -> dict[tuple[str, str], float]:
    """Refuse two sections with the same or a near-identical image; returns pairwise differences."""
    digests: dict[str, SectionEvidence] = {}
    for ev in evidence:
        d = _file_digest(ev.spec.image)
        if d in digests:
            first = digests[d]
            raise InputError(
                ev.spec.image, f"sections {first.spec.name} and {ev.spec.name} have the same image (identical file content "
                f"to {first.spec.image}); serial sections are different slides. Set checks.allow_identical_images: true "
                f"if this is intended", field=f"sections[{ev.index}].image",
            )
        digests[d] = ev
    greys = [_grey(ev.thumb) for ev in evidence]
    out: dict[tuple[str, str], float] = {}
    for a in range(len(evidence)):
        for b in range(a + 1, len(evidence)):
            mad = float(np.abs(greys[a] - greys[b]).mean())
            out[(evidence[a].spec.name, evidence[b].spec.name)] = mad
            if mad < NEAR_IDENTICAL_MAD:
                ea, eb = evidence[a], evidence[b]
                raise InputError(
                    eb.spec.image, f"sections {ea.spec.name} and {eb.spec.name} have near-identical images (mean grey "
                    f"difference {mad:.2f} of 255 on 128 px thumbnails, expected at least {NEAR_IDENTICAL_MAD:g} for "
                    f"different slides; {ea.spec.image.name} vs {eb.spec.image.name}). Set checks.allow_identical_images: "
                    f"true if this is intended", field=f"sections[{eb.index}].image",
                )
    return out


def check_sections(manifest: Manifest, evidence: list[SectionEvidence], tissue_mm2: dict[str, float]) -> dict[str, dict[str, float]]:
    """Run every section-level check; returns the measured figures per section (for reports)."""
    checks: Checks = manifest.checks
    figures: dict[str, dict[str, float]] = {ev.spec.name: {} for ev in evidence}
    for ev in evidence:
        if ev.xy_px is None:
            continue
        f = figures[ev.spec.name]
        f["spots_on_tissue"] = check_spots_on_tissue(ev, checks.min_spots_on_tissue)
        f["pitch_ratio"] = check_pitch(ev, manifest, checks.pitch_tolerance)
        f["area_ratio"] = check_tissue_area(ev, manifest, tissue_mm2[ev.spec.name])
    if not checks.allow_identical_images:
        diffs = check_distinct_images(evidence)
        for (a, b), mad in diffs.items():
            for name in (a, b):
                figures[name]["min_image_difference"] = min(figures[name].get("min_image_difference", math.inf), mad)
    return figures
