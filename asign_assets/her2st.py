"""Manifests for the HER2ST data layout (Andersson et al. 2021), legacy ST arrays.

Layout: ``ST-cnts/<S>.tsv.gz``, ``ST-spotfiles/<S>_selection.tsv``,
``ST-imgs/<patient>/<S>/*.jpg``. The pixel size is estimated per section from the spot
file (pixel coordinates against array coordinates; array pitch 200 um), so images
scanned at different resolutions are handled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from asign_assets.errors import InputError
from asign_assets.manifest import Manifest, SectionSpec, write_manifest
from asign_assets.readers import join_spots_counts, read_counts, read_spots

LEGACY_PITCH_UM = 200.0
LEGACY_DIAMETER_UM = 100.0


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
    measured: str,
    with_truth: bool = False,
    sample_id: str | None = None,
    out: Path | None = None,
    z_step_um: float = 16.0,
) -> tuple[Path, list[str]]:
    """Write a manifest for a HER2ST stack; returns its path and a report of joins."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise InputError(data_dir, "HER2ST data folder not found")
    if measured not in sections:
        raise InputError(None, f"measured section {measured!r} is not among the sections {sections}", field="--measured")
    if len(set(sections)) != len(sections):
        raise InputError(None, f"duplicate sections in {sections}", field="--sections")
    sample_id = sample_id or f"her2st_{patient}"
    out = Path(out or Path.cwd() / f"{sample_id}.yaml").resolve()
    report: list[str] = []
    specs = []
    for i, s in enumerate(sections):
        image, spots, counts = her2st_paths(data_dir, patient, s)
        px = estimate_pixel_size_um(spots)
        is_measured = s == measured
        if is_measured or with_truth:
            _, _, jr = join_spots_counts(read_spots(spots), read_counts(counts), counts)
            report.append(f"{s}: {jr.summary()}")
        specs.append(
            SectionSpec(
                name=s, z_um=i * z_step_um, image=image, pixel_size_um=round(px, 5), measured=is_measured,
                spots=spots, counts=counts if is_measured else None,
                truth=counts if (with_truth and not is_measured) else None,
            )
        )
    manifest = Manifest(
        sample_id=sample_id, path=out, spot_diameter_um=LEGACY_DIAMETER_UM, spot_pitch_um=LEGACY_PITCH_UM,
        sections=tuple(specs), description=f"HER2ST patient {patient}, sections {','.join(sections)}, measured {measured}",
    )
    write_manifest(manifest, out)
    return out, report
