"""Which assets of a sample need materialising: Dagster's own stale/missing status, per partition.

`asign run` observes the raw-input source assets first (so an edited file is seen), then asks
Dagster's stale-status resolver, the one behind the UI's "Materialize stale and missing",
for each asset of the sample: MISSING, STALE (with its causes: new code version, new upstream
data version) or FRESH. A FRESH asset whose files are gone from storage (``--replace``, a
deleted folder) counts as missing, and one last materialised with another op config (Dagster
does not version config) as changed. Everything downstream of a selected asset is selected too:
it will read new data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from asign_assets.storage import Storage

#: Files (relative to the sample folder) that each asset writes; all must exist for it to count as present.
OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "sections": ("sections",),
    "tiles": ("tiles.zarr",),
    "embeddings": ("embeddings.zarr",),
    "registrations": ("registrations",),
    "graph_3d": ("graph_3d",),
    "expression": ("expression.h5ad",),
    "model": ("model",),
    "imputed_volume": ("imputed_volume.h5ad", "imputed_volume.zarr"),
    "evaluation": ("evaluation.parquet",),
    "expression_volume": ("expression_volume",),
}


@dataclass
class SamplePlan:
    """Assets to materialise (upstream first) with the reason for each, and those skipped with theirs."""

    run: dict[dg.AssetKey, str] = field(default_factory=dict)
    skip: dict[dg.AssetKey, str] = field(default_factory=dict)


def _cause_text(cause) -> str:
    dep = f" ({cause.dependency.asset_key.to_user_string()})" if cause.dependency is not None else ""
    return f"{cause.reason}{dep}"


def _op_config(run_config: Mapping | None, name: str) -> dict:
    return dict(((run_config or {}).get("ops") or {}).get(name) or {})


def _config_change(instance: dg.DagsterInstance, key: dg.AssetKey, sample_id: str, run_config: Mapping | None) -> str | None:
    """The asset's op config in ``run_config`` against the one of the run that last materialised it
    (Dagster does not track config in data versions; a new ``--epochs`` must still rerun ``model``)."""
    res = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[sample_id]), limit=1)
    run = instance.get_run_by_id(res.records[0].run_id) if res.records else None
    if run is None:
        return None
    name = key.to_user_string()
    old, new = _op_config(run.run_config, name), _op_config(run_config, name)
    return None if old == new else f"run config changed ({old.get('config', {})} -> {new.get('config', {})})"


def _failed_blocking_check(instance: dg.DagsterInstance, graph, key: dg.AssetKey, sample_id: str) -> str | None:
    """A blocking check of the asset whose latest evaluation for this sample failed: the asset
    is recomputed (and its check with it) rather than trusted by what is downstream."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    failed = []
    for ck in graph.get(key).check_keys:
        if not graph.get(ck).blocking:
            continue
        # Checks declared inside a partitioned asset are recorded without a partition: find this
        # sample's latest evaluation through its run's partition tag.
        for rec in instance.event_log_storage.get_asset_check_execution_history(ck, limit=50):
            run = instance.get_run_by_id(rec.run_id)
            if (rec.partition or (run.tags.get("dagster/partition") if run else None)) != sample_id:
                continue
            if rec.status == AssetCheckExecutionRecordStatus.FAILED:
                failed.append(ck.name)
            break
    return f"blocking check {', '.join(sorted(failed))} failed last time" if failed else None


def plan_sample(
    instance: dg.DagsterInstance, defs: dg.Definitions, store: Storage, sample_id: str, force: bool = False, run_config: Mapping | None = None,
) -> SamplePlan:
    """Stale and missing assets of ``sample_id`` and their downstream; the rest are skipped.

    ``run_config`` is the config of the run about to start: an asset whose op config differs
    from the one it was last materialised with is run again."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None), instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance, graph, loading_context=view)
    plan = SamplePlan()
    for key in keys:
        name = key.to_user_string()
        parents = [p for p in graph.get(key).parent_keys if p in plan.run]
        if force:
            plan.run[key] = "--force"
            continue
        status = resolver.get_status(key, sample_id)
        if status == StaleStatus.MISSING:
            plan.run[key] = "never materialised"
        elif status == StaleStatus.STALE:
            plan.run[key] = "stale: " + "; ".join(sorted({_cause_text(c) for c in resolver.get_stale_causes(key, sample_id)}))
        elif not all(store.exists(sample_id, f) for f in OUTPUTS.get(name, ())):
            plan.run[key] = "materialised, but its files are gone from storage"
        elif (changed := _config_change(instance, key, sample_id, run_config)) is not None:
            plan.run[key] = changed
        elif (failed := _failed_blocking_check(instance, graph, key, sample_id)) is not None:
            plan.run[key] = failed
        elif parents:
            plan.run[key] = f"upstream {', '.join(sorted(p.to_user_string() for p in parents))} will change"
        else:
            plan.skip[key] = "up to date (same code version, same upstream data versions)"
    return plan
