"""Manifests for the HER2ST data layout (Andersson et al. 2021), legacy ST arrays.

Layout: ``ST-cnts/<S>.tsv.gz``, ``ST-spotfiles/<S>_selection.tsv``,
``ST-imgs/<patient>/<S>/*.jpg``. The pixel size is estimated per section from the spot
file (pixel coordinates against array coordinates; array pitch 200 um), so images
scanned at different resolutions are handled.

Depth (``z_um``) of each section, :func:`her2st_z_um`. Patients A-D have six sections
from three depths of the block, two consecutive serial sections per depth (X1/X2, X3/X4,
X5/X6): Andersson et al. 2021 (Nat. Commun. 12:6012), and the data README at
``shared/data/her2st/README.md`` ("sections C1,C2 / D1,D2 / E1,E2 of the block ... are
consecutive serial sections at three depths"). The numbers used:

- consecutive sections are one section thickness apart: ``SECTION_THICKNESS_UM`` = 16 um,
  the thickness the ST protocol of that study cut (the project's previous uniform z step);
- the three depths are ``DEPTH_GAP_UM`` = 100 um apart. Neither the README nor the data
  give this distance; 100 um is an assumption (of the order of the ST spot diameter),
  stated here and in docs/accuracy.md. The manifest's ``z_um`` overrides it per section
  (``asign import-her2st --z C3=120,...`` or an edited manifest).

Patients E-H (three sections, one depth) and unknown names fall back to consecutive
sections one thickness apart in stack order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from asign_assets.errors import InputError
from asign_assets.ingest.manifest import Manifest, SectionSpec, measured_names, write_manifest
from asign_assets.readers.counts import read_counts
from asign_assets.readers.join import join_spots_counts
from asign_assets.readers.spots import read_spots

LEGACY_PITCH_UM = 200.0
LEGACY_DIAMETER_UM = 100.0
SECTION_THICKNESS_UM = 16.0
DEPTH_GAP_UM = 100.0
_DEPTH_PATIENTS = "ABCD"


def her2st_z_um(sections: list[str], thickness_um: float = SECTION_THICKNESS_UM, depth_gap_um: float = DEPTH_GAP_UM) -> list[float]:
    """z (um) of each section from the block layout (see the module docstring).

    Six-section patients (A-D): section k (1..6) lies at depth ``(k-1)//2`` and is the
    ``(k-1)%2``-th of its consecutive pair. Anything else: ``i * thickness_um`` in the
    given order.
    """
    def parse(name: str) -> tuple[str, int] | None:
        if len(name) >= 2 and name[0].upper() in _DEPTH_PATIENTS and name[1:].isdigit() and 1 <= int(name[1:]) <= 6:
            return name[0].upper(), int(name[1:])
        return None

    parsed = [parse(s) for s in sections]
    if all(p is not None for p in parsed) and len({p[0] for p in parsed}) == 1:  # type: ignore[index]
        return [((k - 1) // 2) * depth_gap_um + ((k - 1) % 2) * thickness_um for _, k in parsed]  # type: ignore[misc]
    return [i * thickness_um for i in range(len(sections))]


def her2st_paths(data_dir: Path, patient: str, section: str) -> tuple[Path, Path, Path]:
    """Image, spot file and counts of one HER2ST section, with clear errors."""
    counts = data_dir / "ST-cnts" / f"{section}.tsv.gz"
    spots = data_dir / "ST-spotfiles" / f"{section}_selection.tsv"
    img_dir = data_dir / "ST-imgs" / patient / section
    for p in (counts, spots):
        if not p.exists():
            raise InputError(p, f"section {section}: file not found in the HER2ST layout")
    if not img_dir.is_dir():
        raise InputError(img_dir, f"section {section}: image folder not found (ST-imgs/{patient}/{section}/)")
    jpgs = sorted(list(img_dir.glob("*.jpg")) + list(img_dir.glob("*.jpeg")) + list(img_dir.glob("*.tif")) + list(img_dir.glob("*.png")))
    if len(jpgs) != 1:
        raise InputError(img_dir, f"section {section}: expected exactly one image, found {len(jpgs)}")
    return jpgs[0], spots, counts


def estimate_pixel_size_um(spot_file: Path, pitch_um: float = LEGACY_PITCH_UM) -> float:
    """um per pixel from a least-squares fit of pixel against array coordinates."""
    df = pl.read_csv(spot_file, separator="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(df.columns):
        raise InputError(spot_file, f"spot file lacks columns {sorted(need - set(df.columns))}")
    # Integer array coordinates are 1 pitch apart; new_x/new_y are detection-adjusted and are not.
    ax, ay = df["x"].to_numpy().astype(float), df["y"].to_numpy().astype(float)
    A = np.stack([ax, ay, np.ones_like(ax)], 1)
    coef, *_ = np.linalg.lstsq(A, np.stack([df["pixel_x"].to_numpy(), df["pixel_y"].to_numpy()], 1), rcond=None)
    px_per_unit = float(np.sqrt(np.abs(np.linalg.det(coef[:2].T))))
    if not px_per_unit > 0:
        raise InputError(spot_file, "cannot estimate the pixel size from array and pixel coordinates")
    return pitch_um / px_per_unit


def manifest_from_her2st(
    data_dir: Path,
    patient: str,
    sections: list[str],
    measured: str | Sequence[str],
    with_truth: bool = False,
    sample_id: str | None = None,
    out: Path | None = None,
    z_step_um: float | None = None,
    z_um: dict[str, float] | None = None,
) -> tuple[Path, list[str]]:
    """Write a manifest for a HER2ST stack; returns its path and a report of joins.

    ``measured`` names one section or several (every one given is measured).

    Section depths come from :func:`her2st_z_um` (the block layout), or are
    ``i * z_step_um`` when that is given; ``z_um`` overrides single sections.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise InputError(data_dir, "HER2ST data folder not found")
    measured = measured_names(measured, sections)
    if len(set(sections)) != len(sections):
        raise InputError(None, f"duplicate sections in {sections}", field="--sections")
    sample_id = sample_id or f"her2st_{patient}"
    out = Path(out or Path.cwd() / f"{sample_id}.yaml").resolve()
    unknown = sorted(set(z_um or {}) - set(sections))
    if unknown:
        raise InputError(None, f"z given for sections {unknown} that are not among {sections}", field="--z")
    zs = her2st_z_um(sections) if z_step_um is None else [i * z_step_um for i in range(len(sections))]
    zs = [float((z_um or {}).get(s, z)) for s, z in zip(sections, zs)]
    report: list[str] = []
    specs = []
    for i, s in enumerate(sections):
        image, spots, counts = her2st_paths(data_dir, patient, s)
        px = estimate_pixel_size_um(spots)
        is_measured = s in measured
        if is_measured or with_truth:
            _, _, jr = join_spots_counts(read_spots(spots), read_counts(counts), counts)
            report.append(f"{s}: {jr.summary()}")
        specs.append(
            SectionSpec(
                name=s, z_um=zs[i], image=image, pixel_size_um=round(px, 5), measured=is_measured,
                spots=spots, counts=counts if is_measured else None,
                truth=counts if (with_truth and not is_measured) else None,
            )
        )
    manifest = Manifest(
        sample_id=sample_id, path=out, spot_diameter_um=LEGACY_DIAMETER_UM, spot_pitch_um=LEGACY_PITCH_UM,
        sections=tuple(specs), description=f"HER2ST patient {patient}, sections {','.join(sections)}, measured {','.join(measured)}",
    )
    write_manifest(manifest, out)
    return out, report
