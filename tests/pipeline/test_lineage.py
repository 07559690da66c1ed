"""Lineage and skipping, end to end through `asign run`'s code path (materialise_sample).

One module-scoped run of the small demo stack records, for every asset and check, which stored
outputs and raw inputs it opens; then the declared graph is compared with those reads, and
further runs show that an unchanged sample skips everything, a touched counts file changes
nothing, an edited truth file re-runs `evaluation` only and an edited counts file re-runs
exactly the assets downstream of the raw inputs.
"""

from __future__ import annotations

import gzip
import shutil
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest

from asign_assets.readers import counts as readers
from asign_assets.readers import slide
from asign_assets.pipeline.run import materialise_sample
from asign_assets.pipeline.definitions import build_definitions
from asign_assets.storage import layout
from asign_assets.storage.store import Storage

# sections tiled in this process, where the recording patches below see the images opened
EPOCHS = {"ops": {"model": {"config": {"epochs": 20}}, "tiles": {"config": {"workers": 1}}}}


def _current_node() -> str | None:
    try:
        ctx = dg.OpExecutionContext.get()
    except Exception:  # noqa: BLE001 - outside a step (CLI planning, observation bookkeeping)
        return None
    return ctx.op.name if ctx is not None else None


@pytest.fixture(scope="module")
def run_env(tmp_path_factory, small_stack):
    """(stack folder, home, reads {node: {upstream}}) after a first full run with reads recorded."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("lineage")
    stack = base / "stack"
    shutil.copytree(small_stack.manifest_path.parent, stack)
    home = base / "home"
    mp.setenv("ASIGN_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    reads: dict[str, set[str]] = defaultdict(set)
    truth_files: set[Path] = set()

    def note(upstream: str) -> None:
        node = _current_node()
        if node is not None:
            reads[node].add(upstream)

    local_path, load_registered, read_counts, slide_init = Storage.local_path, Storage.load_registered, readers.read_counts, slide.Slide.__init__

    def rec_local_path(self, sample_id, name):
        note(layout.owner(name.split("/")[0]))
        return local_path(self, sample_id, name)

    def rec_load_registered(self, sample_id):
        m = load_registered(self, sample_id)
        truth_files.update(Path(s.truth).resolve() for s in m.sections if s.truth is not None)
        note("raw_inputs")
        return m

    def rec_read_counts(path, *a, **k):
        note("raw_truth" if Path(path).resolve() in truth_files else "raw_inputs")
        return read_counts(path, *a, **k)

    def rec_slide_init(self, path, *a, **k):
        note("raw_inputs")
        return slide_init(self, path, *a, **k)

    mp.setattr(Storage, "local_path", rec_local_path)
    mp.setattr(Storage, "load_registered", rec_load_registered)
    mp.setattr(readers, "read_counts", rec_read_counts)
    mp.setattr(slide.Slide, "__init__", rec_slide_init)
    materialise_sample(str(stack / "manifest.yaml"), device="cpu", run_config=EPOCHS)
    for name in ("local_path", "load_registered"):
        mp.setattr(Storage, name, {"local_path": local_path, "load_registered": load_registered}[name])
    mp.setattr(readers, "read_counts", read_counts)
    mp.setattr(slide.Slide, "__init__", slide_init)
    yield stack, home, dict(reads)
    mp.undo()


def _latest_ids(home: Path) -> dict[str, int | None]:
    """Storage id of each asset's latest materialisation of the `demo` partition."""
    graph = build_definitions(storage_root=str(home), device="cpu").resolve_asset_graph()
    with dg.DagsterInstance.get() as instance:
        out = {}
        for key in graph.materializable_asset_keys:
            res = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=["demo"]), limit=1)
            out[key.to_user_string()] = res.records[0].storage_id if res.records else None
        return out


def _rerun(stack: Path, home: Path) -> set[str]:
    """Names of the assets that `asign run` re-materialised."""
    before = _latest_ids(home)
    materialise_sample(str(stack / "manifest.yaml"), device="cpu", run_config=EPOCHS)
    after = _latest_ids(home)
    return {k for k in after if after[k] != before[k]}


def _edit_gz(path: Path) -> None:
    """Change one count in a gzipped TSV in place (same file, new content)."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    cells = lines[1].split("\t")
    cells[-1] = str(int(float(cells[-1])) + 7)
    lines[1] = "\t".join(cells)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_declared_upstream_equals_what_each_asset_and_check_opens(run_env):
    _stack, home, reads = run_env
    defs = build_definitions(storage_root=str(home), device="cpu")
    graph = defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        name = key.to_user_string()
        declared = {p.to_user_string() for p in graph.get(key).parent_keys}
        assert reads.get(name, set()) - {name} == declared, f"{name}: opens {sorted(reads.get(name, set()) - {name})}, declares {sorted(declared)}"
    for check_key in graph.asset_check_keys:
        node = graph.get(check_key)
        allowed = {check_key.asset_key.to_user_string(), *(p.to_user_string() for p in node.parent_entity_keys)}
        opened = reads.get(check_key.name, set())
        if opened:  # in-asset checks (check_specs) read inside their asset's step
            assert opened <= allowed, f"check {check_key.name}: opens {sorted(opened)}, declares {sorted(allowed)}"
    assert len(list(graph.asset_check_keys)) >= 5


def test_second_unchanged_run_skips_everything(run_env):
    stack, home, _ = run_env
    assert _rerun(stack, home) == set()


def test_changed_workers_rerun_nothing(run_env):
    """`workers` changes how tiles, embeddings and model run, not what they write."""
    stack, home, _ = run_env
    before = _latest_ids(home)
    cfg = {"ops": {"model": {"config": {"epochs": 20, "workers": 2}}, "tiles": {"config": {"workers": 1}}, "embeddings": {"config": {"workers": 2}}}}
    materialise_sample(str(stack / "manifest.yaml"), device="cpu", run_config=cfg)
    assert _latest_ids(home) == before


def test_touched_counts_file_changes_nothing(run_env):
    stack, home, _ = run_env
    counts = next((stack / "counts").iterdir())
    counts.touch()
    assert _rerun(stack, home) == set()


def test_edited_truth_reruns_evaluation_only(run_env):
    stack, home, _ = run_env
    _edit_gz(sorted((stack / "truth").iterdir())[0])
    assert _rerun(stack, home) == {"evaluation"}


def test_edited_counts_reruns_exactly_the_downstream_assets(run_env):
    stack, home, _ = run_env
    _edit_gz(next((stack / "counts").iterdir()))
    graph = build_definitions(storage_root=str(home), device="cpu").resolve_asset_graph()
    downstream, todo = set(), [dg.AssetKey("raw_inputs")]
    while todo:
        for child in graph.get(todo.pop()).child_keys:
            if child.to_user_string() not in downstream:
                downstream.add(child.to_user_string())
                todo.append(child)
    assert _rerun(stack, home) == downstream
    assert _rerun(stack, home) == set()  # and then it is up to date again
