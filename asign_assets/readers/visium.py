"""Visium sources: Space Ranger ``outs/`` folders and scanpy/squidpy AnnData, resolved to section files.

A Space Ranger ``outs/`` folder holds what a section needs, usually without the
full-resolution scan: spot positions (full-resolution px), a hires and a lowres PNG with
their scale factors, and the counts. This module picks the files, maps the spots into the
chosen image's frame (``spot_scale``) and measures the pixel size from the spot lattice, so
a manifest needs no hand-computed numbers. An AnnData written by ``scanpy.read_visium`` /
squidpy (``obsm['spatial']`` in full-resolution px, images and scale factors in
``uns['spatial'][library_id]``) is resolved the same way; its image is written once to a
PNG cache. The manifest keys that name these sources are in :mod:`asign_assets.readers.sources`.

``spot_diameter_fullres`` is never used for the pixel size: Space Ranger pads it (96 px on
the DLPFC sections, where the 55 um spot is 76 px), so it is about 25% off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asign_assets.errors import InputError
from asign_assets.readers.spots import read_visium_positions
from asign_assets.runtime.home import default_local_state

log = logging.getLogger(__name__)

VISIUM_PITCH_UM = 100.0
VISIUM_DIAMETER_UM = 55.0
COUNTS_FILE = "filtered_feature_bc_matrix.h5"
SCALEFACTORS_FILE = "scalefactors_json.json"
#: Space Ranger positions files, most preferred first (newest format first).
POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
#: (AnnData image key, Space Ranger file, scale factor key), most preferred first.
IMAGES = (
    ("hires", "tissue_hires_image.png", "tissue_hires_scalef"),
    ("lowres", "tissue_lowres_image.png", "tissue_lowres_scalef"),
)


@dataclass(frozen=True)
class VisiumSection:
    """What one Visium source gives a section (absolute paths).

    ``image`` is None when the manifest gives its own (full-resolution) image; then
    ``spot_scale`` is 1 and ``pixel_size_um`` is that of the full-resolution frame.
    """

    spots: Path
    counts: Path | None
    image: Path | None
    spot_scale: float
    pixel_size_um: float
    pixel_size_source: str


def lattice_um_per_px(array_row: np.ndarray, array_col: np.ndarray, xy_px: np.ndarray, pitch_um: float, source: str | Path) -> float:
    """Microns per pixel from a least-squares fit of pixel against Visium array coordinates.

    Visium's array is hexagonal: neighbours in one row are 2 apart in ``array_col`` and
    ``pitch_um`` apart; rows are ``pitch_um * sqrt(3) / 2`` apart. An affine map from those
    micron positions to pixels is fitted, spots more than 5 median residuals off are dropped
    and the fit is repeated; the pixel size is ``1 / sqrt(|det|)`` of its linear part.
    """
    u = np.asarray(array_col, dtype=np.float64) * pitch_um / 2.0
    v = np.asarray(array_row, dtype=np.float64) * pitch_um * math.sqrt(3.0) / 2.0
    xy = np.asarray(xy_px, dtype=np.float64)
    ok = np.isfinite(u) & np.isfinite(v) & np.isfinite(xy).all(1)
    A = np.stack([u, v, np.ones_like(u)], 1)[ok]
    xy = xy[ok]
    if len(A) < 3 or np.linalg.matrix_rank(A) < 3:
        raise InputError(source, f"cannot measure the pixel size: need at least 3 spots off one line, got {len(A)}")
    keep = np.ones(len(A), dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(A[keep], xy[keep], rcond=None)
        res = np.linalg.norm(A @ coef - xy, axis=1)
        keep = res <= 5.0 * np.median(res) + 1e-9 * (1.0 + np.abs(xy).max())
        if keep.sum() < 3 or np.linalg.matrix_rank(A[keep]) < 3:
            raise InputError(source, "cannot measure the pixel size: array and pixel coordinates do not fit a lattice")
    coef, *_ = np.linalg.lstsq(A[keep], xy[keep], rcond=None)
    linear = coef[:2].T  # px per um
    sv = np.linalg.svd(linear, compute_uv=False)
    px_per_um = math.sqrt(abs(float(np.linalg.det(linear))))
    if not px_per_um > 0:
        raise InputError(source, "cannot measure the pixel size: array and pixel coordinates are degenerate")
    if sv[0] > 1.05 * sv[1]:
        log.warning("%s: pixels are not square (axis scales %.4g and %.4g px/um); using their geometric mean", source, sv[0], sv[1])
    dropped = int(len(A) - keep.sum())
    if dropped:
        log.info("%s: %d spot(s) off the lattice ignored in the pixel-size fit", source, dropped)
    return 1.0 / px_per_um


def read_scalefactor(path: Path, key: str) -> float:
    """One positive scale factor from Space Ranger's ``scalefactors_json.json``."""
    if not path.exists():
        raise InputError(path, f"scale factors file not found; {key} is needed to map the spots onto the image")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None
    return _positive_factor(data, key, path)


def _positive_factor(data: Any, key: str, source: str | Path) -> float:
    value = data.get(key) if isinstance(data, dict) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(source, f"scale factor missing or not a number: {value!r}", field=key) from None
    if not (out > 0 and math.isfinite(out)):
        raise InputError(source, f"scale factor must be a positive finite number, got {value!r}", field=key)
    return out


def outs_folder(folder: str | Path) -> Path:
    """The folder holding ``spatial/``: the one given, or its ``outs/`` (a Space Ranger run folder)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise InputError(folder, "Visium folder not found")
    if not (folder / "spatial").is_dir() and (folder / "outs" / "spatial").is_dir():
        folder = folder / "outs"
    if not (folder / "spatial").is_dir():
        raise InputError(folder / "spatial", "folder not found: a Visium folder is Space Ranger's outs/ (with spatial/ inside)")
    return folder




def resolve_visium(folder: str | Path, explicit_image: bool, pitch_um: float = VISIUM_PITCH_UM) -> VisiumSection:
    """Files, spot scaling and pixel size of a Space Ranger folder.

    Positions: ``tissue_positions.parquet`` > ``.csv`` > ``_list.csv``. Image (unless the
    manifest gives one): ``tissue_hires_image.png`` > ``tissue_lowres_image.png``, with the
    matching scale factor. Pixel size: the full-resolution lattice fit over every spot of
    the positions file, divided by the image's scale factor.
    """
    outs = outs_folder(folder)
    spatial = outs / "spatial"
    found = [spatial / n for n in POSITION_FILES if (spatial / n).exists()]
    if not found:
        raise InputError(spatial, f"no tissue positions file (looked for {', '.join(POSITION_FILES)})")
    positions = found[0]
    if len(found) > 1:
        log.info("%s: using %s (preferred over %s)", spatial, positions.name, ", ".join(p.name for p in found[1:]))
    pos = read_visium_positions(positions)
    if not (pos["in_tissue"] == 1).any():
        raise InputError(positions, "no in-tissue spots (in_tissue == 1)")
    fullres_um = lattice_um_per_px(
        pos["array_row"].to_numpy(), pos["array_col"].to_numpy(),
        np.stack([pos["pxl_col_in_fullres"].to_numpy(), pos["pxl_row_in_fullres"].to_numpy()], 1),
        pitch_um, positions,
    )
    counts = outs / COUNTS_FILE
    counts_path = counts if counts.exists() else None
    if explicit_image:
        return VisiumSection(positions, counts_path, None, 1.0, fullres_um, f"visium lattice ({positions.name})")
    for _, file, key in IMAGES:
        if (spatial / file).exists():
            scale = read_scalefactor(spatial / SCALEFACTORS_FILE, key)
            return VisiumSection(
                positions, counts_path, spatial / file, scale, fullres_um / scale,
                f"visium lattice ({positions.name}: {fullres_um:.4g} um/px full resolution / {key} {scale:g})",
            )
    raise InputError(
        spatial, f"no image: neither {IMAGES[0][1]} nor {IMAGES[1][1]}; give the full-resolution scan as the section's 'image'",
    )


def _image_uint8(img: np.ndarray, source: Path) -> np.ndarray:
    """AnnData images are float in [0, 1] (scanpy) or uint8; PNG needs uint8."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(source, f"image in uns['spatial'] is not a finite numeric array (dtype {arr.dtype})")
    top = 1.0 if arr.max() <= 1.0 else 255.0
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _cached_png(h5ad: Path, library: str, key: str, img: np.ndarray) -> Path:
    """The AnnData image as a PNG in asign's cache, keyed on the file's identity and mtime."""
    from PIL import Image

    st = h5ad.stat()
    digest = hashlib.sha256(f"{h5ad}|{st.st_mtime_ns}|{st.st_size}|{library}|{key}".encode()).hexdigest()[:16]
    folder = Path(default_local_state()) / "cache" / "anndata-images"
    out = folder / f"{h5ad.stem}-{digest}-{key}.png"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        Image.fromarray(_image_uint8(img, h5ad)).save(tmp, format="PNG")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _spot_spacing_um_per_px(xy: np.ndarray, pitch_um: float, source: Path) -> float:
    """Microns per pixel when only spot centres are known: their lattice pitch is ``pitch_um``."""
    # The one use of ingest in readers: the lattice pitch estimate is ingest's (no cycle, ingest.lattice needs only errors).
    from asign_assets.ingest.lattice import infer_lattice

    pitch_px = infer_lattice(xy, 1.0, source=str(source)).pitch_um  # at 1 um/px the pitch in um is in px
    return pitch_um / pitch_px


def resolve_anndata(path: str | Path, explicit_image: bool, pitch_um: float = VISIUM_PITCH_UM) -> VisiumSection:
    """Spots, counts, image and pixel size of a scanpy/squidpy Visium AnnData.

    Image (unless the manifest gives one): ``uns['spatial'][lib]['images']['hires']`` >
    ``['lowres']``, written once to a PNG under ``$ASIGN_HOME/cache/anndata-images``.
    Pixel size: the lattice fit when ``obs`` has ``array_row``/``array_col``; else the
    median nearest-neighbour spot distance taken as ``pitch_um``.
    """
    import anndata as ad

    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputError(path, "AnnData file not found")
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise InputError(path, f"cannot read AnnData file: {exc}") from None
    try:
        if "spatial" not in adata.obsm:
            raise InputError(path, "AnnData has no obsm['spatial'] spot coordinates (full-resolution px)")
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        obs = adata.obs
        keep = np.asarray(obs["in_tissue"]).astype(int) == 1 if "in_tissue" in obs else np.ones(len(xy), dtype=bool)
        if not keep.any():
            raise InputError(path, "AnnData has no in-tissue spots (obs['in_tissue'] == 1)")
        if {"array_row", "array_col"} <= set(obs.columns):
            fullres_um = lattice_um_per_px(np.asarray(obs["array_row"]), np.asarray(obs["array_col"]), xy, pitch_um, path)
            how = "anndata lattice (obs array_row/array_col)"
        else:
            fullres_um = _spot_spacing_um_per_px(xy[keep], pitch_um, path)
            how = f"anndata spot spacing (median nearest-neighbour distance taken as {pitch_um:g} um)"
        if explicit_image:
            return VisiumSection(path, path, None, 1.0, fullres_um, how)
        libraries = adata.uns.get("spatial", {})
        if not isinstance(libraries, dict) or len(libraries) != 1:
            found = sorted(libraries) if isinstance(libraries, dict) else []
            raise InputError(
                path, f"need exactly one library in uns['spatial'] to take the image from, found {found}; "
                "or give the section's 'image'",
            )
        library, entry = next(iter(libraries.items()))
        images = entry.get("images", {}) if isinstance(entry, dict) else {}
        for key, _, factor in IMAGES:
            if key in images:
                scale = _positive_factor(entry.get("scalefactors"), factor, f"{path}: uns['spatial'][{library!r}]['scalefactors']")
                png = _cached_png(path, str(library), key, images[key])
                return VisiumSection(path, path, png, scale, fullres_um / scale, f"{how} / {factor} {scale:g}")
        raise InputError(path, f"no 'hires' or 'lowres' image in uns['spatial'][{library!r}]['images']; give the section's 'image'")
    finally:
        if adata.isbacked:
            adata.file.close()
