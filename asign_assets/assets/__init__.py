"""Thin Dagster assets, one module per stage; the work is done by the library modules."""

import warnings

import dagster as dg

# Observable source assets and partitioned asset checks are Dagster beta/preview APIs that we
# use on purpose (raw inputs as sources, per-sample checks); their notices are silenced here only.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", (dg.BetaWarning, dg.PreviewWarning))
    from asign_assets.assets.checks import CHECKS
    from asign_assets.assets.imaging import embeddings, tiles
    from asign_assets.assets.ingest import expression, sections
    from asign_assets.assets.results import evaluation, imputed_volume, model
    from asign_assets.assets.sources import SOURCES
    from asign_assets.assets.spatial import graph_3d, registrations
    from asign_assets.assets.volume import expression_volume

ALL_ASSETS = [*SOURCES, sections, tiles, embeddings, registrations, graph_3d, expression, model, imputed_volume, evaluation, expression_volume]
ALL_CHECKS = CHECKS

__all__ = ["ALL_ASSETS", "ALL_CHECKS"]
