"""The inbox sensor, the reprocessing schedule's staleness rules and the cluster executors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from asign_assets.assets.common import StorageResource, samples_partitions
from asign_assets.manifest import load_manifest, write_manifest
from asign_assets.ops import (
    REASONS_TAG,
    build_new_samples_sensor,
    build_reprocess_schedule,
    parse_cursor,
    partition_staleness,
    reprocess_requests,
    stale_partitions,
)
from asign_assets.storage import Storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    from asign_assets.demo import DemoConfig, make_demo_stack

    out = tmp_path_factory.mktemp("tiny_stack")
    return make_demo_stack(out, DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60), sample_id="tiny")


# --------------------------------------------------------------------------- sensor
class _Tick:
    """Runs the sensor like the daemon would: cursor carried over, partition requests applied."""

    def __init__(self, home: Path):
        self.instance = dg.DagsterInstance.ephemeral()
        self.storage = StorageResource(root=str(home))
        self.sensor = build_new_samples_sensor()
        self.cursor: str | None = None

    def __call__(self) -> dg.SensorResult:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"storage": self.storage})
        result = self.sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        for req in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result


def _absolute_copy(stack, dest: Path, **changes) -> Path:
    """The stack's manifest with absolute paths (so it can live in the inbox), optionally edited."""
    data = yaml.safe_load(write_manifest(load_manifest(stack.manifest_path), dest.with_name(".tmp-" + dest.name), relative=False).read_text())
    dest.with_name(".tmp-" + dest.name).unlink()
    data.update(changes)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_sensor_new_same_changed(tmp_path, tiny_stack):
    home = tmp_path / "home"
    tick = _Tick(home)
    # No inbox yet: the sensor creates it and skips.
    first = tick()
    assert (home / "inbox").is_dir()
    assert not first.run_requests and first.skip_reason is not None

    path = _absolute_copy(tiny_stack, home / "inbox" / "tiny.yaml")
    result = tick()
    assert len(result.run_requests) == 1
    req = result.run_requests[0]
    sha = json.loads(result.cursor)[str(path.resolve())][1]
    assert len(sha) == 64 and req.run_key == f"tiny:{sha[:12]}"
    assert req.partition_key == "tiny"
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == samples_partitions.name and list(add.partition_keys) == ["tiny"]
    assert tick.instance.get_dynamic_partitions("samples") == ["tiny"]
    # Registered with absolute paths where the assets read it.
    registered = load_manifest(home / "manifests" / "tiny.yaml")
    assert registered.sample_id == "tiny" and registered.sections[0].image == tiny_stack.manifest_path.parent / "images" / "S01.jpg"

    # The same manifest again (even touched): nothing.
    assert not tick().run_requests
    _bump_mtime(path)
    again = tick()
    assert not again.run_requests and not again.dynamic_partitions_requests

    # Changed content while the sample has no outputs yet: a new run for the existing partition.
    _absolute_copy(tiny_stack, path, description="re-scanned slides")
    _bump_mtime(path)
    changed = tick()
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].partition_key == "tiny" and changed.run_requests[0].run_key != req.run_key
    assert not changed.dynamic_partitions_requests
    assert load_manifest(home / "manifests" / "tiny.yaml").description == "re-scanned slides"

    # Once it has outputs, other content under the same sample id is refused (it would mix two
    # datasets); the registration stays byte-identical and the file is not retried until it changes.
    Storage(home).write_bytes("tiny", "sections", b"done")
    registered_bytes = (home / "manifests" / "tiny.yaml").read_bytes()
    _absolute_copy(tiny_stack, path, description="another dataset")
    _bump_mtime(path)
    refused = tick()
    assert not refused.run_requests and not refused.dynamic_partitions_requests
    assert (home / "manifests" / "tiny.yaml").read_bytes() == registered_bytes
    assert parse_cursor(refused.cursor)[str(path.resolve())][1].startswith("!")
    assert not tick().run_requests

    # A deleted manifest leaves the cursor.
    path.unlink()
    assert tick().run_requests == [] and parse_cursor(tick.cursor) == {}


def test_sensor_invalid_manifest_skipped_and_valid_one_processed(tmp_path, tiny_stack, capfd):
    home = tmp_path / "home"
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "broken.yaml").write_text("sample_id: [unclosed\n")
    good = yaml.safe_load(_absolute_copy(tiny_stack, tmp_path / "good.yaml").read_text())
    good["sections"][0]["image"] = str(tmp_path / "nope.jpg")
    (inbox / "missing_image.yml").write_text(yaml.safe_dump({**good, "sample_id": "ghost"}))
    (inbox / "notes.txt").write_text("not a manifest")
    (inbox / ".editor-swap.yaml").write_text("half written")
    # A symlinked manifest keeps its relative paths (resolved against the real file).
    (inbox / "linked.yaml").symlink_to(tiny_stack.manifest_path)

    tick = _Tick(home)
    capfd.readouterr()
    result = tick()
    assert [r.partition_key for r in result.run_requests] == ["tiny"]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["tiny"]
    warnings = "\n".join(line for line in capfd.readouterr().err.splitlines() if "WARNING" in line)
    assert "broken.yaml" in warnings and "not valid YAML" in warnings
    assert "missing_image.yml" in warnings and "nope.jpg" in warnings
    assert "notes.txt" not in warnings and "editor-swap" not in warnings
    assert not (home / "manifests" / "ghost.yaml").exists()
    cursor = parse_cursor(result.cursor)
    assert cursor[str((inbox / "broken.yaml").resolve())][1].startswith("!")

    # Not retried (nor re-logged) while unchanged.
    assert not tick().run_requests
    assert "WARNING" not in capfd.readouterr().err

    # Fixed content: picked up on the next tick.
    _absolute_copy(tiny_stack, inbox / "broken.yaml", sample_id="fixed")
    _bump_mtime(inbox / "broken.yaml")
    fixed = tick()
    assert [r.partition_key for r in fixed.run_requests] == ["fixed"]


def test_sensor_survives_garbage_cursor(tmp_path, tiny_stack):
    home = tmp_path / "home"
    _absolute_copy(tiny_stack, home / "inbox" / "a.yaml")
    tick = _Tick(home)
    tick.cursor = "{not json"
    assert len(tick().run_requests) == 1


# --------------------------------------------------------------------------- staleness
STATE = {"a_value": 1, "fail_b": False}


def _fake_assets(c_code_version: str = "1"):
    @dg.asset(partitions_def=samples_partitions, code_version="1")
    def a() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(str(STATE["a_value"])))

    @dg.asset(partitions_def=samples_partitions, code_version="1", deps=[a])
    def b() -> None:
        if STATE["fail_b"]:
            raise RuntimeError("b failed on purpose")

    @dg.asset(partitions_def=samples_partitions, code_version=c_code_version, deps=[b])
    def c() -> None:
        return None

    return [a, b, c]


def _defs(c_code_version: str = "1") -> dg.Definitions:
    job = dg.define_asset_job("full_sample", selection=dg.AssetSelection.all(), partitions_def=samples_partitions)
    return dg.Definitions(assets=_fake_assets(c_code_version), jobs=[job], schedules=[build_reprocess_schedule()])


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, pk: str, *, a_value: int = 1, fail_b: bool = False, selection=None) -> bool:
    """One full_sample run (optionally a subset of assets, as a reprocess run would be)."""
    STATE.update(a_value=a_value, fail_b=fail_b)
    try:
        job = defs.resolve_job_def("full_sample")
        return job.execute_in_process(partition_key=pk, instance=instance, raise_on_error=False, asset_selection=selection).success
    finally:
        STATE.update(a_value=1, fail_b=False)


def test_stale_partitions_and_reprocess_requests():
    _check_staleness(dg.DagsterInstance.ephemeral())


def test_reprocess_schedule_tick():
    """The schedule itself (a persistent instance: schedule contexts need an instance ref)."""
    defs = _defs("1")
    schedule = defs.resolve_schedule_def("reprocess_stale")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.job_name == "full_sample"
    repo = defs.get_repository_def()
    # Contexts are entered so the instance they open from the ref is closed again.
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, repository_def=repo) as ctx:
            assert isinstance(schedule(ctx), dg.SkipReason)
        instance.add_dynamic_partitions("samples", ["new"])
        with dg.build_schedule_context(instance=instance, repository_def=repo) as ctx:
            [req] = schedule(ctx)
        assert req.partition_key == "new" and [k.to_user_string() for k in req.asset_selection] == ["a", "b", "c"]
        assert req.tags[REASONS_TAG] == "a: never materialised; b: never materialised; c: never materialised"


def _check_staleness(instance: dg.DagsterInstance) -> None:
    current = _defs("1")
    old_code = _defs("0")
    pks = ["fresh", "upstream", "failed", "code", "new", "busy", "same_data"]
    instance.add_dynamic_partitions("samples", pks)

    assert _run(current, instance, "fresh")
    assert _run(current, instance, "upstream")
    assert _run(current, instance, "upstream", a_value=2, selection=[dg.AssetKey("a")])  # a changed alone
    assert _run(current, instance, "same_data")
    assert _run(current, instance, "same_data", selection=[dg.AssetKey("a")])  # a rerun, same data version
    assert _run(current, instance, "failed")
    assert not _run(current, instance, "failed", fail_b=True)
    assert _run(old_code, instance, "code")
    busy = instance.create_run_for_job(current.resolve_job_def("full_sample"), status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "busy"})
    assert instance.get_run_by_id(busy.run_id).status == dg.DagsterRunStatus.STARTED

    reasons = stale_partitions(instance, current, pks)
    assert set(reasons) == {"upstream", "failed", "code", "new"}
    assert reasons["upstream"] == ["b: upstream a data version changed (now 2)"]
    assert reasons["code"] == ["c: code version 0 -> 1"]
    assert len(reasons["failed"]) == 1 and "failed before materialising b, c" in reasons["failed"][0]
    assert sorted(reasons["new"]) == ["a: never materialised", "b: never materialised", "c: never materialised"]

    detail = partition_staleness(instance, current.resolve_asset_graph(), pks)
    keys = lambda pk: sorted(k.to_user_string() for k in detail[pk].assets)  # noqa: E731
    assert keys("upstream") == ["b", "c"] and keys("code") == ["c"] and keys("failed") == ["b", "c"] and keys("new") == ["a", "b", "c"]

    # The run requests ask for exactly those samples and only their stale assets.
    requests = reprocess_requests(instance, current)
    by_pk = {r.partition_key: r for r in requests}
    assert set(by_pk) == {"upstream", "failed", "code", "new"}
    assert [k.to_user_string() for k in by_pk["code"].asset_selection] == ["c"]
    assert [k.to_user_string() for k in by_pk["new"].asset_selection] == ["a", "b", "c"]
    assert by_pk["upstream"].tags[REASONS_TAG] == "b: upstream a data version changed (now 2)"
    run_keys = [r.run_key for r in requests]
    assert len(set(run_keys)) == 4 and all(k.startswith("reprocess:") for k in run_keys)

    # Once reprocessed, a sample is fresh and the schedule leaves it alone.
    assert _run(current, instance, "code", selection=[dg.AssetKey("c")])
    assert "code" not in stale_partitions(instance, current, pks)


def test_reprocess_cron_from_env(monkeypatch):
    monkeypatch.setenv("ASIGN_REPROCESS_CRON", "*/15 * * * *")
    sched = build_reprocess_schedule()
    assert sched.cron_schedule == "*/15 * * * *" and sched.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("ASIGN_REPROCESS_CRON", "off")
    assert build_reprocess_schedule().default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv("ASIGN_SENSOR_INTERVAL_S", "7")
    assert build_new_samples_sensor().minimum_interval_seconds == 7


def test_definitions_wire_sensor_and_schedule():
    from asign_assets.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root")
    sensor = defs.resolve_sensor_def("new_samples")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "full_sample"
    assert defs.resolve_schedule_def("reprocess_stale").job_name == "full_sample"


def test_gpu_steps_are_pooled_and_model_requests_a_gpu():
    """What docs/deployment.md promises about the `gpu` pool and the Kubernetes GPU request."""
    from asign_assets.assets.common import GPU_POOL, K8S_GPU_TAGS
    from asign_assets.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root")
    model = defs.resolve_assets_def("model").op
    assert model.pool == GPU_POOL == "gpu"
    limits = json.loads(model.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and model.tags["dagster-k8s/config"] == K8S_GPU_TAGS["dagster-k8s/config"]
    pooled = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys() if defs.resolve_assets_def(key).op.pool == GPU_POOL}
    assert pooled == {"embeddings", "model", "imputed_volume"}, f"update docs/deployment.md (gpu pool): {pooled}"


# --------------------------------------------------------------------------- executors
def _load_yaml(rel: str) -> dict:
    return yaml.safe_load((ROOT / "docs" / "deploy" / rel).read_text())


def test_k8s_executor_and_docs_config(monkeypatch):
    dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s not installed (pip install 'asign[cluster]')")
    from dagster._config import process_config, resolve_to_config_type

    from asign_assets.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root", executor=dagster_k8s.k8s_job_executor)
    job = defs.resolve_job_def("full_sample")
    assert job.executor_def.name == "k8s"
    dg.validate_run_config(job, _load_yaml("k8s/run_config.yaml"))
    launcher = _load_yaml("k8s/dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(resolve_to_config_type(dagster_k8s.K8sRunLauncher.config_type()), launcher["config"])
    assert checked.success, checked.errors


def test_celery_executor_and_docs_config(monkeypatch):
    monkeypatch.setenv("ASIGN_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("ASIGN_CELERY_BACKEND", "redis://127.0.0.1:6379/1")
    dagster_celery = pytest.importorskip("dagster_celery", reason="dagster-celery not installed (pip install 'asign[cluster]')")
    from asign_assets.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root", executor=dagster_celery.celery_executor)
    job = defs.resolve_job_def("full_sample")
    assert job.executor_def.name == "celery"
    dg.validate_run_config(job, _load_yaml("celery/run_config.yaml"))


def test_deploy_instance_yaml_is_valid(monkeypatch):
    """The example dagster.yaml files pass Dagster's own instance schema (no cluster needed)."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "secret")
    monkeypatch.setenv("DAGSTER_PG_HOST", "localhost")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    monkeypatch.setenv("DAGSTER_PG_DB", "dagster")
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    for rel in ("k8s/dagster.yaml", "celery/dagster.yaml"):
        checked = process_config(dagster_instance_config_schema(), _load_yaml(rel))
        assert checked.success, (rel, checked.errors)
        pools = _load_yaml(rel)["concurrency"]["pools"]
        assert pools["default_limit"] >= 1
