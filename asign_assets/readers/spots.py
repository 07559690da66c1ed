"""Spot tables: every spot format read into a polars frame ``spot_id, x_px, y_px``.

Coordinates are the section's own full-resolution pixels; :func:`read_spots` scales them
into the frame of a downscaled image (e.g. Space Ranger's lowres PNG). The format is
chosen from the file name by :data:`SPOT_FORMATS`, and a table's meaning from its columns
by :data:`TABLE_LAYOUTS`; adding a format is one entry in one of them. Supported:

- AnnData ``.h5ad`` with ``obsm['spatial']`` (``obs['in_tissue'] == 1`` when present);
- Space Ranger ``tissue_positions_list.csv`` (1.x, no header), ``tissue_positions.csv``
  (2.x) and ``tissue_positions.parquet``: in-tissue spots only;
- HER2ST / legacy ST ``ST-spotfiles/<S>_selection.tsv`` (selected spots, ids ``XxY``);
- generic tables (``.tsv``, ``.csv``, ``.parquet``) with ``spot_id, x_px, y_px`` columns.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from asign_assets.errors import InputError
from asign_assets.readers.counts import read_h5ad
from asign_assets.readers.paths import read_text_bytes, require_regular_file

SPOT_COLUMNS = ("spot_id", "x_px", "y_px")
VISIUM_COLS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")


def _spots_frame(ids, x, y, path: Path) -> pl.DataFrame:
    df = pl.DataFrame({"spot_id": np.asarray(ids).astype(str), "x_px": np.asarray(x, dtype=np.float64), "y_px": np.asarray(y, dtype=np.float64)})
    if df.height == 0:
        raise InputError(path, "spot table has no spots")
    bad = df.filter(pl.col("x_px").is_nan() | pl.col("y_px").is_nan())["spot_id"].to_list()
    if bad:
        raise InputError(path, f"spot coordinates are missing or NaN for {len(bad)} spot(s) {bad[:5]} (a truncated file?)")
    dup = df.filter(pl.col("spot_id").is_duplicated())["spot_id"].unique().to_list()
    if dup:
        raise InputError(path, f"duplicate spot ids: {sorted(dup)[:5]}")
    return df


def _read_table(path: Path, header: bool = True) -> pl.DataFrame:
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            return pl.read_parquet(path)
        except Exception as exc:
            raise InputError(path, f"cannot read parquet table: {exc}") from None
    raw = read_text_bytes(path)
    sep = "\t" if (".tsv" in name or b"\t" in raw[:4096]) else ","
    try:
        # Ids stay text: "001" must not become 1 (counts keep ids as text, so they would not join).
        names = raw.split(b"\n", 1)[0].decode(errors="replace").rstrip("\r").split(sep) if header else []
        ids = {c: pl.Utf8 for c in ("spot_id", "barcode") if c in names}
        return pl.read_csv(io.BytesIO(raw), separator=sep, has_header=header, infer_schema_length=10000, schema_overrides=ids or None)
    except Exception as exc:
        raise InputError(path, f"cannot parse table: {exc}") from None


def read_visium_positions(path: str | Path) -> pl.DataFrame:
    """Every row of a Space Ranger positions file (in and out of tissue), typed.

    ``tissue_positions_list.csv`` (Space Ranger 1.x) has no header; ``tissue_positions.csv``
    (2.x) and ``tissue_positions.parquet`` (newer) have one. Pixel columns are full-resolution.
    """
    path = Path(path)
    require_regular_file(path, "Visium tissue positions file")
    if path.name.lower() == "tissue_positions_list.csv":
        df = _read_table(path, header=False)
        if df.width != len(VISIUM_COLS):
            raise InputError(path, f"Visium tissue_positions_list.csv needs {len(VISIUM_COLS)} columns, found {df.width}")
        df.columns = list(VISIUM_COLS)
    else:
        df = _read_table(path)
    missing = [c for c in VISIUM_COLS if c not in df.columns]
    if missing:
        raise InputError(path, f"not a Visium tissue positions table: missing columns {missing}; found {df.columns}")
    try:
        return df.select(
            pl.col("barcode").cast(pl.Utf8),
            *(pl.col(c).cast(pl.Int64, strict=True) for c in ("in_tissue", "array_row", "array_col")),
            *(pl.col(c).cast(pl.Float64, strict=True) for c in ("pxl_row_in_fullres", "pxl_col_in_fullres")),
        )
    except Exception:
        raise InputError(path, "Visium tissue positions have non-numeric in_tissue, array or pixel values") from None


# ---------------------------------------------------------------- table layouts (by columns)


def _her2st_selection(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    if "selected" in df.columns:
        df = df.filter(pl.col("selected") == 1)
    ids = [f"{int(round(a))}x{int(round(b))}" for a, b in zip(df["x"].to_list(), df["y"].to_list())]
    return _spots_frame(ids, df["pixel_x"].to_numpy(), df["pixel_y"].to_numpy(), path)


def _visium_in_tissue(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    df = df.filter(pl.col("in_tissue") == 1)
    if df.height == 0:
        raise InputError(path, "no in-tissue spots (in_tissue == 1) in the Visium tissue positions")
    return _spots_frame(df["barcode"].to_numpy(), df["pxl_col_in_fullres"].to_numpy(), df["pxl_row_in_fullres"].to_numpy(), path)


def _plain(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    return _spots_frame(df["spot_id"].to_numpy(), df["x_px"].to_numpy(), df["y_px"].to_numpy(), path)


class TableLayout(NamedTuple):
    """What a spot table's columns mean: which column sets it reads, how, and its name in messages."""

    accepts: Callable[[set[str]], bool]
    to_spots: Callable[[pl.DataFrame, Path], pl.DataFrame]
    description: str


#: Column layouts of a spot table, tried in order; the last is the plain one the error names first.
TABLE_LAYOUTS: tuple[TableLayout, ...] = (
    TableLayout(lambda cols: {"pixel_x", "pixel_y", "x", "y"} <= cols, _her2st_selection, "HER2ST selection"),
    TableLayout(lambda cols: set(VISIUM_COLS) <= cols, _visium_in_tissue, "Visium tissue_positions"),
    TableLayout(lambda cols: set(SPOT_COLUMNS) <= cols, _plain, ", ".join(SPOT_COLUMNS)),
)


def _table_spots(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    cols = set(df.columns)
    for layout in TABLE_LAYOUTS:
        if layout.accepts(cols):
            return layout.to_spots(df, path)
    *others, plain = (layout.description for layout in TABLE_LAYOUTS)
    raise InputError(
        path,
        f"spot table is missing columns: need {plain} (or a {' / '.join(others)} "
        f"layout); found {sorted(cols)}",
    )


# ---------------------------------------------------------------- file formats (by name)


def _h5ad_spots(path: Path) -> pl.DataFrame:
    adata = read_h5ad(path)
    if "spatial" not in adata.obsm:
        raise InputError(path, "AnnData has no obsm['spatial'] spot coordinates")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    keep = np.ones(adata.n_obs, dtype=bool)
    if "in_tissue" in adata.obs:  # scanpy.read_visium keeps Space Ranger's flag
        keep = np.asarray(adata.obs["in_tissue"]).astype(int) == 1
        if not keep.any():
            raise InputError(path, "AnnData has no in-tissue spots (obs['in_tissue'] == 1)")
    return _spots_frame(np.asarray(adata.obs_names)[keep], xy[keep, 0], xy[keep, 1], path)


class SpotsFormat(NamedTuple):
    """One spot file format: which files it reads (lower-cased file name) and how.

    ``in_counts``: the file is also a counts file, so a section's counts can give its spots.
    """

    accepts: Callable[[str], bool]
    read: Callable[[Path], pl.DataFrame]
    description: str
    in_counts: bool = False


#: Spot file formats, tried in order; the last reads any other name as a table.
SPOT_FORMATS: tuple[SpotsFormat, ...] = (
    SpotsFormat(lambda name: name.endswith(".h5ad"), _h5ad_spots, "AnnData .h5ad with obsm['spatial']", in_counts=True),
    SpotsFormat(
        lambda name: name == "tissue_positions_list.csv", lambda path: _table_spots(read_visium_positions(path), path),
        "Space Ranger 1.x tissue_positions_list.csv (no header)",
    ),
    SpotsFormat(lambda name: True, lambda path: _table_spots(_read_table(path), path), "a .tsv, .csv or .parquet table"),
)


def _format_of(path: Path) -> SpotsFormat:
    name = path.name.lower()
    return next(fmt for fmt in SPOT_FORMATS if fmt.accepts(name))


def spots_source(spots: Path | None, counts: Path | None) -> Path | None:
    """The file a section's spots come from: its spot table, else its counts file when that
    format also holds the spots (an ``.h5ad``), else None."""
    if spots is not None:
        return spots
    if counts is not None and _format_of(counts).in_counts:
        return counts
    return None


def read_spots(path: str | Path, scale: float = 1.0) -> pl.DataFrame:
    """Read a spot table into ``spot_id, x_px, y_px``.

    Tables hold full-resolution pixels; ``scale`` (image px per table px, e.g. Space
    Ranger's ``tissue_lowres_scalef``) maps them into the frame of a downscaled image.
    """
    path = Path(path)
    require_regular_file(path, "spot table")
    if not (scale > 0 and np.isfinite(scale)):
        raise InputError(path, f"spot scale must be a positive finite number, got {scale!r}")
    spots = _format_of(path).read(path)
    if scale == 1.0:
        return spots
    return spots.with_columns(pl.col("x_px") * scale, pl.col("y_px") * scale)
