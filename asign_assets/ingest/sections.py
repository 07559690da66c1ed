"""The `sections` stage: validate every input of a sample and lay out its spots.

Everything a later stage needs from the raw files is checked here, before any output
is written: images decode, spots lie inside their image, every measured section's spots
and counts join. Sections without a spot table get a virtual lattice over their tissue
with the reference measured section's geometry (:attr:`Manifest.reference_index`). Truth
counts are never opened here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from asign_assets.ingest import lattice
from asign_assets.ingest import plausibility
from asign_assets.imaging import tissue
from asign_assets.errors import InputError
from asign_assets.ingest.manifest import Manifest, SectionSpec, reference_position
from asign_assets.readers.counts import CountMatrix, read_counts
from asign_assets.readers.join import JoinReport, join_spots_counts
from asign_assets.readers.slide import Slide
from asign_assets.readers.spots import read_spots, spots_source
from asign_assets.storage import layout

THUMB_MAX_SIDE = 1024
MIN_MEASURED_SPOTS = 20


@dataclass
class SectionRecord:
    """Per-section facts written to sections.json and shown as metadata."""

    name: str
    section_index: int
    z_um: float
    pixel_size_um: float
    image: str
    width: int
    height: int
    measured: bool
    thumb_scale: float
    tissue_area_mm2: float
    n_spots: int
    n_virtual: int
    pixel_size_source: str = "manifest"


@dataclass
class PreparedSections:
    records: list[SectionRecord]
    spots: pl.DataFrame
    thumbnails: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    join_reports: dict[str, JoinReport]  # per measured section
    lattice: lattice.LatticeGeometry | None
    seconds: float
    plausibility: dict[str, dict[str, float]]


def _check_spots_in_image(spots: pl.DataFrame, spec: SectionSpec, width: int, height: int) -> None:
    x = spots["x_px"].to_numpy()
    y = spots["y_px"].to_numpy()
    outside = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    if outside.any():
        span = f"x {x.min():.0f}..{x.max():.0f}, y {y.min():.0f}..{y.max():.0f}"
        smaller = (x.max() > 1.5 * width) or (y.max() > 1.5 * height)
        hint = " (the image is far smaller than the spot coordinates imply: wrong image or a downscaled export?)" if smaller else ""
        raise InputError(
            spec.spots or spec.image,
            f"section {spec.name}: {int(outside.sum())} of {len(x)} spots lie outside the {width}x{height} image "
            f"[{spec.image.name}] (spots span {span}){hint}",
        )


def read_section_spots(spec: SectionSpec) -> pl.DataFrame | None:
    """A section's spots in its image's pixel frame, or None when it has no spot table.

    The one way the pipeline reads a section's spots: the table is ``spots``, else a counts
    file that holds spots too (an ``.h5ad``); the section's ``spot_scale`` is applied here.
    """
    source = spots_source(spec.spots, spec.counts)
    return None if source is None else read_spots(source, scale=spec.spot_scale)


def read_measured(spec: SectionSpec, normalised: bool = False) -> tuple[pl.DataFrame, CountMatrix, JoinReport]:
    """Spots (in the image's pixel frame) and counts of a measured section, joined on spot id
    (``normalised``: the counts are already normalised, see the manifest's ``checks``)."""
    assert spec.counts is not None
    counts = read_counts(spec.counts, normalised=normalised)
    spots = read_section_spots(spec)
    if spots is None:
        raise InputError(spec.counts, f"section {spec.name}: a measured section needs a spot table ('spots'), an .h5ad with obsm['spatial'], or a 'visium'/'anndata' source")
    spots, counts, report = join_spots_counts(spots, counts, spec.counts)
    if spots.height < MIN_MEASURED_SPOTS:
        raise InputError(spec.counts, f"section {spec.name}: only {spots.height} measured spots; at least {MIN_MEASURED_SPOTS} are needed to train")
    return spots, counts, report


def reference_record(records: list[SectionRecord]) -> SectionRecord:
    """The measured section the others are registered to (:func:`manifest.reference_position`)."""
    return records[reference_position([r.z_um for r in records], [r.measured for r in records])]


def prepare_sections(manifest: Manifest) -> PreparedSections:
    """Validate inputs and build the spot table, thumbnails and masks (no writing)."""
    t0 = time.perf_counter()
    manifest = manifest.without_truth()
    m_set = set(manifest.measured_indices)
    measured = {i: read_measured(manifest.sections[i], manifest.checks.counts_normalised) for i in manifest.measured_indices}
    m_idx = manifest.reference_index
    m_spec, m_spots = manifest.sections[m_idx], measured[m_idx][0]

    records: list[SectionRecord] = []
    frames: list[pl.DataFrame] = []
    thumbs: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    geom: lattice.LatticeGeometry | None = None
    # Measured first, so the reference's lattice geometry is known for the virtual sections.
    order = sorted(range(len(manifest.sections)), key=lambda i: (i not in m_set, i))
    per_section: dict[int, tuple] = {}
    for i in order:
        spec = manifest.sections[i]
        with Slide(spec.image) as slide:
            (width, height), (thumb, scale) = (slide.width, slide.height), slide.thumbnail(THUMB_MAX_SIDE)
        mask = tissue.tissue_mask(thumb)
        if not mask.any():
            raise InputError(spec.image, f"section {spec.name}: no tissue found in the image (blank or nearly white slide)")
        virtual = False
        if i in measured:
            spots = measured[i][0]
        elif (own := read_section_spots(spec)) is not None:
            spots = own
        else:
            if geom is None:
                xy = np.stack([m_spots["x_px"].to_numpy(), m_spots["y_px"].to_numpy()], 1)
                geom = lattice.infer_lattice(xy, m_spec.pixel_size_um, manifest.spot_diameter_um)
            xy_v, ids = lattice.lattice_over_mask(geom, mask, scale, spec.pixel_size_um, (width, height))
            if len(ids) == 0:
                raise InputError(spec.image, f"section {spec.name}: tissue too small for a single virtual spot")
            spots = pl.DataFrame({"spot_id": ids, "x_px": xy_v[:, 0].astype(np.float64), "y_px": xy_v[:, 1].astype(np.float64)})
            virtual = True
        _check_spots_in_image(spots, spec, width, height)
        per_section[i] = (spots, virtual, width, height, thumb, scale, mask)
    evidence = [
        plausibility.SectionEvidence(
            index=i, spec=spec, thumb=per_section[i][4], thumb_scale=per_section[i][5], mask=per_section[i][6],
            xy_px=None if per_section[i][1] else per_section[i][0].select("x_px", "y_px").to_numpy(),
            spots_source=spec.spots or spec.counts,
        )
        for i, spec in enumerate(manifest.sections)
    ]
    areas = {ev.spec.name: tissue.tissue_area_mm2(ev.mask, ev.thumb_scale, ev.spec.pixel_size_um) for ev in evidence}
    figures = plausibility.check_sections(manifest, evidence, areas)

    for i, spec in enumerate(manifest.sections):
        spots, virtual, width, height, thumb, scale, mask = per_section[i]
        n = spots.height
        frames.append(
            spots.select(
                pl.lit(spec.name).alias("section"),
                pl.lit(i, dtype=pl.Int32).alias("section_index"),
                pl.col("spot_id").cast(pl.Utf8),
                pl.col("x_px").cast(pl.Float64),
                pl.col("y_px").cast(pl.Float64),
                pl.lit(virtual).alias("virtual"),
                pl.lit(i in m_set).alias("measured"),
            )
        )
        thumbs[spec.name] = thumb
        masks[spec.name] = mask
        records.append(
            SectionRecord(
                name=spec.name, section_index=i, z_um=spec.z_um, pixel_size_um=spec.pixel_size_um,
                image=str(spec.image), width=width, height=height, measured=i in m_set,
                thumb_scale=scale, tissue_area_mm2=round(areas[spec.name], 4),
                n_spots=n, n_virtual=n if virtual else 0, pixel_size_source=spec.pixel_size_source,
            )
        )
    return PreparedSections(
        records=records, spots=pl.concat(frames), thumbnails=thumbs, masks=masks,
        join_reports={manifest.sections[i].name: m[2] for i, m in measured.items()}, lattice=geom, seconds=time.perf_counter() - t0, plausibility=figures,
    )


def write_sections(prep: PreparedSections, out_dir: Path) -> None:
    """Write the stage's files into a (temporary) folder."""
    out_dir.mkdir(parents=True)
    (out_dir / layout.name("sections", "thumbnails")).mkdir()
    (out_dir / layout.name("sections", "masks")).mkdir()
    (out_dir / layout.name("sections", "records")).write_text(json.dumps([asdict(r) for r in prep.records], indent=1))
    prep.spots.write_parquet(out_dir / layout.name("sections", "spots"), statistics=False)
    for name, thumb in prep.thumbnails.items():
        Image.fromarray(thumb).save(out_dir / layout.name("sections", "thumbnails") / f"{name}.png")
        Image.fromarray(prep.masks[name].astype(np.uint8) * 255).save(out_dir / layout.name("sections", "masks") / f"{name}.png")


def load_records(sections_dir: Path) -> list[SectionRecord]:
    return [SectionRecord(**r) for r in json.loads((Path(sections_dir) / layout.name("sections", "records")).read_text())]


def load_spots(sections_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(Path(sections_dir) / layout.name("sections", "spots"))


def load_mask(sections_dir: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(Path(sections_dir) / layout.name("sections", "masks") / f"{name}.png")) > 127


def load_thumbnail(sections_dir: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(Path(sections_dir) / layout.name("sections", "thumbnails") / f"{name}.png").convert("RGB"))
