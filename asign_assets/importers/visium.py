"""``asign import-visium``: a manifest for a stack of Visium (Space Ranger ``outs/``) folders.

Only the manifest is written; what each folder gives a section (spots, image, scale,
pixel size, counts) is resolved when the manifest is loaded (:mod:`asign_assets.readers.visium`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asign_assets.errors import InputError
from asign_assets.readers.visium import outs_folder


def section_name(folder: str | Path) -> str:
    """A section's name from its folder: the folder's name, or its parent's when it is ``outs``."""
    folder = Path(folder).expanduser().resolve()
    return folder.parent.name if folder.name == "outs" else folder.name


def manifest_from_visium(
    folders: list[str | Path],
    measured: str | Sequence[str],
    with_truth: bool = False,
    sample_id: str | None = None,
    out: Path | None = None,
    z_step_um: float = 10.0,
) -> tuple[Path, list[str]]:
    """Write a manifest of ``visium:`` sections in the given stack order; returns its path and a report.

    ``measured`` names one section or several (every one given is measured).

    Section names are the folder names (the parent's for ``outs``). Nothing is computed by
    hand: spots, image, scale and pixel size are resolved from each folder when the
    manifest is loaded. The manifest is validated before it is written.
    """
    from asign_assets.ingest.manifest import SECTION_NAME_RE, measured_names, parse_manifest, write_manifest
    from asign_assets.ingest.sections import read_section_spots
    from asign_assets.readers.counts import read_counts
    from asign_assets.readers.join import join_spots_counts

    if not folders:
        raise InputError(None, "give at least one Visium folder", field="DIR")
    resolved = [outs_folder(f) for f in folders]
    names = [section_name(f) for f in resolved]
    for folder, name in zip(resolved, names):
        if not SECTION_NAME_RE.match(name):
            raise InputError(folder, f"section name {name!r} (from the folder name) must be letters, digits, '_', '.', '-'; rename the folder")
    if len(set(names)) != len(names):
        raise InputError(None, f"duplicate section names {names} (from the folder names); rename a folder", field="DIR")
    measured = measured_names(measured, names)
    sample_id = sample_id or f"visium_{'_'.join(measured)}"
    out = Path(out or Path.cwd() / f"{sample_id}.yaml").expanduser().resolve()
    raw: dict[str, Any] = {
        "sample_id": sample_id,
        "description": f"Visium sections {','.join(names)}, measured {','.join(measured)}",
        "sections": [],
    }
    for i, (name, folder) in enumerate(zip(names, resolved)):
        sec: dict[str, Any] = {"name": name, "z_um": round(i * z_step_um, 6), "visium": os.path.relpath(folder, out.parent)}
        if name in measured:
            sec["measured"] = True
        elif with_truth:
            sec["truth"] = True
        raw["sections"].append(sec)
    manifest = parse_manifest(raw, out)
    report = []
    for spec in manifest.sections:
        spots = read_section_spots(spec)
        assert spots is not None and spec.spots is not None  # a visium section always has its positions
        line = (
            f"{spec.name}: {spots.height} in-tissue spots ({spec.spots.name}); image {spec.image.name} "
            f"(spot scale {spec.spot_scale:g}); pixel size {spec.pixel_size_um:.4g} um/px from {spec.pixel_size_source}"
        )
        counts = spec.counts or spec.truth
        if counts is not None:
            _, _, jr = join_spots_counts(spots, read_counts(counts), counts)
            line += f"; {'counts' if spec.measured else 'truth'}: {jr.summary()}"
        report.append(line)
    write_manifest(manifest, out)
    return out, report

