"""The Dagster code location: `defs` for `dagster dev -m asign_assets.definitions`."""

from __future__ import annotations

import os

import dagster as dg

from asign_assets.assets import ALL_ASSETS, ALL_CHECKS
from asign_assets.assets.common import DeviceResource, StorageResource, samples_partitions

full_sample_job = dg.define_asset_job(
    "full_sample",
    selection=dg.AssetSelection.all(),
    partitions_def=samples_partitions,
    description="Every asset of one sample partition, from the manifest to the evaluation.",
)


def build_definitions(storage_root: str | None = None, device: str | None = None, executor: dg.ExecutorDefinition | None = None, extra: list | None = None) -> dg.Definitions:
    """Definitions with explicit resources (the CLI and tests use this)."""
    from asign_assets.ops import schedules_and_sensors

    sched, sensors = schedules_and_sensors()
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[full_sample_job],
        schedules=sched,
        sensors=sensors,
        resources={
            "storage": StorageResource(root=storage_root if storage_root is not None else os.environ.get("ASIGN_HOME", "")),
            "device": DeviceResource(device=device or os.environ.get("ASIGN_DEVICE", "auto")),
        },
        executor=executor,
    )


defs = build_definitions()
