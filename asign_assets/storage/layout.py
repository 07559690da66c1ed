"""What each asset writes under a sample's folder: the one table that storage users read.

Freshness (are the outputs still there?), the asset checks, the stack inputs of training, the
console's key figures and the viewer all look paths up here, so adding an asset or a file is
one entry. A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class AssetFiles:
    """One asset's outputs.

    ``outputs`` are the top-level entries (file or folder) that ``Storage.write`` replaces
    atomically, all written on every materialisation; ``optional`` ones are written only
    when the data call for them (evaluation's per-gene table needs truth). ``files`` names
    what is inside, by role, relative to the sample folder. ``key_figure`` is the metadata
    entry ``asign run`` prints for the asset.
    """

    outputs: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    key_figure: str = ""
    optional: tuple[str, ...] = ()

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return self.outputs + self.optional


LAYOUT: Mapping[str, AssetFiles] = {
    "sections": AssetFiles(
        ("sections",),
        {"records": "sections/sections.json", "spots": "sections/spots.parquet", "thumbnails": "sections/thumbnails", "masks": "sections/masks"},
        "n_spots",
    ),
    "tiles": AssetFiles(("tiles.zarr",), {"zarr": "tiles.zarr"}, "n_spots"),
    "embeddings": AssetFiles(("embeddings.zarr",), {"zarr": "embeddings.zarr"}, "dim"),
    "registrations": AssetFiles(
        ("registrations",),
        {"spots": "registrations/spots.parquet", "transforms": "registrations/transforms", "qc": "registrations/qc.parquet", "overlay": "registrations/overlay.png"},
        "min_dice_after",
    ),
    "graph_3d": AssetFiles(("graph_3d",), {"graph": "graph_3d/graph.pt", "edges": "graph_3d/edges.parquet", "params": "graph_3d/params.json"}, "nodes"),
    "expression": AssetFiles(("expression.h5ad",), {"h5ad": "expression.h5ad"}, "n_genes"),
    "model": AssetFiles(
        ("model",),
        {"checkpoint": "model/checkpoint.pt", "config": "model/config.json", "curves": "model/curves.parquet", "curves_png": "model/curves.png"},
        "best_val_gene_pcc",
    ),
    "imputed_volume": AssetFiles(("imputed_volume.h5ad", "imputed_volume.zarr"), {"h5ad": "imputed_volume.h5ad", "zarr": "imputed_volume.zarr"}, "n_spots"),
    "evaluation": AssetFiles(
        ("evaluation.parquet",),
        {"table": "evaluation.parquet", "genes": "evaluation_genes.parquet", "truth": "evaluation_truth.zarr"},
        "evaluated_spots",
        optional=("evaluation_genes.parquet", "evaluation_truth.zarr"),
    ),
    "expression_volume": AssetFiles(
        ("expression_volume",),
        {"expression": "expression_volume/expression.ome.zarr", "uncertainty": "expression_volume/uncertainty.ome.zarr"},
        "spot_agreement",
    ),
}


def path(asset: str, role: str) -> str:
    """A file's path relative to the sample folder, e.g. ``path("registrations", "spots")``."""
    return LAYOUT[asset].files[role]


def name(asset: str, role: str) -> str:
    """The file's name inside its output folder (``spots.parquet`` for registrations/spots)."""
    return path(asset, role).rsplit("/", 1)[-1]


def owner(output: str) -> str:
    """The asset that writes a top-level output (``evaluation_truth.zarr`` -> ``evaluation``)."""
    return _OWNER[output]


_OWNER = {out: asset for asset, a in LAYOUT.items() for out in a.all_outputs}
