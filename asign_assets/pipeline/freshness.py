"""Which assets of a sample need materialising, decided by Dagster's automation conditions (public API).

`asign run` observes the raw-input source assets first (so an edited file is seen), then
evaluates :data:`PLAN` with ``dg.evaluate_automation_conditions``: an asset of the sample is run
when it is missing, its last execution failed, one of its blocking checks failed, its code
version changed, an upstream data version changed since it was last materialised, or something
upstream of it is run. Each branch is labelled; the labels of the branches that are true are
the printed reasons.

Code and data version changes are tick-relative in Dagster (true between two evaluations), so
every sample keeps its own evaluation cursor in the instance's cursor storage: one evaluation
plans (:func:`plan_sample`) and one right after the run (:func:`absorb_run`) takes in the run's
own materialisations, so the next plan compares against what this run wrote. A sample's first
evaluation on an instance (outputs made by the UI or the daemon only, or by an older asign whose
plan differed) has nothing to compare against: everything it has is recomputed once, rather than
trusted blindly.

Beyond Dagster's view: an asset whose files are gone from storage (``--replace``, a deleted
folder) counts as missing, and one last materialised with another op config (Dagster does not
version config) as changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from asign_assets.storage.layout import LAYOUT
from asign_assets.storage.store import Storage


_AC = dg.AutomationCondition
_MATERIALISED = (_AC.newly_updated() | _AC.initial_evaluation()).with_label("materialised")
NEVER = "never materialised"
FAILED = "its last run failed"
CHECK_FAILED = "a blocking check failed last time"
NEW_CODE = "stale: has a new code version"
NEW_DATA = "stale: new dependency data version"
UPSTREAM = "upstream will change"
FIRST = "first plan of this sample on this instance: nothing recorded to compare its outputs with"

#: Stale or missing, in Dagster's terms. The version latches stay true from the tick that saw the
#: change until the asset is materialised again; ``will_be_requested`` carries a request downstream.
PLAN = (
    _AC.missing().with_label(NEVER)
    | _AC.initial_evaluation().with_label(FIRST)
    | _AC.execution_failed().with_label(FAILED)
    | _AC.any_checks_match(_AC.check_failed(), blocking_only=True).with_label(CHECK_FAILED)
    | _AC.code_version_changed().since(_MATERIALISED).with_label(NEW_CODE)
    | _AC.any_deps_match(_AC.data_version_changed()).since(_MATERIALISED).with_label(NEW_DATA)
    | _AC.any_deps_match(_AC.will_be_requested()).with_label(UPSTREAM)
).with_label("stale or missing")


@dataclass
class SamplePlan:
    """Assets to materialise (upstream first) with the reason for each, and those skipped with theirs."""

    run: dict[dg.AssetKey, str] = field(default_factory=dict)
    skip: dict[dg.AssetKey, str] = field(default_factory=dict)


def _cursor_key(sample_id: str) -> str:
    return f"asign/plan_cursor/{sample_id}"


def _planning_defs(defs: dg.Definitions) -> dg.Definitions:
    """``defs`` with :data:`PLAN` as every materialisable asset's condition (checks and sources as they are)."""
    assets = [
        a.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=PLAN))
        if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a
        for a in defs.assets or []
    ]
    return dg.Definitions(assets=assets, asset_checks=defs.asset_checks, resources=defs.resources)


def _tick(instance: dg.DagsterInstance, defs: dg.Definitions, sample_id: str) -> dg.EvaluateAutomationConditionsResult:
    """One evaluation of :data:`PLAN`, continuing and then saving the sample's cursor."""
    key = _cursor_key(sample_id)
    stored = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    cursor = dg.deserialize_value(stored) if stored else None
    selection = dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks()
    result = dg.evaluate_automation_conditions(defs=_planning_defs(defs), instance=instance, asset_selection=selection, cursor=cursor)
    instance.daemon_cursor_storage.set_cursor_values({key: dg.serialize_value(result.cursor)})
    return result


def absorb_run(instance: dg.DagsterInstance, defs: dg.Definitions, sample_id: str) -> None:
    """The evaluation after a run: its materialisations then reset the version latches, and the
    next plan sees only what changed after it."""
    _tick(instance, defs, sample_id)


def _true_for(result: dg.AutomationResult, sample_id: str) -> bool:
    return sample_id in result.true_subset.expensively_compute_partition_keys()


def _dagster_reason(result: dg.AutomationResult, sample_id: str) -> str:
    """The label of the first of :data:`PLAN`'s branches that holds for the sample, with the
    checks or dependencies that made it true (each entity-matching result's child is evaluated
    on that entity's key)."""
    for branch in result.child_results:
        label = branch.condition.get_label()
        if label == UPSTREAM or not _true_for(branch, sample_id):
            continue
        if label == CHECK_FAILED:
            names = sorted(c.child_results[0].key.name for c in branch.child_results if _true_for(c, sample_id))
            return f"blocking check {', '.join(names)} failed last time" if names else label
        if label == NEW_DATA:
            trigger = branch.child_results[0]
            deps = sorted(d.child_results[0].key.to_user_string() for d in trigger.child_results if _true_for(d, sample_id))
            return f"{label} ({', '.join(deps)})" if deps else label
        return label
    return UPSTREAM


#: Op config keys that change how a step runs, never what it writes (worker processes give
#: the same bytes or states as one by one, tests/runtime/test_parallel.py, test_training.py).
EXECUTION_ONLY = frozenset({"workers"})


def _op_config(run_config: Mapping | None, name: str) -> dict:
    op = dict(((run_config or {}).get("ops") or {}).get(name) or {})
    if isinstance(op.get("config"), Mapping):
        op["config"] = {k: v for k, v in op["config"].items() if k not in EXECUTION_ONLY}
        if not op["config"]:
            del op["config"]
    return op


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


def plan_sample(
    instance: dg.DagsterInstance, defs: dg.Definitions, store: Storage, sample_id: str, force: bool = False, run_config: Mapping | None = None,
) -> SamplePlan:
    """Stale and missing assets of ``sample_id`` and their downstream; the rest are skipped.

    ``run_config`` is the config of the run about to start: an asset whose op config differs
    from the one it was last materialised with is run again."""
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    plan = SamplePlan()
    if force:
        plan.run = dict.fromkeys(keys, "--force")
        return plan
    result = _tick(instance, defs, sample_id)
    by_key = {r.key: r for r in result.results}
    with dg.partition_loading_context(datetime.datetime.now(datetime.timezone.utc), instance):
        for key in keys:
            name = key.to_user_string()
            parents = sorted(p.to_user_string() for p in graph.get(key).parent_keys if p in plan.run)
            if sample_id in result.get_requested_partitions(key) and (why := _dagster_reason(by_key[key], sample_id)) != UPSTREAM:
                plan.run[key] = why
            elif not all(store.exists(sample_id, f) for f in (LAYOUT[name].outputs if name in LAYOUT else ())):
                plan.run[key] = "materialised, but its files are gone from storage"
            elif (changed := _config_change(instance, key, sample_id, run_config)) is not None:
                plan.run[key] = changed
            elif parents:
                plan.run[key] = f"upstream {', '.join(parents)} will change"
            else:
                plan.skip[key] = "up to date (same code version, no new upstream data since)"
    return plan
