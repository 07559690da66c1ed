"""Celery end to end: a real Redis, two real dagster-celery workers, the demo's `full_sample` run.

Runs the commands of docs/deployment.md ("Celery") verbatim. Everything binds 127.0.0.1 on
free ports and is stopped by the test. Skips, naming what is missing, without redis-server
or the Python clients; .ci/run installs them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from _procs import doc_command, find_binary, free_port, port_open, require, require_modules, run, service, shell, stop, tail, tool_env, tree_pids, wait_for  # noqa: E402
from _reliability import array_hashes  # noqa: E402

SAMPLE = "celery_demo"
RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 5}}}}
GPU_STEPS = {"model", "imputed_volume"}
WORKER_START_S = 420


def _workers_ready(env: dict[str, str], names: set[str]):
    """Both workers answer a ping through the broker."""
    from celery import Celery

    app = Celery(broker=env["ASIGN_CELERY_BROKER"], backend=env["ASIGN_CELERY_BACKEND"])
    try:
        replies = app.control.ping(timeout=1.0) or []
    finally:
        app.close()
    seen = {name.split("@")[0] for reply in replies for name in reply}
    return names <= seen


def _step_facts(instance, run_id: str) -> tuple[int, dict[str, int], dict[str, str]]:
    """The launcher's pid (RUN_START), {step: pid of its STEP_START}, {step: Celery worker} from the event log."""
    import dagster as dg

    launcher, pids, workers = None, {}, {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.event_type == dg.DagsterEventType.RUN_START:
            launcher = ev.pid
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            pids[ev.step_key] = ev.pid
        elif ev.event_type == dg.DagsterEventType.ENGINE_EVENT and ev.engine_event_data is not None:
            worker = ev.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                workers[ev.step_key] = worker.value
    return launcher, pids, workers


@pytest.mark.e2e
def test_celery_workers_run_every_step(tmp_path):
    redis_server = find_binary("redis-server")
    require({"redis-server (apt-get install redis-server)": redis_server})
    require_modules("dagster_celery", "redis", "celery")
    import dagster as dg

    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    stack = make_demo_stack(tmp_path / "data", DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60), sample_id=SAMPLE)
    dagster_home, asign_home, redis_dir = tmp_path / "dagster_home", tmp_path / "asign_home", tmp_path / "redis"
    for d in (dagster_home, asign_home, redis_dir):
        d.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run_config = tmp_path / "sample_run_config.yaml"
    run_config.write_text(yaml.safe_dump(RUN_CONFIG))
    port = free_port()
    env = tool_env({
        **os.environ,
        "DAGSTER_HOME": str(dagster_home), "ASIGN_HOME": str(asign_home), "ASIGN_DEVICE": "cpu",
        "ASIGN_EXECUTOR": "celery", "REDIS_PORT": str(port), "REDIS_DIR": str(redis_dir),
        "ASIGN_CELERY_BROKER": f"redis://127.0.0.1:{port}/0", "ASIGN_CELERY_BACKEND": f"redis://127.0.0.1:{port}/1",
        "MANIFEST": str(stack.manifest_path), "SAMPLE": SAMPLE, "SAMPLE_RUN_CONFIG": str(run_config),
    }, [redis_server.parent])
    for var in ("ASIGN_INBOX", "ASIGN_MANIFESTS"):
        env.pop(var, None)

    # Create the instance's sqlite storage once, before three processes (two workers and the
    # register command) open it at the same moment and race to stamp its schema.
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()
    with service(doc_command("redis"), env, tmp_path / "redis.log", lambda: port_open(port), "redis-server"):
        cpu_log, gpu_log = tmp_path / "worker_cpu.log", tmp_path / "worker_gpu.log"
        cpu = shell(doc_command("celery-worker-cpu"), env, cpu_log)
        gpu = shell(doc_command("celery-worker-gpu"), env, gpu_log)
        try:
            try:  # each worker imports torch and the code location first: slow on a busy 2-core machine
                wait_for(lambda: cpu.poll() is None and gpu.poll() is None and _workers_ready(env, {"cpu", "gpu"}), WORKER_START_S, "both celery workers answer a ping", every=2)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- cpu worker (exit {cpu.poll()}) ---\n{tail(cpu_log, 3000)}\n--- gpu worker (exit {gpu.poll()}) ---\n{tail(gpu_log, 3000)}") from None
            run(doc_command("register"), env, tmp_path / "register.log")
            launch_log = tmp_path / "launcher.log"
            launcher = shell(doc_command("celery-run"), env, launch_log)
            try:
                launcher.wait(timeout=600)
            except subprocess.TimeoutExpired:
                stop(launcher, [])
                raise AssertionError(f"celery run not done in 600 s\n{tail(launch_log)}\n--- gpu worker ---\n{tail(gpu_log)}") from None
            cpu_pids, gpu_pids = tree_pids(cpu), tree_pids(gpu)
        finally:
            left = stop(cpu, [], grace=(20, 15, 5)) + stop(gpu, [], grace=(20, 15, 5))
        assert not left, f"celery worker processes left running: {left}"

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": SAMPLE}))
        assert len(runs) == 1, runs
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS, f"{runs[0].status}\n{tail(launch_log)}\n--- cpu worker ---\n{tail(cpu_log)}"
        launcher_pid, pids, workers = _step_facts(instance, runs[0].run_id)

    assert GPU_STEPS <= set(pids) and len(pids) >= 9, sorted(pids)
    assert set(workers) == set(pids), f"steps without a Celery worker event: {set(pids) ^ set(workers)}"
    assert launcher_pid is not None and launcher_pid not in cpu_pids | gpu_pids
    for step, pid in pids.items():
        assert pid != launcher_pid and pid in cpu_pids | gpu_pids, f"{step} ran in pid {pid}, not in a worker ({cpu_pids}, {gpu_pids}); launcher {launcher_pid}"
    for step in GPU_STEPS:
        assert workers[step].startswith("gpu@") and pids[step] in gpu_pids, (step, workers[step])

    # The same manifest materialised in process, in another root: the same arrays.
    ref_root = tmp_path / "ref_home"
    Storage(ref_root).register(load_manifest(stack.manifest_path))
    ref = dg.DagsterInstance.ephemeral()
    ref.add_dynamic_partitions("samples", [SAMPLE])
    result = build_definitions(storage_root=str(ref_root), device="cpu").resolve_job_def("full_sample").execute_in_process(
        partition_key=SAMPLE, instance=ref, run_config=RUN_CONFIG
    )
    assert result.success
    ours, theirs = array_hashes(asign_home / "samples" / SAMPLE), array_hashes(ref_root / "samples" / SAMPLE)
    assert ours == theirs, {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}



def test_executor_from_env_and_gpu_queue(monkeypatch):
    """ASIGN_EXECUTOR picks the executor; every gpu-pool step carries the gpu queue tag."""
    import dagster as dg

    from asign_assets.pipeline.automation import GPU_POOL
    from asign_assets.pipeline.definitions import build_definitions, executor_from_env

    for name, expected in (("", None), ("in_process", dg.in_process_executor), ("multiprocess", dg.multiprocess_executor)):
        monkeypatch.setenv("ASIGN_EXECUTOR", name)
        assert executor_from_env() is expected
    monkeypatch.setenv("ASIGN_EXECUTOR", "celery")
    assert executor_from_env().name == "celery"
    monkeypatch.setenv("ASIGN_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="ASIGN_EXECUTOR='spark'"):
        executor_from_env()
    defs = build_definitions(storage_root="/tmp/unused-asign-root")
    queues = {k.to_user_string(): defs.resolve_assets_def(k).op.tags.get("dagster-celery/queue") for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {k for k, q in queues.items() if q == "gpu"} == {k for k in queues if defs.resolve_assets_def(k).op.pool == GPU_POOL}
    assert {"model", "imputed_volume", "embeddings"} <= {k for k, q in queues.items() if q == "gpu"}


def test_every_tested_doc_command_exists():
    """The deployment tests read these blocks from docs/deployment.md; none may go missing."""
    import re

    names = set()
    for test in Path(__file__).parent.glob("test_deploy_*.py"):
        names |= set(re.findall(r'doc_command\("([a-z0-9-]+)"\)', test.read_text()))
    assert len(names) >= 14, names
    for name in names:
        assert doc_command(name)
