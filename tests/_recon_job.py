"""A reconstructable `full_sample` job on the multiprocess executor, for tests/e2e/test_concurrency.py.

Dagster re-imports this file in every step process, so the definitions come from the
environment: ASIGN_HOME (storage root), ASIGN_DEVICE and DAGSTER_HOME. Run as a script,
``python tests/_recon_job.py <sample_id>`` materialises one sample and exits 0 on success.
"""

from __future__ import annotations

import sys

import dagster as dg

from asign_assets.pipeline.definitions import build_definitions

RUN_CONFIG = {
    "ops": {"model": {"config": {"epochs": 5}}},
    # Step processes fork from a server that has imported the heavy modules once.
    "execution": {"config": {"start_method": {"forkserver": {"preload_modules": ["asign_assets.definitions", "asign_assets.pipeline.assets", "torch"]}}}},
}


def full_sample_multiprocess() -> dg.JobDefinition:
    return build_definitions(executor=dg.multiprocess_executor).resolve_job_def("full_sample")


def main(sample_id: str) -> int:
    instance = dg.DagsterInstance.get()
    job = dg.reconstructable(full_sample_multiprocess)
    with dg.execute_job(job, instance=instance, tags={"dagster/partition": sample_id}, run_config=RUN_CONFIG) as result:
        steps = sorted({ev.step_key for ev in result.all_events if ev.event_type_value == "STEP_SUCCESS"})
        print(f"{sample_id}: success={result.success} steps={steps}", flush=True)
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
