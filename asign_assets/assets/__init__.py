"""Thin Dagster assets, one module per stage; the work is done by the library modules."""

from asign_assets.assets.ingest import expression, sections

ALL_ASSETS = [sections, expression]
ALL_CHECKS: list = []

__all__ = ["ALL_ASSETS", "ALL_CHECKS"]
