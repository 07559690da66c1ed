"""Manifest keys that name a platform's output instead of a section's files.

A section may say ``visium: <Space Ranger outs/>`` or ``anndata: <file.h5ad>``; the
source resolves to the section's spots, counts, image, spot scale and pixel size
(:class:`~asign_assets.readers.visium.VisiumSection`). :func:`asign_assets.ingest.manifest.parse_manifest`
reads only this table, so a new platform is one entry here (and a ``SectionSpec`` field
of the same name, which the manifest writes back).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from asign_assets.readers.visium import (
    COUNTS_FILE, VISIUM_DIAMETER_UM, VISIUM_PITCH_UM, VisiumSection, resolve_anndata, resolve_visium,
)


class SectionSource(NamedTuple):
    """One source key: how it resolves ``(path, explicit_image, pitch_um)``, and what it implies.

    ``form`` is how error messages show the value; ``spot_diameter_um``/``spot_pitch_um``
    are the manifest's defaults when every section is such a source; ``counts_file`` is the
    counts file inside the source folder, named when it is missing (None: the source is
    its own counts file).
    """

    key: str
    resolve: Callable[[Path, bool, float], VisiumSection]
    form: str
    spot_diameter_um: float
    spot_pitch_um: float
    counts_file: str | None = None


SECTION_SOURCES: tuple[SectionSource, ...] = (
    SectionSource("visium", resolve_visium, "<Space Ranger outs/>", VISIUM_DIAMETER_UM, VISIUM_PITCH_UM, COUNTS_FILE),
    SectionSource("anndata", resolve_anndata, "<file.h5ad>", VISIUM_DIAMETER_UM, VISIUM_PITCH_UM),
)
SOURCE_KEYS = frozenset(s.key for s in SECTION_SOURCES)
