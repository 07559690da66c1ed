"""The inbox sensor, declarative reprocessing, `asign run`'s stale/missing plan and the cluster executors."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from asign_assets.pipeline.automation import REPROCESS, samples_partitions

from asign_assets.pipeline.resources import StorageResource
from asign_assets.ingest.manifest import load_manifest, write_manifest
from asign_assets.pipeline.sensors import build_new_samples_sensor, build_observe_schedule, parse_cursor
from asign_assets.storage.store import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    from asign_assets.importers.demo import DemoConfig, make_demo_stack

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
    with Storage(home).write("tiny", "sections") as tmp:
        tmp.write_bytes(b"done")
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
    @dg.asset(partitions_def=samples_partitions, code_version="1", automation_condition=REPROCESS)
    def a() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(str(STATE["a_value"])))

    @dg.asset(partitions_def=samples_partitions, code_version="1", deps=[a], automation_condition=REPROCESS)
    def b() -> dg.MaterializeResult:
        if STATE["fail_b"]:
            raise RuntimeError("b failed")
        return dg.MaterializeResult(data_version=dg.DataVersion("b"))

    @dg.asset(partitions_def=samples_partitions, code_version=c_code_version, deps=[b], automation_condition=REPROCESS)
    def c() -> None:
        return None

    return [a, b, c]


def _defs(c_code_version: str = "1") -> dg.Definitions:
    job = dg.define_asset_job("full_sample", selection=dg.AssetSelection.all())
    return dg.Definitions(assets=_fake_assets(c_code_version), jobs=[job])


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, pk: str, *, a_value: int = 1, selection=None) -> bool:
    STATE.update(a_value=a_value)
    try:
        job = defs.resolve_job_def("full_sample")
        return job.execute_in_process(partition_key=pk, instance=instance, raise_on_error=False, asset_selection=selection).success
    finally:
        STATE.update(a_value=1)


def _requested(result) -> dict[str, set[str]]:
    return {k.to_user_string(): set(result.get_requested_partitions(k)) for k in map(dg.AssetKey, "abc") if result.get_requested_partitions(k)}


def test_automation_requests_code_and_upstream_data_changes_only():
    """REPROCESS (every asset's AutomationCondition): a new upstream data version or a new code
    version requests the asset for that sample; a rerun with the same data version does not."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p", "q"])
    current = _defs("1")
    assert _run(current, instance, "p") and _run(current, instance, "q")
    res = dg.evaluate_automation_conditions(defs=current, instance=instance, asset_selection=dg.AssetSelection.all())
    assert _requested(res) == {}
    assert _run(current, instance, "p", a_value=2, selection=[dg.AssetKey("a")])  # new data version of a for p
    assert _run(current, instance, "q", selection=[dg.AssetKey("a")])  # same data version of a for q
    res = dg.evaluate_automation_conditions(defs=current, instance=instance, asset_selection=dg.AssetSelection.all(), cursor=res.cursor)
    assert _requested(res) == {"b": {"p"}}  # c follows once b has new data, on a later tick
    res = dg.evaluate_automation_conditions(defs=_defs("2"), instance=instance, asset_selection=dg.AssetSelection.all(), cursor=res.cursor)
    assert _requested(res).get("c") == {"p", "q"}


def test_automation_retries_a_failed_sample_once_after_the_nightly_cron_tick():
    """REPROCESS: a sample whose run failed is requested again on the first evaluation after
    NIGHTLY_CRON (02:00 UTC), not before it and not on every tick; a sample that succeeded is not."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p", "q"])
    current = _defs("1")
    assert _run(current, instance, "q")
    STATE["fail_b"] = True
    try:
        assert not _run(current, instance, "p")
    finally:
        STATE["fail_b"] = False
    day = datetime.datetime(2026, 3, 4, tzinfo=datetime.timezone.utc)
    res = None
    for hour, minute, expected in [(1, 0, {}), (1, 59, {}), (2, 1, {"b": {"p"}, "c": {"p"}}), (2, 2, {}), (14, 0, {})]:
        at = day.replace(hour=hour, minute=minute)
        res = dg.evaluate_automation_conditions(defs=current, instance=instance, asset_selection=dg.AssetSelection.all(), evaluation_time=at, cursor=res.cursor if res else None)
        assert _requested(res) == expected, at


def test_plan_sample_evaluates_dagster_automation_conditions(tmp_path):
    """`asign run`'s plan: Dagster's conditions (missing, new upstream data version, new code
    version) evaluated tick by tick, each run absorbed by the tick after it, plus run config."""
    from asign_assets.pipeline.freshness import absorb_run, plan_sample

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p"])
    current, store = _defs("1"), Storage(tmp_path)

    def plan(defs=current, **kw) -> dict[str, str]:
        return {k.to_user_string(): why for k, why in plan_sample(instance, defs, store, "p", **kw).run.items()}

    def run(defs=current, **kw) -> None:
        assert _run(defs, instance, "p", **kw)
        absorb_run(instance, defs, "p")

    assert plan() == {"a": "never materialised", "b": "never materialised", "c": "never materialised"}
    run()
    skipped = plan_sample(instance, current, store, "p")
    assert skipped.run == {} and {k.to_user_string() for k in skipped.skip} == {"a", "b", "c"}
    assert set(plan(force=True)) == {"a", "b", "c"}
    run(a_value=2, selection=[dg.AssetKey("a")])  # a new data version of a: b and c are stale
    assert plan() == {"b": "stale: new dependency data version", "c": "upstream b will change"}
    assert plan() == {"b": "stale: new dependency data version", "c": "upstream b will change"}  # until b runs
    assert _run(current, instance, "p", a_value=3, selection=[dg.AssetKey("a")])  # seen by the plan's own tick: named
    assert plan() == {"b": "stale: new dependency data version (a)", "c": "upstream b will change"}
    run(selection=[dg.AssetKey("b"), dg.AssetKey("c")])
    assert plan() == {}
    assert plan(_defs("2")) == {"c": "stale: has a new code version"}
    run(_defs("2"), selection=[dg.AssetKey("c")])
    assert plan(_defs("2")) == {}
    other = {"ops": {"b": {"config": {"epochs": 3}}}}  # Dagster does not version config; the plan compares it
    assert plan(_defs("2"), run_config=other) == {"b": "run config changed ({} -> {'epochs': 3})", "c": "upstream b will change"}


def test_plan_sample_recomputes_outputs_it_has_no_record_to_compare_with(tmp_path):
    """Outputs made outside `asign run` (the UI, the daemon, an older asign) before the sample's
    first plan cannot be dated against code or upstream changes: recomputed once, then trusted."""
    from asign_assets.pipeline.freshness import FIRST, absorb_run, plan_sample

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p"])
    current, store = _defs("2"), Storage(tmp_path)
    assert _run(_defs("1"), instance, "p")  # made by code version 1, outside asign run
    first = plan_sample(instance, current, store, "p")
    assert {k.to_user_string(): why for k, why in first.run.items()} == {"a": FIRST, "b": FIRST, "c": FIRST}
    assert _run(current, instance, "p")
    absorb_run(instance, current, "p")
    assert plan_sample(instance, current, store, "p").run == {}


def test_plan_sample_reruns_a_failed_asset_and_whatever_it_left_missing(tmp_path):
    from asign_assets.pipeline.freshness import absorb_run, plan_sample

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p"])
    current, store = _defs("1"), Storage(tmp_path)
    assert _run(current, instance, "p")
    absorb_run(instance, current, "p")
    STATE["fail_b"] = True
    try:
        assert not _run(current, instance, "p", a_value=2)
    finally:
        STATE["fail_b"] = False
    absorb_run(instance, current, "p")
    run = {k.to_user_string(): why for k, why in plan_sample(instance, current, store, "p").run.items()}
    assert run == {"b": "its last run failed", "c": "its last run failed"}  # Dagster: c was in the failed run, never executed


def test_observe_cron_from_env(monkeypatch):
    monkeypatch.setenv("ASIGN_OBSERVE_CRON", "*/15 * * * *")
    sched = build_observe_schedule()
    assert sched.cron_schedule == "*/15 * * * *" and sched.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("ASIGN_OBSERVE_CRON", "off")
    assert build_observe_schedule().default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv("ASIGN_SENSOR_INTERVAL_S", "7")
    assert build_new_samples_sensor().minimum_interval_seconds == 7


def test_definitions_wire_sensor_schedule_automation_and_checks():
    from asign_assets.pipeline.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root")
    sensor = defs.resolve_sensor_def("new_samples")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "full_sample"
    assert defs.resolve_schedule_def("observe_inputs").job_name == "observe_inputs"
    graph = defs.resolve_asset_graph()
    assert all(graph.get(k).automation_condition is REPROCESS for k in graph.materializable_asset_keys)
    assert {k.to_user_string() for k in graph.observable_asset_keys} == {"raw_inputs", "raw_truth"}
    assert len(list(graph.asset_check_keys)) >= 5


def test_observe_schedule_requests_one_observation_per_sample():
    from asign_assets.pipeline.definitions import build_definitions

    defs = build_definitions(storage_root="/tmp/unused-asign-root")
    schedule = defs.resolve_schedule_def("observe_inputs")
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as ctx:
            assert isinstance(schedule(ctx), dg.SkipReason)
        instance.add_dynamic_partitions("samples", ["s1", "s2"])
        with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as ctx:
            assert sorted(r.partition_key for r in schedule(ctx)) == ["s1", "s2"]


def test_gpu_steps_are_pooled_and_model_requests_a_gpu():
    """What docs/deployment.md promises about the `gpu` pool and the Kubernetes GPU request."""
    from asign_assets.pipeline.automation import GPU_POOL, K8S_GPU_TAGS
    from asign_assets.pipeline.definitions import build_definitions

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

    from asign_assets.pipeline.definitions import build_definitions

    monkeypatch.setenv("ASIGN_DEVICE", "auto")  # the device resource reads it through dg.EnvVar
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
    from asign_assets.pipeline.definitions import build_definitions

    monkeypatch.setenv("ASIGN_DEVICE", "auto")  # the device resource reads it through dg.EnvVar
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


def test_plan_sample_reruns_an_asset_whose_blocking_check_failed(tmp_path):
    """A failed blocking check (e.g. registration_dice) is not trusted by a later `asign run`."""
    from asign_assets.pipeline.freshness import absorb_run, plan_sample

    dice = {"ok": False}

    @dg.asset(partitions_def=samples_partitions, code_version="1",
              check_specs=[dg.AssetCheckSpec("good", asset="r", blocking=True)])
    def r() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("r"), check_results=[dg.AssetCheckResult(check_name="good", passed=dice["ok"])])

    @dg.asset(partitions_def=samples_partitions, code_version="1", deps=[r])
    def after() -> None:
        return None

    defs = dg.Definitions(assets=[r, after], jobs=[dg.define_asset_job("full_sample", selection=dg.AssetSelection.all())])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", ["p"])
    job = defs.resolve_job_def("full_sample")
    assert not job.execute_in_process(partition_key="p", instance=instance, raise_on_error=False).success
    absorb_run(instance, defs, "p")
    run = {k.to_user_string(): why for k, why in plan_sample(instance, defs, Storage(tmp_path), "p").run.items()}
    assert run == {"r": "blocking check good failed last time", "after": "never materialised"}
    dice["ok"] = True
    assert job.execute_in_process(partition_key="p", instance=instance, raise_on_error=False).success
    absorb_run(instance, defs, "p")
    assert plan_sample(instance, defs, Storage(tmp_path), "p").run == {}
