"""Shared pieces of the thin asset layer: partitions, resources, metadata helpers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil

from asign_assets.ingest.manifest import Manifest
from asign_assets.runtime.home import default_home
from asign_assets.storage.store import Storage

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


def sample_io(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, storage: "StorageResource") -> tuple[Storage, str]:
    """(storage, sample id) of the running asset or check."""
    return storage.get(), context.partition_key


class StorageResource(dg.ConfigurableResource):
    """Where assets live: a local folder or an fsspec URL. Empty means $ASIGN_HOME or ~/.asign."""

    root: str = ""

    def get(self) -> Storage:
        return Storage(self.root or default_home())


class DeviceResource(dg.ConfigurableResource):
    """The only place a compute device is chosen: ``auto``, ``cpu`` or ``cuda[:N]``."""

    device: str = "auto"

    def torch_device(self):
        from asign_assets.runtime.device import resolve_device

        return resolve_device(self.device)


def _current_manifest_digest() -> str | None:
    """Digest of the registered manifest of the running asset's sample (None outside a run)."""
    try:
        context = dg.AssetExecutionContext.get()
        return context.resources.storage.get().registered_digest(context.partition_key, strict=False)
    except (dg.DagsterInvariantViolationError, dg.DagsterInvalidDefinitionError, AttributeError):
        return None


@dataclass
class StageMonitor:
    """Wall time and peak RSS of one asset computation (sampled in a thread), and the digest
    of the manifest it was built from (read when the computation starts)."""

    interval_s: float = 0.05
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    manifest_digest: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            except psutil.Error:
                rss = 0
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
            self._stop.wait(self.interval_s)

    @contextlib.contextmanager
    def run(self) -> Iterator["StageMonitor"]:
        self.manifest_digest = _current_manifest_digest()
        thread = threading.Thread(target=self._poll, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        try:
            yield self
        finally:
            self.seconds = time.perf_counter() - t0
            self._stop.set()
            thread.join()

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": dg.MetadataValue.float(round(self.seconds, 3)), "peak_rss_mb": dg.MetadataValue.float(round(self.peak_rss_mb, 1))}
        if self.manifest_digest is not None:
            out["manifest_digest"] = self.manifest_digest
        return out


def load_manifest_for(context: dg.AssetExecutionContext, storage: Storage) -> Manifest:
    """The partition's registered manifest, without truth (only evaluation sees truth)."""
    return storage.load_registered(context.partition_key).without_truth()


def digest_files(paths: list[Path], extra: Any = None) -> str:
    """Content hash used as the asset's data version (drives staleness downstream)."""
    h = hashlib.sha256()
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:20]


def digest_arrays(*arrays: Any, extra: Any = None) -> str:
    """Content hash of numpy arrays (and a JSON-able extra), for data versions."""
    import numpy as np

    h = hashlib.sha256()
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def path_meta(storage: Storage, sample_id: str, name: str) -> dg.MetadataValue:
    uri = storage.sample_uri(sample_id, name)
    return dg.MetadataValue.path(uri)


def md_table(rows: list[dict[str, Any]], floatfmt: str = ".3f") -> str:
    """A small markdown table for Dagster metadata."""
    if not rows:
        return "_empty_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in (r[c] for c in cols)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def md_image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG inlined in markdown metadata (Dagster shows it in a dialog on the asset page)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def log_progress(context: dg.AssetExecutionContext, message: str) -> None:
    context.log.info(f"[{context.asset_key.to_user_string()} {context.partition_key}] {message}")


def viewer_url(sample_id: str) -> dg.MetadataValue:
    """Link to the sample's page in the Dash viewer (``ASIGN_VIEWER_URL``, default the local one):
    Dagster shows a URL inline on the asset page, where images in markdown need a dialog."""
    base = os.environ.get("ASIGN_VIEWER_URL", "http://127.0.0.1:8050").rstrip("/")
    return dg.MetadataValue.url(f"{base}/?sample={sample_id}")
