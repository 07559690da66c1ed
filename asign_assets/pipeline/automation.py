"""When assets run: the sample partitions, the reprocessing condition and the `gpu` pool, and
the decorators every sample asset is declared with."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

samples_partitions = dg.DynamicPartitionsDefinition(name="samples")

GPU_POOL = "gpu"
# Every step of the `gpu` pool goes to the Celery queue of the same name (celery_executor);
# other executors ignore the tag. Workers on GPU machines listen on it (docs/deployment.md).
GPU_QUEUE_TAGS = {"dagster-celery/queue": GPU_POOL}
# Requests a GPU when the code runs on Kubernetes (k8s_job_executor / k8s run launcher).
K8S_GPU_TAGS = {
    **GPU_QUEUE_TAGS,
    "dagster-k8s/config": json.dumps(
        {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}}
    )
}

#: When the automation sensor retries what failed or is missing (UTC, nightly, out of working
#: hours); also the default cron of the `observe_inputs` schedule (asign_assets.pipeline.sensors).
NIGHTLY_CRON = "0 2 * * *"

# Declarative reprocessing (evaluated per sample by Dagster's automation sensor): an asset is
# requested when its code version changed or an upstream data version changed (a source
# observation that saw an edited file, a re-materialised asset with other content), and when
# its last execution failed or it is missing and it was not requested or materialised since the
# last nightly cron tick (a sample whose run failed is retried once a night, at the first
# evaluation after the tick where nothing upstream is missing or running; never on every tick).
# New samples come from the `new_samples` sensor.
REPROCESS = (
    (
        (dg.AutomationCondition.code_version_changed() | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()))
        .since_last_handled()
        .with_label("code or upstream data changed")
        | (
            (dg.AutomationCondition.execution_failed() | dg.AutomationCondition.missing())
            & dg.AutomationCondition.cron_tick_passed(NIGHTLY_CRON).since_last_handled()
        ).with_label("failed or missing, not retried since the nightly tick")
    )
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("code or upstream data changed, or retry")


def sample_asset(**kwargs: Any) -> Any:
    """``dg.asset`` partitioned by sample, reprocessed by :data:`REPROCESS`."""
    return dg.asset(partitions_def=samples_partitions, automation_condition=REPROCESS, **kwargs)


def gpu_asset(request_gpu: bool = False, **kwargs: Any) -> Any:
    """A :func:`sample_asset` in the `gpu` pool, on the Celery `gpu` queue; ``request_gpu`` also
    asks Kubernetes for a GPU (steps that only prefer one run anywhere)."""
    return sample_asset(pool=GPU_POOL, op_tags=K8S_GPU_TAGS if request_gpu else GPU_QUEUE_TAGS, **kwargs)
