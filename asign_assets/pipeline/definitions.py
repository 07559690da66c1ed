"""The Dagster code location's objects: `defs`, loaded through asign_assets.definitions."""

from __future__ import annotations

import os

import dagster as dg

from asign_assets.pipeline.assets import ALL_ASSETS, ALL_CHECKS
from asign_assets.pipeline.resources import DeviceResource, StorageResource
from asign_assets.pipeline.assets.sources import SOURCES
from asign_assets.pipeline.console import asign_cli_logger
from asign_assets.pipeline.sensors import JOB_NAME, OBSERVE_JOB_NAME

# The raw inputs are observed first in the same run, so what a sensor-started run computes
# records the file digests it was computed from (`asign run` observes, then selects).
full_sample_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.assets(*(s.key for s in SOURCES)) | dg.AssetSelection.all(),
    description="Observes one sample's raw inputs, then materialises every asset from the sections to the evaluation "
    "(`asign run` selects only the stale and missing ones).",
)
observe_inputs_job = dg.define_asset_job(
    OBSERVE_JOB_NAME,
    selection=dg.AssetSelection.assets(*(s.key for s in SOURCES)),
    description="Observes one sample's raw inputs and truth: content digests of the manifest's files.",
)


EXECUTORS = ("", "in_process", "multiprocess", "celery", "k8s")


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by ``$ASIGN_EXECUTOR`` (empty: Dagster's default, multiprocess).

    ``celery`` reads the broker and result backend from ``$ASIGN_CELERY_BROKER`` and
    ``$ASIGN_CELERY_BACKEND`` when a run starts, so runs the sensor requests (no run config)
    reach the workers too; ``in_process`` keeps a run in one process (small machines).
    """
    name = os.environ.get("ASIGN_EXECUTOR", "").strip()
    if name not in EXECUTORS:
        raise ValueError(f"ASIGN_EXECUTOR={name!r}: expected one of {', '.join(repr(e) for e in EXECUTORS)}")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": {"env": "ASIGN_CELERY_BROKER"},
                "backend": {"env": "ASIGN_CELERY_BACKEND"},
                "config_source": {"task_acks_late": True, "worker_prefetch_multiplier": 1, "broker_connection_retry_on_startup": True},
            },
            name="celery",
        )
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None


def build_definitions(storage_root: str | None = None, device: str | None = None, executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """Definitions with explicit resources (the CLI and tests); without them the resources
    read ``$ASIGN_HOME`` and ``$ASIGN_DEVICE`` through ``dg.EnvVar`` when a run starts."""
    from asign_assets.pipeline.sensors import schedules_and_sensors
    from asign_assets.runtime.home import default_home

    # A bare `dagster dev -m asign_assets.definitions` must work as documented: the EnvVars
    # get their documented defaults (~/.asign, auto) when unset; run workers inherit them.
    os.environ.setdefault("ASIGN_HOME", default_home())
    os.environ.setdefault("ASIGN_DEVICE", "auto")
    sched, sensors = schedules_and_sensors()
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[full_sample_job, observe_inputs_job],
        schedules=sched,
        sensors=sensors,
        resources={
            "storage": StorageResource(root=storage_root if storage_root is not None else dg.EnvVar("ASIGN_HOME")),
            "device": DeviceResource(device=device or dg.EnvVar("ASIGN_DEVICE")),
        },
        executor=executor,
        loggers={"console": dg.colored_console_logger, "asign_cli": asign_cli_logger},
    )


defs = build_definitions(executor=executor_from_env())
