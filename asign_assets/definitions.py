"""The Dagster code location's entry point (`dagster dev -m asign_assets.definitions`,
workspace.yaml): the objects themselves live in asign_assets.pipeline."""

from asign_assets.pipeline.definitions import defs

__all__ = ["defs"]
