"""`asign run` as Dagster sees it: register a sample, observe its inputs, plan what is stale
and materialise it in process, one line per asset at the console (the CLI parses arguments)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from asign_assets.errors import AsignError, RunInterrupted
from asign_assets.ingest.manifest import load_manifest
from asign_assets.pipeline.console import asset_line, cli_run_config, summary_table
from asign_assets.pipeline.definitions import build_definitions
from asign_assets.pipeline.freshness import absorb_run, plan_sample
from asign_assets.pipeline.sensors import OBSERVE_JOB_NAME
from asign_assets.storage.store import PROVENANCE, Storage


def _kept_line(storage, sample_id: str) -> str:
    kept: list[str] = []
    if storage.is_local:
        folder = Path(storage.sample_uri(sample_id))
        if folder.is_dir():
            kept = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != PROVENANCE)
    what = f"complete outputs kept: {', '.join(kept)}" if kept else "no outputs were written yet"
    return (
        f"interrupted; sample {sample_id!r}: {what}; nothing is half-written (outputs are replaced atomically). "
        f"Run the same command again to finish"
    )


def _failure_messages(result) -> list[str]:
    messages = []
    for ev in result.all_events:
        if ev.is_step_failure and ev.step_failure_data and ev.step_failure_data.error:
            err = ev.step_failure_data.error
            while err.cause is not None and "dagster" in err.cls_name.lower():
                err = err.cause
            messages.append(f"{ev.step_key}: {err.message.strip()}")
        elif ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if data is not None and not data.passed:
                messages.append(f"check {data.check_name} failed on {data.asset_key.to_user_string()}: {data.description or ''}")
    return messages


def materialise_sample(
    manifest_or_id: str, device: str = "auto", run_config: dict | None = None, replace: bool = False, force: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> str:
    """Register the sample, add its partition, observe its raw inputs and materialise the assets
    that are missing or stale (all of them with ``force``), printing what is skipped and why.

    A sample id registered with other content is refused unless ``replace`` (its old
    outputs are then removed at once before the run). ``interrupted`` tells whether Ctrl-C
    arrived (Dagster handles SIGINT itself during a run). Dagster's DEBUG stream goes to
    ``$DAGSTER_HOME/logs/<sample>.log``; the terminal gets one line per asset and a summary.
    """
    storage = Storage()
    candidate = Path(manifest_or_id).expanduser()
    manifest = None
    if candidate.suffix.lower() in (".yaml", ".yml") or candidate.exists():
        manifest = load_manifest(candidate)
    elif replace:
        raise AsignError(f"--replace needs a manifest file; {manifest_or_id!r} is not one")
    instance = dg.DagsterInstance.get()  # an unusable DAGSTER_HOME fails here, before registering
    if manifest is not None:
        storage.register(manifest, replace=replace)
        sample_id = manifest.sample_id
    else:
        sample_id = manifest_or_id
        storage.load_registered(sample_id)  # clear error if unknown
    defs = build_definitions(storage_root=storage.root, device=device)
    instance.add_dynamic_partitions("samples", [sample_id])
    log_file = Path(os.environ["DAGSTER_HOME"]) / "logs" / f"{sample_id}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    quiet = cli_run_config(str(log_file))
    print(f"asign: sample {sample_id!r} (storage {storage.root}, device {device}); Dagster's log: {log_file}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        observed = defs.resolve_job_def(OBSERVE_JOB_NAME).execute_in_process(
            partition_key=sample_id, instance=instance, raise_on_error=False, run_config=quiet,
        )
        if not observed.success:
            raise AsignError("observing the raw inputs failed:\n  " + "\n  ".join(_failure_messages(observed) or [f"see {log_file}"]))
        plan = plan_sample(instance, defs, storage, sample_id, force=force, run_config=run_config)
        for key, why in plan.run.items():
            print(f"  {key.to_user_string():<18} to run: {why}", file=sys.stderr)
        result = None
        if plan.run:
            config = {**(run_config or {}), **quiet}
            result = defs.resolve_job_def("full_sample").execute_in_process(
                partition_key=sample_id, instance=instance, raise_on_error=False, run_config=config, asset_selection=list(plan.run),
            )
            absorb_run(instance, defs, sample_id)
    except KeyboardInterrupt:
        raise RunInterrupted(_kept_line(storage, sample_id)) from None
    if interrupted():
        raise RunInterrupted(_kept_line(storage, sample_id))
    if result is not None and not result.success:
        raise AsignError("run failed:\n  " + "\n  ".join(_failure_messages(result) or [f"see {log_file}"]))
    ran = [
        asset_line(ev.asset_key.to_user_string(), ev.event_specific_data.materialization.metadata)
        for ev in (result.all_events if result is not None else []) if ev.event_type_value == "ASSET_MATERIALIZATION"
    ]
    print(summary_table(ran, {k.to_user_string(): why for k, why in plan.skip.items()}), file=sys.stderr)
    what = f"{len(ran)} asset(s) materialised, {len(plan.skip)} up to date" if ran else "everything up to date (--force recomputes)"
    print(f"asign: sample {sample_id!r}: {what} in {time.perf_counter() - t0:.1f} s; outputs in {storage.sample_uri(sample_id)}", file=sys.stderr)
    return sample_id
