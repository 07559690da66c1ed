"""Operations: the inbox sensor that starts new samples and the nightly reprocessing schedule.

Both are thin wrappers around pure functions (:func:`scan_inbox`, :func:`stale_partitions`)
so their behaviour can be tested without a daemon.

* ``new_samples`` watches ``$ASIGN_HOME/inbox/`` for ``*.yaml``/``*.yml`` manifests. A new or
  changed manifest is validated, registered (copied with absolute paths to
  ``$ASIGN_HOME/manifests/<id>.yaml`` where the assets read it), its partition is added and one
  ``full_sample`` run is requested. A bad manifest (the strict loader of
  :func:`asign_assets.manifest.load_manifest`, so YAML bombs are refused unexpanded), or one
  whose ``sample_id`` is registered with other content and has outputs, is logged and skipped until it changes
  (or is touched); it never stops the sensor.
* ``reprocess_stale`` (cron ``$ASIGN_REPROCESS_CRON``, default ``0 2 * * *``) rematerialises the
  stale assets of every sample: code version changed, an upstream asset re-materialised with a
  different data version, a missing materialisation, or a failed last run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from asign_assets.assets.common import StorageResource, samples_partitions
from asign_assets.errors import AsignError
from asign_assets.manifest import Manifest, load_manifest
from asign_assets.storage import Storage, default_local_state

JOB_NAME = "full_sample"
PARTITION_TAG = "dagster/partition"
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION_PREFIX = "dagster/input_data_version/"
INPUT_EVENT_POINTER_PREFIX = "dagster/input_event_pointer/"
REASONS_TAG = "asign/reprocess_reasons"
MANIFEST_SUFFIXES = (".yaml", ".yml")
DEFAULT_SENSOR_INTERVAL_S = 30
DEFAULT_REPROCESS_CRON = "0 2 * * *"

_IN_PROGRESS = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


# --------------------------------------------------------------------------- inbox sensor
def inbox_dir(storage: Storage) -> Path:
    """``<ASIGN_HOME>/inbox``; for remote roots the inbox lives in this machine's local state."""
    override = os.environ.get("ASIGN_INBOX")
    if override:
        return Path(override).expanduser()
    base = Path(storage.root) if storage.is_local else Path(default_local_state())
    return base / "inbox"


@dataclass(frozen=True)
class InboxManifest:
    """A new or changed manifest that validated."""

    path: Path
    sha256: str
    manifest: Manifest

    @property
    def run_key(self) -> str:
        return f"{self.manifest.sample_id}:{self.sha256[:12]}"


@dataclass(frozen=True)
class RejectedManifest:
    """A new or changed manifest that did not validate (it is not retried until it changes)."""

    path: Path
    sha256: str
    reason: str


@dataclass
class InboxScan:
    accepted: list[InboxManifest] = field(default_factory=list)
    rejected: list[RejectedManifest] = field(default_factory=list)
    cursor: dict[str, list] = field(default_factory=dict)


def parse_cursor(cursor: str | None) -> dict[str, list]:
    """The sensor cursor: ``{path: [mtime, sha256]}``; anything unreadable starts afresh."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): list(v) for k, v in data.items() if isinstance(v, (list, tuple)) and len(v) == 2}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scan_inbox(inbox: Path, seen: Mapping[str, Sequence]) -> InboxScan:
    """Manifests in ``inbox`` that are new or whose content changed since ``seen``.

    A file whose mtime is unchanged is not even read; one whose mtime changed but whose
    content is the same is only re-validated if it failed before (``touch`` retries it).
    Dotfiles (editor and atomic-write temporaries) are ignored; deleted files leave the cursor.
    """
    out = InboxScan()
    if not inbox.is_dir():
        return out
    files = sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES and not p.name.startswith("."))
    for path in files:
        key = str(path.resolve())
        try:
            mtime = path.stat().st_mtime
            old = seen.get(key)
            if old is not None and float(old[0]) == mtime:
                out.cursor[key] = list(old)
                continue
            sha = _sha256(path)
        except OSError:
            continue  # vanished between listing and reading: next tick sees the truth
        out.cursor[key] = [mtime, sha]
        if old is not None and old[1] == sha:
            continue  # touched but identical and valid: nothing new to run
        try:
            manifest = load_manifest(path)
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the sensor
            out.cursor[key] = [mtime, "!" + sha]  # "!" marks content that failed validation
            reason = str(exc) if isinstance(exc, (AsignError, ValueError, OSError)) else f"unexpected {type(exc).__name__}: {exc}"
            out.rejected.append(RejectedManifest(path, sha, reason))
            continue
        out.accepted.append(InboxManifest(path, sha, manifest))
    return out


def _sensor_interval() -> int:
    try:
        return max(1, int(os.environ.get("ASIGN_SENSOR_INTERVAL_S", DEFAULT_SENSOR_INTERVAL_S)))
    except ValueError:
        return DEFAULT_SENSOR_INTERVAL_S


def _new_samples_fn(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    store = storage.get()
    inbox = inbox_dir(store)
    try:
        inbox.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        context.log.warning(f"new_samples: cannot create the inbox {inbox}: {exc}")
        return dg.SensorResult(skip_reason=f"inbox {inbox} unavailable: {exc}", cursor=context.cursor)
    scan = scan_inbox(inbox, parse_cursor(context.cursor))
    for bad in scan.rejected:
        context.log.warning(f"new_samples: skipping {bad.path.name}: {bad.reason} (fix it, or touch it to retry)")
    run_requests: list[dg.RunRequest] = []
    new_ids: list[str] = []
    by_sample: dict[str, InboxManifest] = {}
    for item in scan.accepted:
        sid = item.manifest.sample_id
        if sid in by_sample:
            context.log.warning(f"new_samples: {item.path.name} and {by_sample[sid].path.name} both define sample {sid!r}; using {item.path.name}")
        by_sample[sid] = item
    for sid, item in by_sample.items():
        try:
            store.register(item.manifest)
        except (AsignError, OSError, ValueError) as exc:
            context.log.warning(f"new_samples: could not register {item.path.name}: {exc}")
            key = str(item.path.resolve())
            scan.cursor[key] = [scan.cursor[key][0], "!" + item.sha256]
            continue
        if sid not in new_ids and not context.instance.has_dynamic_partition(samples_partitions.name, sid):
            new_ids.append(sid)
        context.log.info(f"new_samples: {item.path.name} -> sample {sid!r}, run key {item.run_key}")
        run_requests.append(
            dg.RunRequest(run_key=item.run_key, partition_key=sid, tags={"asign/manifest": str(item.path), "asign/manifest_sha256": item.sha256})
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[samples_partitions.build_add_request(new_ids)] if new_ids else [],
        cursor=json.dumps(scan.cursor, sort_keys=True),
        skip_reason=None if run_requests else (
            f"{len(scan.rejected)} invalid manifest(s) in {inbox} skipped (see the tick log)" if scan.rejected else f"no new or changed manifests in {inbox}"
        ),
    )


def build_new_samples_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="new_samples",
        job_name=JOB_NAME,
        minimum_interval_seconds=_sensor_interval(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts a full_sample run for each new or changed manifest dropped in $ASIGN_HOME/inbox/.",
    )
    def new_samples(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        return _new_samples_fn(context, storage)

    return new_samples


# --------------------------------------------------------------------------- staleness
@dataclass
class PartitionStaleness:
    """Why a sample is stale and which assets must be rematerialised (stale ones + downstream)."""

    reasons: list[str] = field(default_factory=list)
    assets: set[dg.AssetKey] = field(default_factory=set)

    def run_key(self, partition_key: str) -> str:
        digest = hashlib.sha256("\n".join(sorted(self.reasons)).encode()).hexdigest()[:12]
        return f"reprocess:{partition_key}:{digest}"


def _asset_graph(asset_graph_or_defs):
    if isinstance(asset_graph_or_defs, dg.Definitions):
        return asset_graph_or_defs.resolve_asset_graph()
    if isinstance(asset_graph_or_defs, dg.RepositoryDefinition):
        return asset_graph_or_defs.asset_graph
    return asset_graph_or_defs


def _sample_assets(graph) -> list[dg.AssetKey]:
    """Materialisable assets partitioned by samples, upstream first."""
    keys = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        pdef = node.partitions_def
        if node.is_materializable and isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name == samples_partitions.name:
            keys.append(key)
    return keys


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, pk: str):
    res = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[pk]), limit=1)
    return res.records[0] if res.records else None


def _tags(record) -> Mapping[str, str]:
    mat = record.asset_materialization if record is not None else None
    return (mat.tags or {}) if mat is not None else {}


def partition_staleness(instance: dg.DagsterInstance, asset_graph_or_defs, partition_keys: Iterable[str], job_name: str = JOB_NAME) -> dict[str, PartitionStaleness]:
    """Per sample: reasons it is stale and the assets to rerun; fresh or busy samples are absent.

    An asset of a sample is stale when it was never materialised, its code version differs
    from the one recorded on its latest materialisation, an upstream asset's current data
    version differs from the one it was computed from (or, lacking provenance, the upstream was
    materialised after it), or the sample's last ``job_name`` run failed before materialising it.
    Samples with a run queued or in progress are left alone.
    """
    graph = _asset_graph(asset_graph_or_defs)
    keys = _sample_assets(graph)
    key_set = set(keys)
    out: dict[str, PartitionStaleness] = {}
    for pk in partition_keys:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags={PARTITION_TAG: pk}), limit=1)
        last_run = runs[0] if runs else None
        if last_run is not None and last_run.status in _IN_PROGRESS:
            continue
        latest = {k: _latest(instance, k, pk) for k in keys}
        st = PartitionStaleness()
        for k in keys:
            name = k.to_user_string()
            rec = latest[k]
            if rec is None:
                st.reasons.append(f"{name}: never materialised")
                st.assets.add(k)
                continue
            tags = _tags(rec)
            code = graph.get(k).code_version
            recorded = tags.get(CODE_VERSION_TAG)
            if code is not None and recorded != code:
                st.reasons.append(f"{name}: code version {recorded} -> {code}")
                st.assets.add(k)
            for parent in sorted(graph.get(k).parent_keys & key_set, key=lambda x: x.to_user_string()):
                prec = latest[parent]
                if prec is None:
                    continue  # reported above as never materialised
                pname = parent.to_user_string()
                if tags.get(INPUT_EVENT_POINTER_PREFIX + pname) == str(prec.storage_id):
                    continue  # computed from exactly the upstream's latest materialisation
                used = tags.get(INPUT_DATA_VERSION_PREFIX + pname)
                current = _tags(prec).get(DATA_VERSION_TAG)
                if used is not None and current is not None:
                    # Partitioned inputs record sha256 of the upstream partition's data version.
                    if used not in (current, hashlib.sha256(current.encode()).hexdigest()):
                        st.reasons.append(f"{name}: upstream {pname} data version changed (now {current[:12]})")
                        st.assets.add(k)
                elif prec.storage_id > rec.storage_id:
                    st.reasons.append(f"{name}: upstream {pname} materialised later")
                    st.assets.add(k)
        if last_run is not None and last_run.status == dg.DagsterRunStatus.FAILURE:
            planned = set(last_run.asset_selection) & key_set if last_run.asset_selection else key_set
            missed = [k for k in keys if k in planned and (latest[k] is None or latest[k].run_id != last_run.run_id)]
            if missed:
                st.reasons.append(f"last run {last_run.run_id[:8]} failed before materialising {', '.join(k.to_user_string() for k in missed)}")
                st.assets.update(missed)
        if st.assets:
            todo = list(st.assets)
            while todo:  # everything downstream of a stale asset is recomputed too
                for child in graph.get(todo.pop()).child_keys:
                    if child in key_set and child not in st.assets:
                        st.assets.add(child)
                        todo.append(child)
            out[pk] = st
    return out


def stale_partitions(instance: dg.DagsterInstance, asset_graph_or_defs, partition_keys: Iterable[str], job_name: str = JOB_NAME) -> dict[str, list[str]]:
    """``{sample: [reasons]}`` for the stale samples among ``partition_keys`` (see partition_staleness)."""
    return {pk: st.reasons for pk, st in partition_staleness(instance, asset_graph_or_defs, partition_keys, job_name).items()}


def reprocess_requests(instance: dg.DagsterInstance, asset_graph_or_defs, partition_keys: Iterable[str] | None = None) -> list[dg.RunRequest]:
    """One run request per stale sample, selecting only its stale assets and their downstream."""
    if partition_keys is None:
        partition_keys = instance.get_dynamic_partitions(samples_partitions.name)
    graph = _asset_graph(asset_graph_or_defs)
    order = {k: i for i, k in enumerate(graph.toposorted_asset_keys)}
    requests = []
    for pk, st in partition_staleness(instance, graph, partition_keys).items():
        reasons = "; ".join(st.reasons)
        requests.append(
            dg.RunRequest(
                run_key=st.run_key(pk),
                partition_key=pk,
                asset_selection=sorted(st.assets, key=order.__getitem__),
                tags={REASONS_TAG: reasons if len(reasons) <= 1000 else reasons[:997] + "..."},
            )
        )
    return requests


def _reprocess_cron() -> tuple[str, dg.DefaultScheduleStatus]:
    cron = os.environ.get("ASIGN_REPROCESS_CRON", DEFAULT_REPROCESS_CRON).strip()
    if cron.lower() in ("", "off", "none", "disabled"):
        return DEFAULT_REPROCESS_CRON, dg.DefaultScheduleStatus.STOPPED
    return cron, dg.DefaultScheduleStatus.RUNNING


def build_reprocess_schedule() -> dg.ScheduleDefinition:
    cron, status = _reprocess_cron()

    @dg.schedule(
        cron_schedule=cron,
        name="reprocess_stale",
        job_name=JOB_NAME,
        default_status=status,
        execution_timezone=os.environ.get("ASIGN_REPROCESS_TZ") or None,
        description="Rematerialises stale assets of every sample (code version changed, upstream changed, "
        "never materialised, or last run failed). Cron from $ASIGN_REPROCESS_CRON ('off' stops it).",
    )
    def reprocess_stale(context: dg.ScheduleEvaluationContext):
        requests = reprocess_requests(context.instance, context.repository_def.asset_graph)
        for r in requests:
            context.log.info(f"reprocess_stale: {r.partition_key}: {r.tags[REASONS_TAG]}")
        if not requests:
            return dg.SkipReason("every sample is up to date")
        return requests

    return reprocess_stale


def schedules_and_sensors() -> tuple[list, list]:
    """Called by definitions.build_definitions; env variables are read at load time."""
    return [build_reprocess_schedule()], [build_new_samples_sensor()]
