"""Operations: the inbox sensor that starts new samples and the schedule that observes raw inputs.

The sensor is a thin wrapper around a pure function (:func:`scan_inbox`), testable without a daemon.

* ``new_samples`` watches ``$ASIGN_HOME/inbox/`` for ``*.yaml``/``*.yml`` manifests. A new or
  changed manifest is validated, registered (copied with absolute paths to
  ``$ASIGN_HOME/manifests/<id>.yaml`` where the assets read it), its partition is added and one
  ``full_sample`` run is requested. A bad manifest (the strict loader of
  :func:`asign_assets.ingest.manifest.load_manifest`, so YAML bombs are refused unexpanded), or one
  whose ``sample_id`` is registered with other content and has outputs, is logged and skipped until it changes
  (or is touched); it never stops the sensor.
* ``observe_inputs`` (cron ``$ASIGN_OBSERVE_CRON``, default nightly ``0 2 * * *``) observes every sample's raw
  files. Reprocessing itself is declarative: each asset's ``AutomationCondition``
  (:data:`asign_assets.pipeline.automation.REPROCESS`) requests it when its code version or an
  upstream data version changed, and retries failed or missing assets after the nightly cron
  tick; Dagster's automation sensor evaluates them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from asign_assets.pipeline.automation import NIGHTLY_CRON, samples_partitions

from asign_assets.pipeline.resources import StorageResource
from asign_assets.errors import AsignError
from asign_assets.storage.input_digest import sha256_file
from asign_assets.ingest.manifest import Manifest, load_manifest
from asign_assets.runtime.home import default_local_state
from asign_assets.storage.store import Storage

JOB_NAME = "full_sample"
OBSERVE_JOB_NAME = "observe_inputs"
MANIFEST_SUFFIXES = (".yaml", ".yml")
DEFAULT_SENSOR_INTERVAL_S = 30
DEFAULT_OBSERVE_CRON = NIGHTLY_CRON  # edited inputs are reprocessed out of working hours


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
            sha = sha256_file(path)
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


# --------------------------------------------------------------------------- observations
def _observe_cron() -> tuple[str, dg.DefaultScheduleStatus]:
    cron = os.environ.get("ASIGN_OBSERVE_CRON", DEFAULT_OBSERVE_CRON).strip()
    if cron.lower() in ("", "off", "none", "disabled"):
        return DEFAULT_OBSERVE_CRON, dg.DefaultScheduleStatus.STOPPED
    return cron, dg.DefaultScheduleStatus.RUNNING


def build_observe_schedule() -> dg.ScheduleDefinition:
    """Observes every sample's raw files on a cron; a changed digest makes the automation
    conditions (assets.common.REPROCESS) rematerialise what depends on it."""
    cron, status = _observe_cron()

    @dg.schedule(
        cron_schedule=cron,
        name="observe_inputs",
        job_name=OBSERVE_JOB_NAME,
        default_status=status,
        execution_timezone=os.environ.get("ASIGN_OBSERVE_TZ") or None,
        description="Observes each sample's raw inputs and truth (file digests, cached by size and mtime), so edited "
        "files make the assets that read them stale. Cron from $ASIGN_OBSERVE_CRON ('off' stops it).",
    )
    def observe_inputs(context: dg.ScheduleEvaluationContext):
        keys = context.instance.get_dynamic_partitions(samples_partitions.name)
        if not keys:
            return dg.SkipReason("no samples registered")
        return [dg.RunRequest(partition_key=pk) for pk in keys]

    return observe_inputs


def schedules_and_sensors() -> tuple[list, list]:
    """Called by definitions.build_definitions; env variables are read at load time."""
    return [build_observe_schedule()], [build_new_samples_sensor()]
