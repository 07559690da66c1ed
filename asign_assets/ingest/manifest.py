"""Sample manifests: one YAML file per sample describing its stack of sections.

A manifest is the only thing a user writes. Paths inside it are relative to the
manifest file. One or more sections are ``measured``: their counts are the input (the
model trains on all of them and propagation starts from all of them). Other sections may
carry ``truth`` counts, which only the evaluation stage may open.

A section may name a Visium source instead of its files (:mod:`asign_assets.readers.sources`):
``visium: <Space Ranger outs/ folder>`` or ``anndata: <scanpy/squidpy .h5ad>``. The source
gives the spots, the image (with the scale that maps full-resolution spot pixels onto it),
the pixel size, and the counts: as ``counts`` on a measured section, as ``truth`` on
another section that says ``truth: true``. Explicit ``image``, ``spots``, ``counts``,
``truth`` (a path) and per-section ``pixel_size_um`` keys win over the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asign_assets.ingest import strict_yaml
from asign_assets.errors import InputError
from asign_assets.readers.paths import require_regular_file
from asign_assets.readers.slide import file_pixel_size_um
from asign_assets.readers.sources import SECTION_SOURCES, SOURCE_KEYS, SectionSource
from asign_assets.readers.visium import VisiumSection

SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: A manifest is a few kilobytes; anything far larger is not one (and is not parsed).
MAX_MANIFEST_BYTES = 1 << 20
#: Keys whose values stay strings exactly as written (no number parsing).
_STRING_KEYS = frozenset({"sample_id", "name", "description"})

log = logging.getLogger(__name__)

_TOP_KEYS = {"sample_id", "pixel_size_um", "spot_diameter_um", "spot_pitch_um", "sections", "description", "checks"}
_SECTION_KEYS = {"name", "z_um", "image", "spots", "counts", "truth", "measured", "pixel_size_um"} | SOURCE_KEYS
#: How the missing-image error shows the sources: 'visium: <Space Ranger outs/>' or 'anndata: <file.h5ad>'.
_SOURCE_FORMS = " or ".join(f"'{s.key}: {s.form}'" for s in SECTION_SOURCES)


@dataclass(frozen=True)
class Checks:
    """The manifest's optional ``checks:`` mapping: thresholds of the plausibility checks."""

    min_spots_on_tissue: float = 0.8
    pitch_tolerance: float = 0.25
    allow_identical_images: bool = False
    counts_normalised: bool = False


def _parse_checks(raw: Any, src: Path) -> Checks:
    if raw is None:
        return Checks()
    if not isinstance(raw, dict):
        raise InputError(src, "must be a mapping of check settings", field="checks")
    allowed = {f.name: f.default for f in dataclasses.fields(Checks)}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise InputError(src, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}", field=f"checks.{unknown[0]}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(allowed[key], bool):
            if not isinstance(value, bool):
                raise InputError(src, f"must be true or false, got {value!r}", field=f"checks.{key}")
            out[key] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(src, f"must be a number between 0 and 1, got {value!r}", field=f"checks.{key}")
        else:
            out[key] = float(value)
    return Checks(**out)


@dataclass(frozen=True)
class SectionSpec:
    """One serial section: an H&E image, optionally spots, counts (measured) or truth.

    Spot tables hold full-resolution pixels; ``spot_scale`` (image px per spot-table px)
    maps them onto ``image``, applied by :func:`asign_assets.ingest.sections.read_section_spots`.
    ``derived`` names the keys filled from ``visium``/``anndata`` or the image file rather
    than written in the manifest, so writing the manifest back keeps the user's form.
    """

    name: str
    z_um: float
    image: Path
    pixel_size_um: float
    measured: bool = False
    spots: Path | None = None
    counts: Path | None = None
    truth: Path | None = None
    spot_scale: float = 1.0
    pixel_size_source: str = "manifest"
    visium: Path | None = None
    anndata: Path | None = None
    derived: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Manifest:
    """A validated sample manifest with absolute paths."""

    sample_id: str
    path: Path
    spot_diameter_um: float
    spot_pitch_um: float
    sections: tuple[SectionSpec, ...]
    description: str = ""
    checks: Checks = field(default_factory=Checks)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def measured_indices(self) -> tuple[int, ...]:
        """Stack positions of the measured sections (at least one), in stack order."""
        return tuple(i for i, s in enumerate(self.sections) if s.measured)

    @property
    def measured_sections(self) -> tuple[SectionSpec, ...]:
        return tuple(self.sections[i] for i in self.measured_indices)

    @property
    def reference_index(self) -> int:
        """The measured section every other is registered to and whose lattice virtual spots
        copy: see :func:`reference_position`."""
        return reference_position([s.z_um for s in self.sections], [s.measured for s in self.sections])

    @property
    def section_names(self) -> list[str]:
        return [s.name for s in self.sections]

    @property
    def has_truth(self) -> bool:
        return any(s.truth is not None for s in self.sections)

    def without_truth(self) -> "Manifest":
        """The view every non-evaluation stage gets: truth paths are gone."""
        return dataclasses.replace(
            self, sections=tuple(dataclasses.replace(s, truth=None) for s in self.sections)
        )

    def input_fingerprint(self) -> str:
        """Hash of everything except truth, so truth edits never look like new input."""
        payload = yaml.safe_dump(to_dict(self.without_truth(), relative_to=None), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def digest(self) -> str:
        """Hash of the whole manifest (truth and checks included): the identity of a sample's
        outputs. Equal for a user's file and its registered (absolute-path) copy."""
        payload = json.dumps(to_dict(self, relative_to=None), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def reference_position(z_um: list[float], measured: list[bool]) -> int:
    """Index of the measured section nearest the stack's middle depth (first on a tie).

    Registering every section to it keeps the chains of neighbour registrations short; with
    one measured section it is that section.
    """
    mid = (min(z_um) + max(z_um)) / 2
    return min((i for i, m in enumerate(measured) if m), key=lambda i: (abs(z_um[i] - mid), i))


def measured_names(measured: str | Sequence[str], sections: Sequence[str]) -> list[str]:
    """The importers' ``--measured``: one name or several, each a section of the stack, in
    stack order; at least one section stays unmeasured."""
    given = [measured] if isinstance(measured, str) else list(measured)
    unknown = [m for m in given if m not in sections]
    if not given or unknown:
        raise InputError(None, f"measured section {(unknown or given or [''])[0]!r} is not among the sections {list(sections)}", field="--measured")
    out = [s for s in sections if s in given]
    if len(out) == len(sections):
        raise InputError(None, f"every section {list(sections)} is measured: leave at least one to impute", field="--measured")
    return out


def _require(raw: dict, key: str, src: Path, where: str = "") -> Any:
    if key not in raw or raw[key] is None:
        raise InputError(src, "is required but missing", field=f"{where}{key}")
    return raw[key]


def _positive_float(value: Any, src: Path, fld: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(src, f"must be a number, got {value!r}", field=fld) from None
    if not out > 0 or out != out or out == float("inf"):
        raise InputError(src, f"must be a positive finite number, got {value!r}", field=fld)
    return out


def _path(value: Any, base: Path, src: Path, fld: str, must_exist: bool) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(src, f"must be a file path string, got {value!r}", field=fld)
    p = Path(value).expanduser()
    p = (base / p) if not p.is_absolute() else p
    p = p.resolve()
    if must_exist and not p.exists():
        raise InputError(src, f"file not found: {p}", field=fld)
    return p


def _sources_given(sraw: Any) -> list[SectionSource]:
    """The source keys (``visium``, ``anndata``, ...) a raw section gives, in table order."""
    return [s for s in SECTION_SOURCES if isinstance(sraw, dict) and sraw.get(s.key)]


def _source_lattice(sraw: Any) -> tuple[float, float] | None:
    """(spot diameter, pitch) in um implied by a raw section's source, or None without one."""
    given = _sources_given(sraw)
    return (given[0].spot_diameter_um, given[0].spot_pitch_um) if given else None


def _section_source(sraw: dict, base: Path, src: Path, where: str, pitch_um: float) -> tuple[SectionSource, Path, VisiumSection] | None:
    """The section's source (:data:`SECTION_SOURCES`): (kind, path, what it resolves to), or None."""
    given = _sources_given(sraw)
    if len(given) > 1:
        raise InputError(src, f"give either {given[0].key!r} or {given[1].key!r}, not both", field=where + given[1].key)
    if not given:
        return None
    kind = given[0]
    path = _path(sraw[kind.key], base, src, where + kind.key, must_exist=True)
    return kind, path, kind.resolve(path, bool(sraw.get("image")), pitch_um)


def _pixel_size(
    sraw: dict, global_px: float | None, vis: VisiumSection | None, image: Path, image_from_source: bool, src: Path, where: str,
) -> tuple[float, str]:
    """(um per px of the section's image, where it came from); see :func:`parse_manifest`."""
    if sraw.get("pixel_size_um") is not None:
        return _positive_float(sraw["pixel_size_um"], src, where + "pixel_size_um"), "manifest"
    if global_px is not None and not image_from_source:
        return global_px, "manifest"
    if vis is not None:
        if global_px is not None:
            log.info("%s: global pixel_size_um describes full-resolution scans; the %s image uses %s", where.rstrip("."), image.name, vis.pixel_size_source)
        return vis.pixel_size_um, vis.pixel_size_source
    found = file_pixel_size_um(image) if image.exists() else None
    if found is None:
        raise InputError(
            src, "no pixel size: give pixel_size_um globally or per section (the image file does not record one)", field=where + "pixel_size_um",
        )
    return _positive_float(found[0], image, "pixel size in the image metadata"), f"image metadata ({found[1]})"


def parse_manifest(raw: Any, src: Path, check_files: bool = True) -> Manifest:
    """Validate a manifest mapping; ``src`` is the YAML file (paths are relative to it).

    Pixel size of a section, first found: its own ``pixel_size_um``; the global one (not
    for a section showing a Space Ranger/AnnData image, whose frame is not the scan's);
    the Visium lattice; the image file's metadata. ``spot_diameter_um``/``spot_pitch_um``
    default to the sources' lattice (Visium's 55/100) when every section is a source.
    """
    src = Path(src)
    base = src.resolve().parent
    if not isinstance(raw, dict):
        raise InputError(src, "manifest must be a YAML mapping with sample_id and sections")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise InputError(src, f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}", field=unknown[0])
    sample_id = str(_require(raw, "sample_id", src))
    if not SAMPLE_ID_RE.match(sample_id):
        raise InputError(
            src, f"{sample_id!r} must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)",
            field="sample_id",
        )
    sections_raw = raw.get("sections")
    # Every section a source of one lattice (Visium's): its spot diameter and pitch are the defaults.
    lattices = {_source_lattice(s) for s in sections_raw} if isinstance(sections_raw, list) and sections_raw else {None}
    lattice = lattices.pop() if len(lattices) == 1 else None
    defaults = dict(zip(("spot_diameter_um", "spot_pitch_um"), lattice)) if lattice else {}
    diameter, pitch = (
        _positive_float(raw[k] if raw.get(k) is not None else _require(defaults, k, src), src, k)
        for k in ("spot_diameter_um", "spot_pitch_um")
    )
    global_px = raw.get("pixel_size_um")
    if global_px is not None:
        global_px = _positive_float(global_px, src, "pixel_size_um")
    sections_raw = _require(raw, "sections", src)
    if not isinstance(sections_raw, list):
        raise InputError(src, "must be a list of sections in stack order", field="sections")
    if len(sections_raw) < 2:
        raise InputError(
            src, f"a stack needs at least 2 sections (one or more measured, one to impute); got {len(sections_raw)}",
            field="sections",
        )
    sections: list[SectionSpec] = []
    seen: set[str] = set()
    for i, sraw in enumerate(sections_raw):
        where = f"sections[{i}]."
        if not isinstance(sraw, dict):
            raise InputError(src, "each section must be a mapping", field=f"sections[{i}]")
        unknown = sorted(set(sraw) - _SECTION_KEYS)
        if unknown:
            raise InputError(src, f"unknown key(s) {unknown}; allowed: {sorted(_SECTION_KEYS)}", field=where + unknown[0])
        name = str(_require(sraw, "name", src, where))
        if not SECTION_NAME_RE.match(name):
            raise InputError(src, f"section name {name!r} must be letters, digits, '_', '.', '-'", field=where + "name")
        if name in seen:
            raise InputError(src, f"duplicate section name {name!r}", field=where + "name")
        seen.add(name)
        try:
            z = float(_require(sraw, "z_um", src, where))
        except (TypeError, ValueError):
            raise InputError(src, f"must be a number, got {sraw.get('z_um')!r}", field=where + "z_um") from None
        measured = sraw.get("measured", False)
        if not isinstance(measured, bool):
            raise InputError(src, f"must be true or false, got {measured!r}", field=where + "measured")
        source = _section_source(sraw, base, src, where, pitch)
        vis = source[2] if source else None
        derived: set[str] = set()
        if sraw.get("image"):
            image = _path(sraw["image"], base, src, where + "image", check_files)
        elif vis is not None and vis.image is not None:
            image = vis.image
            derived.add("image")
        else:
            raise InputError(
                src, f"is required but missing (or give {_SOURCE_FORMS})", field=where + "image",
            )
        spot_scale = vis.spot_scale if vis is not None and "image" in derived else 1.0
        px, px_source = _pixel_size(sraw, global_px, vis, image, "image" in derived, src, where)
        if px_source != "manifest":
            derived.add("pixel_size_um")
        log.info("section %s: pixel size %.4g um/px from %s", name, px, px_source)
        spots = _path(sraw["spots"], base, src, where + "spots", check_files) if sraw.get("spots") else None
        counts = _path(sraw["counts"], base, src, where + "counts", check_files) if sraw.get("counts") else None
        truth_raw = sraw.get("truth")
        if truth_raw is True:
            if vis is None:
                raise InputError(src, "'truth: true' takes the counts of the section's visium/anndata source; give a counts path instead", field=where + "truth")
            if vis.counts is None:
                raise InputError(source[1], f"section {name}: 'truth: true' but the folder has no {source[0].counts_file}", field=where + "truth")
            truth = vis.counts
            derived.add("truth")
        elif not truth_raw:
            truth = None
        else:
            truth = _path(truth_raw, base, src, where + "truth", check_files)
        if vis is not None:
            if spots is None:
                spots = vis.spots
                derived.add("spots")
            if measured and counts is None:
                if vis.counts is None:
                    raise InputError(source[1] / (source[0].counts_file or ""), f"section {name}: file not found; the measured section needs its counts")
                counts = vis.counts
                derived.add("counts")
        if measured and counts is None:
            raise InputError(src, f"measured section {name} needs its counts", field=where + "counts")
        if measured and truth is not None:
            raise InputError(src, "a measured section's counts are its truth; remove 'truth'", field=where + "truth")
        sections.append(
            SectionSpec(
                name=name, z_um=z, image=image, pixel_size_um=px, measured=measured, spots=spots, counts=counts, truth=truth,
                spot_scale=spot_scale, pixel_size_source=px_source, derived=frozenset(derived),
                **({source[0].key: source[1]} if source else {}),
            )
        )
    if not any(s.measured for s in sections):
        raise InputError(src, "no section has measured: true; at least one section must give its counts", field="sections[].measured")
    if all(s.measured for s in sections):
        raise InputError(src, "every section is measured: nothing is left to impute; mark at least one section unmeasured", field="sections[].measured")
    for i, s in enumerate(sections):
        if not s.measured and s.counts is not None:
            raise InputError(
                src, "only a section with measured: true may give counts; use 'truth' for held-out counts used by evaluation",
                field=f"sections[{i}].counts",
            )
    zs = [s.z_um for s in sections]
    if len(set(zs)) != len(zs):
        raise InputError(src, f"z_um values must be distinct, got {zs}", field="sections[].z_um")
    return Manifest(
        sample_id=sample_id,
        path=src.resolve(),
        spot_diameter_um=diameter,
        spot_pitch_um=pitch,
        sections=tuple(sections),
        description=str(raw.get("description", "")),
        checks=_parse_checks(raw.get("checks"), src),
    )


def load_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest file; errors name the file and the field.

    Parsing is bounded: only a regular file of at most ``MAX_MANIFEST_BYTES``, no YAML
    anchors/aliases or duplicate keys, and ids and names stay strings as written.
    """
    path = Path(path).expanduser()
    st = require_regular_file(path, "manifest file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise InputError(path, f"manifest is {st.st_size} bytes; a manifest must be at most {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = strict_yaml.load(path.read_bytes()[: MAX_MANIFEST_BYTES + 1].decode("utf-8"), _STRING_KEYS)
    except yaml.MarkedYAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" if exc.problem_mark else ""
        what = "; ".join(x for x in (exc.context, exc.problem) if x)
        raise InputError(path, f"not valid YAML: {what}{where}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    return parse_manifest(raw, path, check_files=check_files)


def to_dict(manifest: Manifest, relative_to: Path | None = None) -> dict[str, Any]:
    """Plain mapping for YAML; paths relative to ``relative_to`` when given, else absolute."""

    def p(x: Path | None) -> str | None:
        if x is None:
            return None
        if relative_to is not None:
            try:
                return str(Path(x).relative_to(Path(relative_to).resolve()))
            except ValueError:
                import os

                return os.path.relpath(x, Path(relative_to).resolve())
        return str(x)

    out: dict[str, Any] = {
        "sample_id": manifest.sample_id,
        "spot_diameter_um": manifest.spot_diameter_um,
        "spot_pitch_um": manifest.spot_pitch_um,
        "sections": [],
    }
    if manifest.description:
        out["description"] = manifest.description
    if manifest.checks != Checks():
        out["checks"] = dataclasses.asdict(manifest.checks)
    for s in manifest.sections:
        # Keys filled from a visium/anndata source or the image file are left out: loading
        # the manifest again derives them the same way.
        d: dict[str, Any] = {"name": s.name, "z_um": s.z_um}
        for kind in SECTION_SOURCES:
            if getattr(s, kind.key) is not None:
                d[kind.key] = p(getattr(s, kind.key))
        if "image" not in s.derived:
            d["image"] = p(s.image)
        if "pixel_size_um" not in s.derived:
            d["pixel_size_um"] = s.pixel_size_um
        if s.measured:
            d["measured"] = True
        for key in ("spots", "counts", "truth"):
            val = getattr(s, key)
            if val is not None and key not in s.derived:
                d[key] = p(val)
        if s.truth is not None and "truth" in s.derived:
            d["truth"] = True
        out["sections"].append(d)
    return out


def write_manifest(manifest: Manifest, path: str | Path, relative: bool = True) -> Path:
    """Write a manifest YAML; relative paths keep a data folder movable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(manifest, relative_to=path.parent if relative else None)
    # A unique temporary: two processes registering the same sample must not share one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
