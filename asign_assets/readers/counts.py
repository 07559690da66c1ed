"""Count matrices: every counts format read into one :class:`CountMatrix`.

The format is chosen from the file name by :data:`COUNTS_FORMATS`; adding a format is
one entry there. Supported:

- dense tables ``.tsv``/``.csv``/``.txt`` (optionally gzipped): first column the spot id,
  one column per gene (HER2ST / legacy ST ``ST-cnts/<S>.tsv.gz`` has rows ``XxY``);
- 10x feature-barcode matrices ``.h5`` (Space Ranger's ``filtered_feature_bc_matrix.h5``);
- AnnData ``.h5ad`` (``layers['counts']`` when present, else ``X``).

Values are checked where they are read (:func:`check_count_values`), so every reader
refuses NaN, negative and (unless declared normalised) non-integer counts alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import scipy.sparse as sp

from asign_assets.errors import InputError
from asign_assets.readers.paths import read_text_bytes, require_regular_file


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


def check_count_values(X: sp.csr_matrix, spot_ids: np.ndarray, genes: np.ndarray, src: Path, normalised: bool = False) -> None:
    """Counts must be finite, non-negative and (unless ``normalised``) integer-like.

    The first offending entry is named by spot id and gene, with its 1-based data row
    and gene column, so the user can find it in the file.
    """
    X = sp.csr_matrix(X)
    data = X.data
    tests = [
        (~np.isfinite(data), "NaN, empty or infinite values"),
        (data < 0, "negative values"),
    ]
    if not normalised:
        tests.append((np.mod(np.where(np.isfinite(data), data, 0), 1) != 0, "non-integer values"))
    for bad, what in tests:
        hits = np.flatnonzero(bad)
        if hits.size == 0:
            continue
        k = int(hits[0])
        row = int(np.searchsorted(X.indptr, k, side="right") - 1)
        col = int(X.indices[k])
        hint = (
            "; asign needs raw UMI/read counts, not normalised data (set checks.counts_normalised: true if the table "
            "is deliberately normalised)" if what == "non-integer values" else ""
        )
        raise InputError(
            src, f"counts contain {what}: {hits.size} entr{'y' if hits.size == 1 else 'ies'}, first {float(data[k])!r} at spot "
            f"{str(spot_ids[row])!r} (data row {row + 1}), gene {str(genes[col])!r} (gene column {col + 1}){hint}",
            field=f"row {row + 1}, column {str(genes[col])!r}",
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


def _read_dense_table(path: Path, normalised: bool = False) -> CountMatrix:
    raw = read_text_bytes(path)
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


def read_h5ad(path: Path):
    """An AnnData file, fully loaded; any failure is the user's file, so an InputError."""
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"cannot read AnnData file: {exc}") from None


def _read_h5ad_counts(path: Path, normalised: bool = False) -> CountMatrix:
    adata = read_h5ad(path)
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    X = sp.csr_matrix(X, dtype=np.float32)
    spot_ids = np.asarray(adata.obs_names, dtype=object)
    genes = np.asarray(adata.var_names, dtype=object)
    _validate_counts(X, spot_ids, genes, path, normalised)
    return CountMatrix(spot_ids, genes, X, str(path))


class CountsFormat(NamedTuple):
    """One counts format: which files it reads (lower-cased file name), how, and its name in messages."""

    accepts: Callable[[str], bool]
    read: Callable[[Path, bool], CountMatrix]
    description: str


_DENSE_SUFFIXES = (".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt", ".txt.gz")

#: The counts formats, tried in order; the first whose ``accepts`` matches reads the file.
COUNTS_FORMATS: tuple[CountsFormat, ...] = (
    CountsFormat(lambda name: name.endswith(_DENSE_SUFFIXES), _read_dense_table, ".tsv(.gz), .csv(.gz)"),
    CountsFormat(lambda name: name.endswith(".h5"), _read_10x_h5, "10x .h5"),
    CountsFormat(lambda name: name.endswith(".h5ad"), _read_h5ad_counts, ".h5ad"),
)


def read_counts(path: str | Path, normalised: bool = False) -> CountMatrix:
    """Read a count matrix, choosing the format from the file name (:data:`COUNTS_FORMATS`).

    ``normalised`` accepts non-integer values (a table declared normalised in the manifest).
    """
    path = Path(path)
    require_regular_file(path, "counts file")
    name = path.name.lower()
    for fmt in COUNTS_FORMATS:
        if fmt.accepts(name):
            return fmt.read(path, normalised)
    *rest, last = (fmt.description for fmt in COUNTS_FORMATS)
    raise InputError(path, f"unknown counts format; use {', '.join(rest)} or {last}")
