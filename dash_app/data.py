"""Read-only access to the result assets under $ASIGN_HOME for the viewer.

The viewer never recomputes anything: every function here reads a file written by a
pipeline stage (see docs/architecture.md). Reads are cached per (file identity, key);
the identity includes the file's inode and mtime, so an asset that is re-materialised
(atomically renamed into place) is picked up without restarting the viewer.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asign_assets.errors import InputError
from asign_assets.ingest.manifest import SAMPLE_ID_RE
from asign_assets.storage import layout
from asign_assets.ingest.manifest import SECTION_NAME_RE as SECTION_RE  # section names become file names (thumbnails/<section>.png)

# Gene names are looked up in var_names, never used in paths; this only bounds the length.
MAX_GENE_LEN = 200

# asset name shown in the page -> files (relative to the sample folder), any of which marks it present
ASSETS: dict[str, tuple[str, ...]] = {
    "sections": (layout.path("sections", "records"),),
    "registrations": (layout.path("registrations", "spots"), layout.path("registrations", "transforms")),
    "graph_3d": (layout.path("graph_3d", "graph"), layout.path("graph_3d", "edges")),
    "expression": (layout.path("expression", "h5ad"),),
    "model": (layout.path("model", "checkpoint"),),
    "imputed_volume": (layout.path("imputed_volume", "zarr"), layout.path("imputed_volume", "h5ad")),
    "evaluation": (layout.path("evaluation", "table"),),
    "truth": (layout.path("evaluation", "truth"),),
    "overlay": (layout.path("registrations", "overlay"),),
    "expression_volume": (layout.path("expression_volume", "expression"),),
}


# --------------------------------------------------------------------------- paths


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The storage root: the argument, else $ASIGN_HOME, else ~/.asign.

    An fsspec URL (``s3://bucket/prefix``) is mirrored to a local folder (see
    :func:`mirror_remote`) and that folder is returned, so every reader below works on files.
    """
    raw = str(home) if home is not None else (os.environ.get("ASIGN_HOME") or "~/.asign")
    if "://" in raw and not raw.startswith("file://"):
        return mirror_remote(raw)
    raw = raw.removeprefix("file://")
    return Path(raw).expanduser().resolve()


# The assets the viewer reads (tiles and embeddings, the largest, are not among them).
VIEWER_ASSETS = frozenset(f.split("/")[0] for files in ASSETS.values() for f in files)
# local mirror folder -> [remote root URL, monotonic time of the last refresh]
_MIRRORS: dict[str, list] = {}
MIRROR_REFRESH_S = 10.0


def mirror_remote(url: str) -> Path:
    """A local copy of the complete assets the viewer reads from a remote root, refreshed by :func:`list_samples`.

    Only assets whose completion marker changed since the last copy are downloaded, and each
    is moved into place atomically (``Storage.mirror``), so the caches below, keyed on inode
    and mtime, pick up re-materialised assets. The folder is ``$ASIGN_VIEWER_CACHE`` (default
    ``~/.cache/asign/viewer``) / a hash of the URL.
    """
    import hashlib

    base = Path(os.environ.get("ASIGN_VIEWER_CACHE") or "~/.cache/asign/viewer").expanduser()
    local = (base / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]).resolve()
    local.mkdir(parents=True, exist_ok=True)
    _MIRRORS[str(local)] = [url, float("-inf")]
    refresh_mirror(local)
    return local


def refresh_mirror(home: str | os.PathLike, force: bool = False) -> list[str]:
    """Copy new or changed assets of the remote root behind ``home`` (no-op for local roots)."""
    import time

    from asign_assets.storage.store import Storage

    entry = _MIRRORS.get(str(home))
    if entry is None or (not force and time.monotonic() - entry[1] < MIRROR_REFRESH_S):
        return []
    try:
        copied = Storage(entry[0]).mirror(Path(home), names=VIEWER_ASSETS)
    except (OSError, ValueError) as e:
        raise InputError(entry[0], f"cannot read the remote storage root: {e}") from None
    entry[1] = time.monotonic()
    return copied


def sample_dir(home: str | os.PathLike, sample_id: object) -> Path:
    """Validate a sample id coming from the browser and return its existing folder."""
    if not isinstance(sample_id, str) or not SAMPLE_ID_RE.match(sample_id):
        raise InputError(None, f"invalid sample id {str(sample_id)[:80]!r}", field="sample")
    root = (Path(home) / "samples").resolve()
    path = (root / sample_id).resolve()
    if path.parent != root or not path.is_dir():
        raise InputError(path, f"no such sample {sample_id!r} under {root}")
    return path


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns)


# --------------------------------------------------------------------------- sample list


@dataclass(frozen=True)
class SampleAssets:
    sample: str
    present: dict[str, bool] = field(default_factory=dict)
    mixed: str | None = None  # see manifest_mismatch

    @property
    def viewable(self) -> bool:
        return self.present.get("imputed_volume", False) and self.mixed is None


def list_samples(home: str | os.PathLike) -> list[SampleAssets]:
    """Every sample folder with a valid id, with which assets it holds."""
    refresh_mirror(home)
    root = Path(home) / "samples"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or not SAMPLE_ID_RE.match(p.name):
            continue
        present = {name: any((p / f).exists() for f in files) for name, files in ASSETS.items()}
        out.append(SampleAssets(p.name, present, manifest_mismatch(home, p.name)))
    return out


# --------------------------------------------------------------------------- volume


@dataclass(frozen=True, eq=False)
class Volume:
    """Per-spot metadata of imputed_volume (everything except the expression matrix)."""

    sample: str
    path: Path  # imputed_volume.zarr or .h5ad
    kind: str  # "zarr" | "h5ad"
    genes: tuple[str, ...]
    gene_index: dict[str, int]
    sections: tuple[str, ...]  # stack order
    section_code: np.ndarray  # int32 [N], index into sections
    spot_id: np.ndarray  # object [N]
    xyz_um: np.ndarray  # float64 [N, 3]
    xy_px: np.ndarray  # float64 [N, 2], own image pixels
    measured: np.ndarray  # bool [N]
    virtual: np.ndarray  # bool [N]

    @property
    def n_spots(self) -> int:
        return len(self.spot_id)

    def check_gene(self, gene: object) -> int:
        """Column index of a gene name from the browser; unknown names are refused."""
        if not isinstance(gene, str) or len(gene) > MAX_GENE_LEN or gene not in self.gene_index:
            raise InputError(self.path, f"gene {str(gene)[:80]!r} is not in var_names", field="gene")
        return self.gene_index[gene]

    def check_section(self, section: object) -> int:
        if not isinstance(section, str) or section not in self.sections:
            raise InputError(self.path, f"section {str(section)[:80]!r} is not in this volume", field="section")
        return self.sections.index(section)


def manifest_mismatch(home: str | os.PathLike, sample_id: str) -> str | None:
    """Why a sample's outputs must not be drawn together: they were built from different
    manifests (each output records its manifest's digest in ``provenance/``); else None.
    Samples materialised before provenance was recorded have none and pass."""
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import PROVENANCE

    d = sample_dir(home, sample_id)
    records = {p.name[: -len(".manifest")]: p.read_text().strip() for p in sorted((d / PROVENANCE).glob("*.manifest"))}
    if not records:
        return None
    registered = Path(home) / "manifests" / f"{sample_id}.yaml"
    try:
        current = load_manifest(registered, check_files=False).digest() if registered.exists() else None
    except InputError:
        current = "unreadable"
    unrecorded = [
        name for name, files in ASSETS.items()
        if name not in ("truth", "overlay") and any((d / f).exists() for f in files)
        and not any(f"{Path(f).parts[0]}" in records for f in files)
    ]
    stale = {k: v for k, v in records.items() if current is not None and v != current}
    if len(set(records.values())) == 1 and not stale and not unrecorded:
        return None
    parts = [f"{k} from manifest {v}" for k, v in sorted(records.items())]
    parts += [f"{k} with no manifest record" for k in unrecorded]
    return (
        f"sample {sample_id!r} is not shown: its outputs come from different manifests ({'; '.join(parts)}; "
        f"registered manifest {current or 'missing'}). Re-run it with `asign run <manifest> --replace`"
    )


def volume_path(home: str | os.PathLike, sample_id: str) -> tuple[Path, str]:
    """Prefer the zarr store (one gene per chunk); fall back to the h5ad. A sample whose
    outputs come from different manifests is refused with the reason."""
    d = sample_dir(home, sample_id)
    mixed = manifest_mismatch(home, sample_id)
    if mixed is not None:
        raise InputError(d, mixed)
    if (d / layout.path("imputed_volume", "zarr")).exists():
        return d / layout.path("imputed_volume", "zarr"), "zarr"
    if (d / layout.path("imputed_volume", "h5ad")).exists():
        return d / layout.path("imputed_volume", "h5ad"), "h5ad"
    raise InputError(d / layout.path("imputed_volume", "zarr"), "not found: materialise the imputed_volume asset first")


def load_volume(home: str | os.PathLike, sample_id: str) -> Volume:
    path, kind = volume_path(home, sample_id)
    return _load_volume(str(path), kind, _stamp(path), sample_id)


@contextlib.contextmanager
def _open(path: str, kind: str):
    """The AnnData root group; h5py files are closed again, zarr needs no closing."""
    if kind == "zarr":
        import zarr

        yield zarr.open_group(path, mode="r", use_consolidated=False)  # trust the files, not a stale index
        return
    import h5py

    with h5py.File(path, "r") as f:
        yield f


@functools.lru_cache(maxsize=8)
def _load_volume(path: str, kind: str, stamp: tuple[int, int], sample_id: str) -> Volume:
    from anndata.io import read_elem

    p = Path(path)
    try:
        with _open(path, kind) as g:
            obs = read_elem(g["obs"])
            var = read_elem(g["var"])
            spatial_3d = np.asarray(g["obsm"]["spatial_3d"][:], dtype=np.float64)
            spatial = np.asarray(g["obsm"]["spatial"][:], dtype=np.float64) if "spatial" in g["obsm"] else None
            shape = tuple(g["X"].shape) if hasattr(g["X"], "shape") else None
    except KeyError as e:
        raise InputError(p, f"not an imputed_volume AnnData: missing {e}") from None
    except Exception as e:  # corrupt / half-written store
        raise InputError(p, f"cannot read: {type(e).__name__}: {e}") from None
    if shape is None:
        raise InputError(p, "X is stored sparse; the viewer expects a dense X (one gene per chunk)")
    n = len(obs)
    for col in ("section", "spot_id"):
        if col not in obs.columns:
            raise InputError(p, f"obs has no column {col!r}", field=f"obs.{col}")
    if shape[0] != n or spatial_3d.shape != (n, 3):
        raise InputError(p, f"X {shape} / obsm['spatial_3d'] {spatial_3d.shape} do not match {n} obs rows")
    genes = tuple(str(x) for x in var.index)
    if shape[1] != len(genes):
        raise InputError(p, f"X has {shape[1]} columns but var_names has {len(genes)}")

    sec = obs["section"].astype(str).to_numpy()
    order = _stack_order(p.parent, sec)
    section_code = _codes(sec, order)

    def flag(col: str) -> np.ndarray:
        return obs[col].to_numpy(dtype=bool) if col in obs.columns else np.zeros(n, dtype=bool)

    return Volume(
        sample=sample_id,
        path=p,
        kind=kind,
        genes=genes,
        gene_index={gname: j for j, gname in enumerate(genes)},
        sections=tuple(order),
        section_code=section_code,
        spot_id=obs["spot_id"].astype(str).to_numpy(dtype=object),
        xyz_um=spatial_3d,
        xy_px=spatial if spatial is not None else np.full((n, 2), np.nan),
        measured=flag("measured"),
        virtual=flag("virtual"),
    )


def _codes(values: np.ndarray, order: list[str]) -> np.ndarray:
    uniq, inv = np.unique(values, return_inverse=True)
    pos = np.array([order.index(u) for u in uniq], dtype=np.int32)
    return pos[inv]


def _stack_order(sample_folder: Path, sec: np.ndarray) -> list[str]:
    """Sections in stack order: sections.json when present, else order of first appearance."""
    _, first = np.unique(sec, return_index=True)
    seen = [str(sec[i]) for i in sorted(first)]
    try:
        listed = [r["name"] for r in read_sections(sample_folder)]
    except InputError:
        listed = []
    seen_set, listed_set = set(seen), set(listed)
    return [s for s in listed if s in seen_set] + [s for s in seen if s not in listed_set]


def gene_values(home: str | os.PathLike, sample_id: str, gene: object) -> np.ndarray:
    """Imputed values of one gene at every spot (float32 [N]); reads one column only."""
    vol = load_volume(home, sample_id)
    j = vol.check_gene(gene)
    return _gene_column(str(vol.path), vol.kind, _stamp(vol.path), j)


@functools.lru_cache(maxsize=256)
def _gene_column(path: str, kind: str, stamp: tuple[int, int], j: int) -> np.ndarray:
    try:
        with _open(path, kind) as g:
            col = np.asarray(g["X"][:, j], dtype=np.float32)
    except Exception as e:
        raise InputError(path, f"cannot read X[:, {j}]: {type(e).__name__}: {e}") from None
    col.setflags(write=False)
    return col


def value_range(values: np.ndarray) -> tuple[float, float]:
    """Colour limits shared by every section; a flat gene still gets a non-empty range."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1e-6
    return lo, hi


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True, eq=False)
class Truth:
    path: Path
    rows: np.ndarray  # int64 [M], row index into imputed_volume
    gene_index: dict[str, int]


def load_truth(home: str | os.PathLike, sample_id: str) -> Truth | None:
    """evaluation_truth.zarr when present (None when absent)."""
    path = sample_dir(home, sample_id) / layout.path("evaluation", "truth")
    if not path.exists():
        return None
    return _load_truth(str(path), _stamp(path))


@functools.lru_cache(maxsize=8)
def _load_truth(path: str, stamp: tuple[int, int]) -> Truth:
    from anndata.io import read_elem

    try:
        with _open(path, "zarr") as g:
            obs = read_elem(g["obs"])
            var = read_elem(g["var"])
        rows = obs["row"].to_numpy(dtype=np.int64)
    except KeyError as e:
        raise InputError(path, f"not a truth AnnData: missing {e}") from None
    except Exception as e:
        raise InputError(path, f"cannot read: {type(e).__name__}: {e}") from None
    return Truth(Path(path), rows, {str(x): j for j, x in enumerate(var.index)})


def truth_values(home: str | os.PathLike, sample_id: str, gene: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows into the volume, truth values) for one gene; None if no truth for it."""
    truth = load_truth(home, sample_id)
    if truth is None or gene not in truth.gene_index:
        return None
    vals = _truth_column(str(truth.path), _stamp(truth.path), truth.gene_index[gene])
    return truth.rows, vals


@functools.lru_cache(maxsize=64)
def _truth_column(path: str, stamp: tuple[int, int], j: int) -> np.ndarray:
    try:
        with _open(path, "zarr") as g:
            col = np.asarray(g["X"][:, j], dtype=np.float32)
    except Exception as e:
        raise InputError(path, f"cannot read X[:, {j}]: {type(e).__name__}: {e}") from None
    col.setflags(write=False)
    return col


# --------------------------------------------------------------------------- sections / images


def read_sections(sample_folder: Path) -> list[dict]:
    path = sample_folder / layout.path("sections", "records")
    if not path.exists():
        raise InputError(path, "not found: materialise the sections asset first")
    try:
        recs = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if not isinstance(recs, list) or not all(isinstance(r, dict) and "name" in r for r in recs):
        raise InputError(path, "expected a list of objects with a 'name'")
    return recs


def section_record(home: str | os.PathLike, sample_id: str, section: object) -> dict:
    recs = read_sections(sample_dir(home, sample_id))
    for r in recs:
        if r["name"] == section:
            return r
    raise InputError(None, f"section {str(section)[:80]!r} is not in sections.json of {sample_id}", field="section")


def thumbnail_path(home: str | os.PathLike, sample_id: str, section: object) -> Path:
    """Validated path of a section's thumbnail (no traversal: the name must be listed and well formed)."""
    if not isinstance(section, str) or not SECTION_RE.match(section):
        raise InputError(None, f"invalid section name {str(section)[:80]!r}", field="section")
    section_record(home, sample_id, section)
    folder = (sample_dir(home, sample_id) / layout.path("sections", "thumbnails")).resolve()
    path = (folder / f"{section}.png").resolve()
    if path.parent != folder or not path.is_file():
        raise InputError(path, "thumbnail not found")
    return path


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def overlay_path(home: str | os.PathLike, sample_id: str) -> Path | None:
    path = sample_dir(home, sample_id) / layout.path("registrations", "overlay")
    return path if path.is_file() else None


# --------------------------------------------------------------------------- reports


def read_evaluation(home: str | os.PathLike, sample_id: str):
    """evaluation.parquet as a pandas frame (None when absent)."""
    import pandas as pd

    path = sample_dir(home, sample_id) / layout.path("evaluation", "table")
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise InputError(path, f"cannot read: {type(e).__name__}: {e}") from None
    missing = {"method", "section", "metric", "value"} - set(df.columns)
    if missing:
        raise InputError(path, f"missing columns {sorted(missing)}")
    return df


def metrics_table(df) -> tuple[list[str], list[dict]]:
    """Long (method, section, metric, value) -> one row per section and method, one column per metric;
    a section's distance to the nearest measured section (``dz_nearest_um``) follows its name when present."""
    wide = df.pivot_table(index=["section", "method"], columns="metric", values="value", aggfunc="mean", sort=False)
    wide = wide.reset_index()
    if "dz_nearest_um" in df.columns:
        dz = df.dropna(subset=["dz_nearest_um"]).groupby("section", sort=False)["dz_nearest_um"].first()
        wide.insert(1, "dz_nearest_um", wide["section"].map(dz))
    cols = [str(c) for c in wide.columns]
    wide.columns = cols
    return cols, wide.to_dict("records")


def read_registration_qc(home: str | os.PathLike, sample_id: str):
    import pandas as pd

    path = sample_dir(home, sample_id) / layout.path("registrations", "qc")
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:
        raise InputError(path, f"cannot read: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- download


def gene_csv(home: str | os.PathLike, sample_id: str, gene: str) -> str:
    """CSV of one gene at every spot: section, spot_id, x_um, y_um, z_um, value."""
    import pandas as pd

    vol = load_volume(home, sample_id)
    vals = gene_values(home, sample_id, gene)
    df = pd.DataFrame(
        {
            "section": np.asarray(vol.sections, dtype=object)[vol.section_code],
            "spot_id": vol.spot_id,
            "x_um": vol.xyz_um[:, 0],
            "y_um": vol.xyz_um[:, 1],
            "z_um": vol.xyz_um[:, 2],
            "value": vals,
        }
    )
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.7g")
    return buf.getvalue()


# --------------------------------------------------------------------------- dense volume, uncertainty, units

UNIT_LABELS = {"log1p_cp10k": "log1p CP10k", "stnet": "log((count + 1) / spot total)"}


def value_unit(home: str | os.PathLike, sample_id: str) -> str:
    """Human-readable unit of the expression values, from the volume's normalisation metadata."""
    vol = load_volume(home, sample_id)
    method = _normalisation_method(str(vol.path), vol.kind, _stamp(vol.path))
    return UNIT_LABELS.get(method, method) if method else "normalised expression"


@functools.lru_cache(maxsize=8)
def _normalisation_method(path: str, kind: str, stamp: tuple[int, int]) -> str:
    from anndata.io import read_elem

    try:
        with _open(path, kind) as g:
            norm = read_elem(g["uns"]["normalisation"]) if "uns" in g and "normalisation" in g["uns"] else {}
    except Exception:
        return ""
    return str(norm.get("normalisation") or norm.get("method") or "") if isinstance(norm, dict) else ""


def uncertainty_values(home: str | os.PathLike, sample_id: str, gene: object) -> np.ndarray | None:
    """The imputed_volume 'uncertainty' layer of one gene at every spot (None: no such layer)."""
    vol = load_volume(home, sample_id)
    j = vol.check_gene(gene)
    return _layer_column(str(vol.path), vol.kind, _stamp(vol.path), "uncertainty", j)


@functools.lru_cache(maxsize=128)
def _layer_column(path: str, kind: str, stamp: tuple[int, int], layer: str, j: int) -> np.ndarray | None:
    with _open(path, kind) as g:
        if "layers" not in g or layer not in g["layers"]:
            return None
        col = np.asarray(g["layers"][layer][:, j], dtype=np.float32)
    col.setflags(write=False)
    return col


DENSE_KINDS = ("expression", "uncertainty")


def dense_path(home: str | os.PathLike, sample_id: str, kind: str = "expression") -> Path | None:
    """expression_volume/<kind>.ome.zarr when materialised, else None."""
    if kind not in DENSE_KINDS:
        raise InputError(None, f"unknown volume {kind!r}", field="volume")
    p = sample_dir(home, sample_id) / layout.path("expression_volume", kind)
    return p if (p / ".zattrs").is_file() else None


def load_dense(home: str | os.PathLike, sample_id: str, kind: str = "expression"):
    """The OME-Zarr volume (asign_assets.results.volume.OmeVolume) or None when not materialised."""
    p = dense_path(home, sample_id, kind)
    return None if p is None else _load_dense(str(p), _stamp(p / ".zattrs"))


@functools.lru_cache(maxsize=8)
def _load_dense(path: str, stamp: tuple[int, int]):
    from asign_assets.results.volume import open_ome_zarr

    try:
        return open_ome_zarr(path)
    except Exception as e:
        raise InputError(path, f"cannot read the OME-Zarr volume: {type(e).__name__}: {e}") from None


def dense_gene(home: str | os.PathLike, sample_id: str, gene: object, kind: str = "expression", level: int = 0) -> np.ndarray | None:
    """[nz, ny, nx] float32 of one gene at a pyramid level (one chunk read), None when absent."""
    vol = load_volume(home, sample_id)
    vol.check_gene(gene)
    p = dense_path(home, sample_id, kind)
    if p is None:
        return None
    return _dense_channel(str(p), _stamp(p / ".zattrs"), str(gene), int(level))


@functools.lru_cache(maxsize=64)
def _dense_channel(path: str, stamp: tuple[int, int], gene: str, level: int) -> np.ndarray:
    ov = _load_dense(path, stamp)
    if gene not in ov.channels:
        raise InputError(path, f"gene {gene!r} is not a channel of the volume")
    arr = ov.levels[min(level, len(ov.levels) - 1)]
    out = np.asarray(arr[ov.channel_index(gene)], dtype=np.float32)
    out.setflags(write=False)
    return out


def dense_tissue(home: str | os.PathLike, sample_id: str, level: int = 0) -> np.ndarray | None:
    p = dense_path(home, sample_id)
    if p is None:
        return None
    return _dense_tissue(str(p), _stamp(p / ".zattrs"), int(level))


@functools.lru_cache(maxsize=8)
def _dense_tissue(path: str, stamp: tuple[int, int], level: int) -> np.ndarray:
    import zarr

    root = zarr.open_group(path, mode="r")
    n = len(root.attrs["multiscales"][0]["datasets"])
    key = f"labels/tissue/{min(level, n - 1)}"
    out = np.asarray(root[key][:], bool) if key in root else np.ones(_load_dense(path, stamp).levels[min(level, n - 1)].shape[1:], bool)
    out.setflags(write=False)
    return out


def read_gene_accuracy(home: str | os.PathLike, sample_id: str, gene: str):
    """Rows of evaluation_genes.parquet for one gene (pandas), None when absent."""
    import pandas as pd

    path = sample_dir(home, sample_id) / layout.path("evaluation", "genes")
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path, filters=[("gene", "==", str(gene))])
    except Exception as e:
        raise InputError(path, f"cannot read: {type(e).__name__}: {e}") from None
    return df


def curves_path(home: str | os.PathLike, sample_id: str) -> Path | None:
    path = sample_dir(home, sample_id) / layout.path("model", "curves_png")
    return path if path.is_file() else None


def clear_caches() -> None:
    for f in (_load_volume, _gene_column, _load_truth, _truth_column, _normalisation_method, _layer_column, _load_dense,
              _dense_channel, _dense_tissue):
        f.cache_clear()
