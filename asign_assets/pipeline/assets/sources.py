"""Raw inputs as observable source assets: `raw_inputs` (images, spots, counts) and `raw_truth`.

Their data versions are content digests of the registered manifest's files
(:mod:`asign_assets.storage.input_digest`), so editing a counts file in place makes `sections` and
everything downstream stale, and a truth edit makes only `evaluation` stale.
"""

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from asign_assets.pipeline.automation import samples_partitions

from asign_assets.pipeline.resources import StorageResource
from asign_assets.errors import InputError
from asign_assets.storage.input_digest import FileDigestCache, files_version, input_files, truth_files
from asign_assets.ingest.manifest import Manifest
from asign_assets.runtime.home import default_local_state
from asign_assets.storage.store import Storage


def digest_cache() -> FileDigestCache:
    """The file-digest cache of this machine (files are local to the machine that observes)."""
    return FileDigestCache(Path(default_local_state()) / "cache" / "file_digests.json")


def _observe(context: dg.OpExecutionContext, store: Storage, version_of: Callable[[Manifest, FileDigestCache], str]) -> dg.DataVersionsByPartition:
    """Data versions of the run's sample, or of every registered sample when the run has none."""
    if context.has_partition_key:
        keys = [context.partition_key]
    else:
        keys = context.instance.get_dynamic_partitions(samples_partitions.name)
    cache = digest_cache()
    versions: dict[str, dg.DataVersion] = {}
    for pk in keys:
        try:
            versions[pk] = dg.DataVersion(version_of(store.load_registered(pk), cache))
        except InputError as exc:  # the stage that reads the file reports it (before writing anything)
            context.log.warning(f"{pk}: not observed: {exc}")
    cache.save()
    if cache.hashed:
        context.log.info(f"hashed {len(cache.hashed)} changed or new file(s): {', '.join(p.name for p in cache.hashed[:8])}")
    with _beta_sources():
        return dg.DataVersionsByPartition(versions)


@contextlib.contextmanager
def _beta_sources() -> Iterator[None]:
    """Silences only the beta notices of `observable_source_asset` and `DataVersionsByPartition`:
    Dagster 1.13 has no stable API for a source asset with observed per-partition data versions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(Function `observable_source_asset`|Class `DataVersionsByPartition`) is currently in beta", dg.BetaWarning)
        yield


def _source(name: str, description: str, version_of: Callable[[Manifest, FileDigestCache], str]) -> Any:
    with _beta_sources():
        decorator = dg.observable_source_asset(name=name, partitions_def=samples_partitions, group_name="ingest", description=description)

    @decorator
    def observe(context: dg.OpExecutionContext, storage: StorageResource) -> dg.DataVersionsByPartition:
        return _observe(context, storage.get(), version_of)

    return observe


raw_inputs = _source(
    "raw_inputs",
    "A sample's raw inputs named by its registered manifest: section images, spot tables, counts. "
    "Data version: digest of the manifest (without truth) and of every file's content (cached by size and mtime).",
    lambda m, cache: files_version(input_files(m), cache, m.input_fingerprint()),
)
raw_truth = _source(
    "raw_truth",
    "Held-out truth counts of the sample's other sections (read by `evaluation` only). "
    "Data version: digest of the truth files' content (cached by size and mtime).",
    lambda m, cache: files_version(truth_files(m), cache),
)
SOURCES = [raw_inputs, raw_truth]
