"""Standalone asset checks: small reads of stored outputs, logic in asign_assets.results.qc."""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
import polars as pl

from asign_assets.results import qc
from asign_assets.ingest import sections as sections_lib
from asign_assets.pipeline.automation import samples_partitions
from asign_assets.pipeline.resources import StorageResource, sample_io
from asign_assets.storage.store import Storage
from asign_assets.pipeline.assets.ingest import expression, sections
from asign_assets.pipeline.assets.results import evaluation, imputed_volume
from asign_assets.pipeline.assets.sources import raw_truth
from asign_assets.pipeline.assets.spatial import graph_3d, registrations
from asign_assets.storage import layout


def _result(problems: list[str], ok: str, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems, severity=severity, description=ok if not problems else "; ".join(problems[:10]), metadata=metadata,
    )


def _sample_check(asset: Any, description: str, additional_deps: Sequence[Any] = ()) -> Any:
    """``dg.asset_check`` partitioned by sample. Dagster 1.13 marks a check's ``partitions_def`` as
    preview and has no other way to give a standalone check its sample; only that notice is silenced."""
    def decorate(fn: Callable[..., dg.AssetCheckResult]) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Specifying a partitions_def on an AssetCheckSpec is currently in preview", dg.PreviewWarning)
            return dg.asset_check(asset=asset, partitions_def=samples_partitions, additional_deps=list(additional_deps), description=description)(fn)

    return decorate


def _registered_spots(store: Storage, sid: str) -> int:
    return pl.scan_parquet(store.file(sid, "registrations", "spots")).select(pl.len()).collect().item()


@_sample_check(imputed_volume, additional_deps=[registrations], description="X and every layer are finite, with one row per registered spot and matching shapes.")
def imputed_volume_consistent(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    store, sid = sample_io(context, storage)
    n = _registered_spots(store, sid)
    return _result(qc.volume_problems(store.file(sid, "imputed_volume", "h5ad"), n), "finite, shapes consistent", spots=n)


@_sample_check(registrations, additional_deps=[sections], description="Every section has spots in the common frame and a saved registration transform.")
def every_section_registered(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    store, sid = sample_io(context, storage)
    names = [r.name for r in sections_lib.load_records(store.local_path(sid, "sections"))]
    reg = store.local_path(sid, "registrations")
    return _result(qc.registration_gaps(names, pl.read_parquet(reg / layout.name("registrations", "spots")), reg / layout.name("registrations", "transforms")), "every section registered", sections=len(names))


@_sample_check(graph_3d, additional_deps=[registrations], description=f"At most {qc.MAX_ISOLATED_FRACTION:.0%} of the spots have no edge in the 3D graph.")
def graph_few_isolated(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    store, sid = sample_io(context, storage)
    n = _registered_spots(store, sid)
    frac = qc.isolated_fraction(pl.read_parquet(store.file(sid, "graph_3d", "edges"), columns=["src", "dst"]), n)
    bad = [f"{frac:.1%} of {n} spots are isolated (> {qc.MAX_ISOLATED_FRACTION:.0%})"] if frac > qc.MAX_ISOLATED_FRACTION else []
    return _result(bad, f"{frac:.1%} isolated", dg.AssetCheckSeverity.WARN, isolated_fraction=frac)


@_sample_check(expression, description=f"The measured sections keep at least {qc.MIN_MEASURED_SPOTS} spots (together) after the library-size filter.")
def enough_measured_spots(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    store, sid = sample_io(context, storage)
    n = qc.h5ad_n_obs(store.file(sid, "expression", "h5ad"))
    bad = [f"only {n} measured spots (< {qc.MIN_MEASURED_SPOTS})"] if n < qc.MIN_MEASURED_SPOTS else []
    return _result(bad, f"{n} measured spots", measured_spots=n)


@_sample_check(evaluation, additional_deps=[raw_truth], description="When the manifest has truth, the evaluation scored ASIGN on it.")
def evaluated_when_truth(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    store, sid = sample_io(context, storage)
    has_truth = store.load_registered(sid).has_truth
    table = pl.read_parquet(store.file(sid, "evaluation", "table"))
    scored = table.filter(pl.col("method") == "asign").height
    bad = [f"the manifest has truth but evaluation.parquet has no ASIGN rows ({table.height} rows)"] if has_truth and scored == 0 else []
    return _result(bad, "evaluated" if has_truth else "no truth: nothing to evaluate", has_truth=has_truth, asign_rows=scored)


CHECKS = [imputed_volume_consistent, every_section_registered, graph_few_isolated, enough_measured_spots, evaluated_when_truth]
