"""A shared instance on a real Postgres: the daemon runs dropped manifests; pools hold under load.

Starts a throwaway Debian `postgresql` cluster (initdb in a temporary folder, 127.0.0.1, a
free port; as `nobody` when the tests run as root), puts docs/deploy/celery/dagster.yaml in
DAGSTER_HOME and runs `dagster-daemon` on the code location: the commands of
docs/deployment.md, verbatim. Skips, naming what is missing, without the Postgres binaries or
dagster-postgres; .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from _procs import (  # noqa: E402  (tests/ helper)
    ROOT, chown_for, doc_command, free_port, port_open, postgres_bin_dir, require, require_modules, run, service, tail, tool_env,
    unprivileged_user, wait_for,
)

GPU_STEPS = {"embeddings", "model", "imputed_volume"}
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def postgres():
    """A running throwaway cluster: (environment with DAGSTER_PG_* and PATH, log folder)."""
    bin_dir = postgres_bin_dir()
    require({"postgresql (apt-get install postgresql: initdb, pg_ctl)": bin_dir})
    require_modules("dagster_postgres", "psycopg2")
    user = unprivileged_user()
    if user is not None:
        require({"runuser (util-linux), to run Postgres as nobody": shutil.which("runuser")})
    pgdata_parent = Path(tempfile.mkdtemp(prefix="asign-pg-"))  # under /tmp: reachable for `nobody`
    pgdata = pgdata_parent / "data"
    port = free_port()
    env = tool_env({**os.environ, "PGDATA": str(pgdata), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port),
                    "DAGSTER_PG_PASSWORD": "unused-with-trust"}, [bin_dir])
    log = pgdata_parent / "commands.log"
    chown_for(pgdata_parent, user)
    try:
        run(doc_command("postgres-start"), env, log, cwd=pgdata_parent, user=user, timeout=120)
        assert port_open(port)
        yield env, user, log
    finally:
        if (pgdata / "postmaster.pid").exists():
            run(doc_command("postgres-stop"), env, log, cwd=pgdata_parent, user=user, timeout=60)
        wait_for(lambda: not port_open(port), 30, "postgres stopped")
        shutil.rmtree(pgdata_parent, ignore_errors=True)


def _instance_env(postgres, tmp_path: Path, db: str, monkeypatch) -> tuple[dict[str, str], Path, Path]:
    """A database of its own, DAGSTER_HOME with the docs' dagster.yaml, ASIGN_HOME with an inbox."""
    base, user, log = postgres
    env = {**base, "DAGSTER_PG_DB": db}
    run(doc_command("postgres-db"), env, log, cwd=Path(base["PGDATA"]).parent, user=user)
    dagster_home, asign_home = tmp_path / "dagster_home", tmp_path / "asign_home"
    dagster_home.mkdir()
    (asign_home / "inbox").mkdir(parents=True)
    env.update({"DAGSTER_HOME": str(dagster_home), "ASIGN_HOME": str(asign_home), "ASIGN_DEVICE": "cpu", "ASIGN_EXECUTOR": "in_process",
                "ASIGN_SENSOR_INTERVAL_S": "5", "ASIGN_OBSERVE_CRON": "off"})
    for var in ("ASIGN_INBOX", "ASIGN_MANIFESTS"):
        env.pop(var, None)
    run(doc_command("instance"), env, tmp_path / "instance.log")
    for key in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(key, env[key])  # the same yaml, read by this process
    return env, dagster_home, asign_home


def _drop_demo(tmp_path: Path, inbox: Path, sample_id: str, seed: int) -> None:
    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest, write_manifest

    stack = make_demo_stack(tmp_path / "data" / sample_id, DemoConfig(n_sections=2, spots_per_section=40, image_px=256, n_genes=40, seed=seed), sample_id=sample_id)
    staged = write_manifest(load_manifest(stack.manifest_path), tmp_path / f"{sample_id}.yaml", relative=False)
    os.replace(staged, inbox / f"{sample_id}.yaml")  # atomic drop


def _daemon_runs(env: dict[str, str], dagster_home: Path, tmp_path: Path, samples: list[str]):
    """Run the daemon until every sample's run has finished; returns {sample: run} from Postgres."""
    import dagster as dg

    log = tmp_path / "daemon.log"
    with service(doc_command("daemon"), env, log, lambda: True, "dagster-daemon", grace=(30, 15, 5)) as daemon:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            def finished():
                runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "new_samples"}))}
                done = len(runs) == len(samples) and all(r.is_finished for r in runs.values())
                return runs if done else None

            runs = wait_for(finished, RUN_TIMEOUT_S, f"runs of {samples} finished", alive=daemon, log=log, every=3)
            failed = {s: r.status for s, r in runs.items() if r.status != dg.DagsterRunStatus.SUCCESS}
            assert not failed, f"{failed}\n{tail(log)}"
            return runs, {s: list(instance.all_logs(r.run_id)) for s, r in runs.items()}


def _sql(env: dict[str, str], query: str, *args) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=int(env["DAGSTER_PG_PORT"]), user="dagster", dbname=env["DAGSTER_PG_DB"])
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.e2e
def test_daemon_runs_inbox_manifest_on_postgres(postgres, tmp_path, monkeypatch):
    env, dagster_home, asign_home = _instance_env(postgres, tmp_path, "dagster_inbox", monkeypatch)
    conf = yaml.safe_load((dagster_home / "dagster.yaml").read_text())
    assert conf == yaml.safe_load((ROOT / "docs" / "deploy" / "celery" / "dagster.yaml").read_text()) and "postgres" in conf["storage"]
    _drop_demo(tmp_path, asign_home / "inbox", "pg_demo", seed=0)
    runs, _ = _daemon_runs(env, dagster_home, tmp_path, ["pg_demo"])
    run_id = runs["pg_demo"].run_id

    # The run, its materialisations and the sensor's ticks, read back from Postgres itself.
    rows = _sql(env, "SELECT r.status, r.pipeline_name FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                     "WHERE t.key = 'dagster/partition' AND t.value = %s", "pg_demo")
    assert rows == [("SUCCESS", "full_sample")]
    materialised = {k for (k,) in _sql(env, "SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'", run_id)}
    assert {'["imputed_volume"]', '["model"]', '["sections"]'} <= materialised, materialised
    ticks = _sql(env, "SELECT status FROM job_ticks WHERE type = 'SENSOR' AND tick_body LIKE %s", '%"new_samples"%')
    assert ("SUCCESS",) in ticks, ticks
    assert (asign_home / "samples" / "pg_demo" / "imputed_volume.h5ad").is_file()
    assert not (dagster_home / "history").exists(), "the instance should not have fallen back to SQLite"


@pytest.mark.e2e
def test_three_samples_run_concurrently_gpu_steps_do_not(postgres, tmp_path, monkeypatch):
    env, dagster_home, asign_home = _instance_env(postgres, tmp_path, "dagster_pools", monkeypatch)
    conf = yaml.safe_load((dagster_home / "dagster.yaml").read_text())["concurrency"]
    assert conf["runs"]["max_concurrent_runs"] >= 3 and conf["pools"]["default_limit"] == 1 and conf["pools"]["granularity"] == "op"
    samples = ["conc_a", "conc_b", "conc_c"]
    for seed, sid in enumerate(samples):  # all three in the inbox before the first sensor tick
        _drop_demo(tmp_path, asign_home / "inbox", sid, seed)
    _, logs = _daemon_runs(env, dagster_home, tmp_path, samples)

    import dagster as dg

    spans, gpu = {}, []
    for sid, records in logs.items():
        at = {}
        for rec in records:
            ev = rec.dagster_event
            if ev is None:
                continue
            if ev.event_type in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS):
                at[ev.event_type] = rec.timestamp
            elif ev.step_key in GPU_STEPS and ev.event_type in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS):
                at[(ev.step_key, ev.event_type)] = rec.timestamp
        spans[sid] = (at[dg.DagsterEventType.RUN_START], at[dg.DagsterEventType.RUN_SUCCESS])
        gpu += [(at[(s, dg.DagsterEventType.STEP_START)], at[(s, dg.DagsterEventType.STEP_SUCCESS)], f"{sid}/{s}") for s in GPU_STEPS]
    # All three runs were in progress at one moment: the latest start precedes the earliest end.
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
    gpu.sort()
    assert len(gpu) == 9
    overlaps = [(a[2], b[2]) for a, b in zip(gpu, gpu[1:]) if b[0] < a[1]]
    assert not overlaps, f"gpu-pool steps overlapped: {overlaps}"
