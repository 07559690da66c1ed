"""Readers for counts and spot tables into one internal representation.

Counts become a :class:`CountMatrix` (sparse spots x genes with ids and gene names);
spot tables become a polars frame ``spot_id, x_px, y_px`` in the section's own
full-resolution pixels, which :func:`read_section_spots` maps onto the section's image
(``SectionSpec.spot_scale``, e.g. Space Ranger's lowres PNG). Supported on-disk formats:

- HER2ST / legacy ST: ``ST-cnts/<S>.tsv.gz`` (rows ``XxY``) and ``ST-spotfiles/<S>_selection.tsv``;
- 10x Visium Space Ranger: ``filtered_feature_bc_matrix.h5`` and ``spatial/tissue_positions.csv``,
  ``tissue_positions_list.csv`` (no header) or ``tissue_positions.parquet``;
- AnnData ``.h5ad`` with ``obsm['spatial']`` (full-resolution pixels; ``obs['in_tissue'] == 1`` when present);
- generic tables (``.tsv``, ``.csv``, ``.parquet``) with ``spot_id, x_px, y_px`` columns,
  and dense count tables (first column spot id, one column per gene).
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp

from asign_assets.errors import InputError
from asign_assets.readers.paths import require_regular_file
from asign_assets.ingest.plausibility import check_count_values

if TYPE_CHECKING:
    from asign_assets.ingest.manifest import SectionSpec

log = logging.getLogger(__name__)

SPOT_COLUMNS = ("spot_id", "x_px", "y_px")


@dataclass(frozen=True)
class CountMatrix:
    """Raw counts of one section: ``X[i, j]`` is the count of gene ``genes[j]`` at ``spot_ids[i]``."""

    spot_ids: np.ndarray
    genes: np.ndarray
    X: sp.csr_matrix
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape

    def subset_spots(self, ids: np.ndarray) -> "CountMatrix":
        """The rows of ``ids``, in that order (a polars join of the ids on this matrix's spot ids)."""
        want = pl.DataFrame({"spot_id": np.asarray(ids).astype(str)})
        have = pl.DataFrame({"spot_id": self.spot_ids.astype(str), "row": np.arange(len(self.spot_ids), dtype=np.int64)})
        rows = want.join(have, on="spot_id", how="left", maintain_order="left")["row"]
        if rows.null_count():
            missing = want.filter(rows.is_null())["spot_id"].head(5).to_list()
            raise KeyError(f"{self.source}: spot ids not in the count table: {missing}")
        return CountMatrix(np.asarray(ids, dtype=object), self.genes, self.X[rows.to_numpy()], self.source)


@dataclass(frozen=True)
class JoinReport:
    """What joining spots and counts dropped, so the user can see it."""

    n_spots: int
    n_counts: int
    n_joined: int
    spots_without_counts: list[str]
    counts_without_spots: list[str]

    def summary(self) -> str:
        return (
            f"{self.n_joined} spots joined; {len(self.spots_without_counts)} spot(s) without counts dropped"
            f"{' ' + str(self.spots_without_counts[:5]) if self.spots_without_counts else ''}; "
            f"{len(self.counts_without_spots)} count row(s) without a spot dropped"
            f"{' ' + str(self.counts_without_spots[:5]) if self.counts_without_spots else ''}"
        )


def _validate_counts(X: sp.csr_matrix, spot_ids: np.ndarray, genes: np.ndarray, src: Path, normalised: bool = False) -> None:
    if X.shape[0] == 0:
        raise InputError(src, "count table has no spots")
    if X.shape[1] == 0:
        raise InputError(src, "count table has no genes")
    check_count_values(X, spot_ids, genes, src, normalised=normalised)
    for what, ids in (("spot ids", spot_ids), ("gene names", genes)):
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        if (counts > 1).any():
            raise InputError(src, f"duplicate {what}: {[str(x) for x in uniq[counts > 1][:5]]}")


def _clean_name(name: str) -> str:
    """A header cell as the gene it names: surrounding whitespace and quotes removed."""
    return name.strip().strip("\"'").strip()


def _read_text_bytes(path: Path) -> bytes:
    require_regular_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file: {exc}") from None
    if not raw:
        raise InputError(path, "file is empty")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"corrupt or truncated gzip file ({exc})") from None
    return raw


def _read_dense_table(path: Path, normalised: bool = False) -> CountMatrix:
    raw = _read_text_bytes(path)
    sep = "\t" if (".tsv" in path.name or ".txt" in path.name or b"\t" in raw[:4096]) else ","
    header = [_clean_name(h) for h in raw.split(b"\n", 1)[0].decode(errors="replace").rstrip("\r").split(sep)[1:]]
    uniq, n = np.unique(np.array(header, dtype=object).astype(str), return_counts=True)
    if (n > 1).any():
        raise InputError(path, f"duplicate gene names (after trimming spaces and quotes): {[str(x) for x in uniq[n > 1][:5]]}")
    try:
        df = pl.read_csv(io.BytesIO(raw), separator=sep, infer_schema_length=0)
    except Exception as exc:  # polars raises several error types for bad tables
        raise InputError(path, f"cannot parse count table: {exc}") from None
    if df.width < 2:
        raise InputError(path, "count table needs a spot id column and at least one gene column")
    id_col = df.columns[0]
    genes = np.array([_clean_name(c) for c in df.columns[1:]], dtype=object)
    spot_ids = df[id_col].cast(pl.Utf8).to_numpy().astype(object)
    try:
        values = df.select(pl.all().exclude(id_col).cast(pl.Float64, strict=True)).to_numpy()
    except Exception:
        raise InputError(path, "count table has non-numeric values") from None
    X = sp.csr_matrix(values.astype(np.float32))
    _validate_counts(X, spot_ids, genes, path, normalised)
    return CountMatrix(spot_ids, genes, X, str(path))


def _read_10x_h5(path: Path, normalised: bool = False) -> CountMatrix:
    """A 10x feature-barcode matrix through scanpy's reader: gene-expression features only,
    repeated gene symbols made unique (``G``, ``G-1``) as scanpy's ``var_names_make_unique``."""
    import warnings

    import scanpy as sc

    try:
        # scanpy's read_10x_h5 (1.11) names genes by symbol, which repeat, and has no option to
        # name them by id (read_10x_mtx has var_names=): anndata warns inside it; made unique below.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_h5(path, gex_only=True)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise InputError(path, f"cannot read 10x HDF5 matrix: {exc or type(exc).__name__}") from None
    adata.var_names_make_unique()
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    barcodes = np.asarray(adata.obs_names, dtype=object)
    names = np.asarray(adata.var_names, dtype=object)
    _validate_counts(X, barcodes, names, path, normalised)
    return CountMatrix(barcodes, names, X, str(path))


def _read_h5ad(path: Path):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot read AnnData file: {exc}") from None


def read_counts(path: str | Path, normalised: bool = False) -> CountMatrix:
    """Read a count matrix, choosing the format from the file name.

    ``normalised`` accepts non-integer values (a table declared normalised in the manifest).
    """
    path = Path(path)
    require_regular_file(path, "counts file")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        adata = _read_h5ad(path)
        X = adata.layers["counts"] if "counts" in adata.layers else adata.X
        X = sp.csr_matrix(X, dtype=np.float32)
        spot_ids = np.asarray(adata.obs_names, dtype=object)
        genes = np.asarray(adata.var_names, dtype=object)
        _validate_counts(X, spot_ids, genes, path, normalised)
        return CountMatrix(spot_ids, genes, X, str(path))
    if name.endswith(".h5"):
        return _read_10x_h5(path, normalised)
    if any(name.endswith(ext) for ext in (".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt", ".txt.gz")):
        return _read_dense_table(path, normalised)
    raise InputError(path, "unknown counts format; use .tsv(.gz), .csv(.gz), 10x .h5 or .h5ad")


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
    raw = _read_text_bytes(path)
    sep = "\t" if (".tsv" in name or b"\t" in raw[:4096]) else ","
    try:
        # Ids stay text: "001" must not become 1 (counts keep ids as text, so they would not join).
        names = raw.split(b"\n", 1)[0].decode(errors="replace").rstrip("\r").split(sep) if header else []
        ids = {c: pl.Utf8 for c in ("spot_id", "barcode") if c in names}
        return pl.read_csv(io.BytesIO(raw), separator=sep, has_header=header, infer_schema_length=10000, schema_overrides=ids or None)
    except Exception as exc:
        raise InputError(path, f"cannot parse table: {exc}") from None


VISIUM_COLS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")


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


def _read_spots_own_frame(path: Path) -> pl.DataFrame:
    name = path.name.lower()
    if name.endswith(".h5ad"):
        adata = _read_h5ad(path)
        if "spatial" not in adata.obsm:
            raise InputError(path, "AnnData has no obsm['spatial'] spot coordinates")
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        keep = np.ones(adata.n_obs, dtype=bool)
        if "in_tissue" in adata.obs:  # scanpy.read_visium keeps Space Ranger's flag
            keep = np.asarray(adata.obs["in_tissue"]).astype(int) == 1
            if not keep.any():
                raise InputError(path, "AnnData has no in-tissue spots (obs['in_tissue'] == 1)")
        return _spots_frame(np.asarray(adata.obs_names)[keep], xy[keep, 0], xy[keep, 1], path)
    if name == "tissue_positions_list.csv":
        df = read_visium_positions(path)
    else:
        df = _read_table(path)
    cols = set(df.columns)
    if {"pixel_x", "pixel_y", "x", "y"} <= cols:  # HER2ST / legacy ST selection file
        if "selected" in cols:
            df = df.filter(pl.col("selected") == 1)
        ids = [f"{int(round(a))}x{int(round(b))}" for a, b in zip(df["x"].to_list(), df["y"].to_list())]
        return _spots_frame(ids, df["pixel_x"].to_numpy(), df["pixel_y"].to_numpy(), path)
    if set(VISIUM_COLS) <= cols:  # Space Ranger tissue_positions(.csv|.parquet)
        df = df.filter(pl.col("in_tissue") == 1)
        if df.height == 0:
            raise InputError(path, "no in-tissue spots (in_tissue == 1) in the Visium tissue positions")
        return _spots_frame(df["barcode"].to_numpy(), df["pxl_col_in_fullres"].to_numpy(), df["pxl_row_in_fullres"].to_numpy(), path)
    if set(SPOT_COLUMNS) <= cols:
        return _spots_frame(df["spot_id"].to_numpy(), df["x_px"].to_numpy(), df["y_px"].to_numpy(), path)
    raise InputError(
        path,
        f"spot table is missing columns: need spot_id, x_px, y_px (or a HER2ST selection / Visium "
        f"tissue_positions layout); found {sorted(cols)}",
    )


def read_spots(path: str | Path, scale: float = 1.0) -> pl.DataFrame:
    """Read a spot table into ``spot_id, x_px, y_px``.

    Tables hold full-resolution pixels; ``scale`` (image px per table px, e.g. Space
    Ranger's ``tissue_lowres_scalef``) maps them into the frame of a downscaled image.
    """
    path = Path(path)
    require_regular_file(path, "spot table")
    if not (scale > 0 and np.isfinite(scale)):
        raise InputError(path, f"spot scale must be a positive finite number, got {scale!r}")
    spots = _read_spots_own_frame(path)
    if scale == 1.0:
        return spots
    return spots.with_columns(pl.col("x_px") * scale, pl.col("y_px") * scale)


def read_section_spots(spec: SectionSpec) -> pl.DataFrame | None:
    """A section's spots in its image's pixel frame, or None when it has no spot table.

    The one way the pipeline reads a section's spots: the table is ``spots``, else an
    ``.h5ad`` given as ``counts``; the section's ``spot_scale`` is applied here.
    """
    source = spec.spots
    if source is None and spec.counts is not None and spec.counts.name.lower().endswith(".h5ad"):
        source = spec.counts
    return None if source is None else read_spots(source, scale=spec.spot_scale)


def join_spots_counts(
    spots: pl.DataFrame,
    counts: CountMatrix,
    source: str | Path,
    warn_below: float = 0.9,
    fail_below: float = 0.5,
) -> tuple[pl.DataFrame, CountMatrix, JoinReport]:
    """Keep spots present in both tables, in spot-table order, and say what was dropped.

    Fails when fewer than ``fail_below`` of the spots have counts (usually the wrong
    file); warns below ``warn_below``.
    """
    count_ids = counts.spot_ids.astype(str)
    spot_ids = np.asarray(spots["spot_id"].to_list(), dtype=str)
    keep = np.isin(spot_ids, count_ids)
    report = JoinReport(
        n_spots=len(spot_ids),
        n_counts=len(count_ids),
        n_joined=int(keep.sum()),
        spots_without_counts=spot_ids[~keep].tolist(),
        counts_without_spots=sorted(count_ids[~np.isin(count_ids, spot_ids)].tolist()),
    )
    frac = report.n_joined / max(report.n_spots, 1)
    if frac < fail_below:
        transposed = int(np.isin(spot_ids, counts.genes.astype(str)).sum()) > report.n_joined
        raise InputError(
            source,
            f"only {report.n_joined} of {report.n_spots} spots ({frac:.0%}) have counts; "
            f"spot ids and count rows do not match (e.g. spots {spot_ids[:3].tolist()}, counts {[str(c) for c in counts.spot_ids[:3]]})"
            + ("; the count table looks transposed (spots as columns): rows must be spots, columns genes" if transposed else ""),
        )
    if frac < warn_below:
        log.warning("%s: only %.0f%% of spots have counts: %s", source, 100 * frac, report.summary())
    joined = spots.filter(pl.Series(keep))
    return joined, counts.subset_spots(np.asarray(joined["spot_id"].to_list(), dtype=object)), report
