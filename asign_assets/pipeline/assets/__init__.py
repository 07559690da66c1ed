"""Thin Dagster assets, one module per stage; the work is done by the library modules."""

from asign_assets.pipeline.assets.checks import CHECKS
from asign_assets.pipeline.assets.imaging import embeddings, tiles
from asign_assets.pipeline.assets.ingest import expression, sections
from asign_assets.pipeline.assets.results import evaluation, imputed_volume, model
from asign_assets.pipeline.assets.sources import SOURCES
from asign_assets.pipeline.assets.spatial import graph_3d, registrations
from asign_assets.pipeline.assets.volume import expression_volume

ALL_ASSETS = [*SOURCES, sections, tiles, embeddings, registrations, graph_3d, expression, model, imputed_volume, evaluation, expression_volume]
ALL_CHECKS = CHECKS

__all__ = ["ALL_ASSETS", "ALL_CHECKS"]
