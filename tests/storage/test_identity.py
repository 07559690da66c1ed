"""Sample identity: a sample id stands for one manifest; outputs record which one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from asign_assets.storage import store as storage_mod
from asign_assets.cli import main
from asign_assets.errors import InputError
from asign_assets.ingest.manifest import load_manifest, write_manifest
from asign_assets.storage.store import Storage
from dash_app import data

MANIFEST = """\
sample_id: s1
pixel_size_um: 0.5
spot_diameter_um: 55
spot_pitch_um: 100
description: {desc}
sections:
  - {{name: A, z_um: 0, image: a.jpg, spots: spots.tsv, counts: counts.tsv, measured: true}}
  - {{name: B, z_um: 10, image: b.jpg}}
"""


def _manifest(folder: Path, desc: str = "first") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg", "spots.tsv", "counts.tsv"):
        (folder / name).write_text("x")
    p = folder / "s1.yaml"
    p.write_text(MANIFEST.format(desc=desc))
    return p


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _outputs(store: Storage) -> None:
    """Two outputs as assets write them: a folder and a file."""
    with store.write("s1", "imputed_volume.zarr") as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("volume")
    with store.write("s1", "sections") as tmp:
        tmp.write_bytes(b"s")


def test_same_content_registers_again_without_change(tmp_path):
    store = Storage(tmp_path / "home")
    m = load_manifest(_manifest(tmp_path / "in"))
    path = store.register(m)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert store.register(load_manifest(_manifest(tmp_path / "in"))) == path
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    # The registered (absolute-path) copy has the same digest as the user's file.
    assert load_manifest(path, check_files=False).digest() == m.digest()


def test_other_content_is_refused_and_nothing_changes(tmp_path):
    home = tmp_path / "home"
    store = Storage(home)
    store.register(load_manifest(_manifest(tmp_path / "in")))
    _outputs(store)
    before = _snapshot(home)
    other = _manifest(tmp_path / "other", desc="another dataset")
    with pytest.raises(InputError) as info:
        store.register(load_manifest(other))
    msg = str(info.value)
    assert msg.startswith(f"{other}: field 'sample_id': sample 's1' is already registered with different content")
    assert "asign run --replace" in msg
    assert _snapshot(home) == before


def test_without_outputs_new_content_replaces_the_registration(tmp_path):
    """A first run that failed validation wrote no output: the corrected manifest just registers."""
    store = Storage(tmp_path / "home")
    store.register(load_manifest(_manifest(tmp_path / "in")))
    fixed = load_manifest(_manifest(tmp_path / "other", desc="fixed pixel size"))
    store.register(fixed)
    assert store.registered_digest("s1") == fixed.digest()
    (tmp_path / "home" / "samples" / "s1").mkdir(parents=True)
    (tmp_path / "home" / "samples" / "s1" / ".tmp-sections-x").mkdir()  # a temporary is no output
    assert not store.has_outputs("s1")


def test_outputs_record_the_manifest_and_metadata_digest(tmp_path):
    store = Storage(tmp_path / "home")
    m = load_manifest(_manifest(tmp_path / "in"))
    store.register(m)
    _outputs(store)
    assert store.provenance("s1") == {"imputed_volume.zarr": m.digest(), "sections": m.digest()}
    assert data.manifest_mismatch(tmp_path / "home", "s1") is None


def test_replace_removes_old_outputs_at_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    store = Storage(home)
    store.register(load_manifest(_manifest(tmp_path / "in")))
    _outputs(store)
    new = load_manifest(_manifest(tmp_path / "other", desc="another dataset"))
    # The delete after the rename fails: the old outputs are already out of sight.
    monkeypatch.setattr(storage_mod, "_remove", lambda p: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        store.register(new, replace=True)
    assert not (home / "samples" / "s1").exists()
    assert load_manifest(store.manifest_path("s1"), check_files=False).description == "first"  # not yet replaced
    monkeypatch.undo()
    store.register(new, replace=True)
    assert [p.name for p in (home / "samples").iterdir()] == []  # the trash a crash left is gone too
    assert load_manifest(store.manifest_path("s1"), check_files=False).digest() == new.digest()
    _outputs(store)
    assert set(store.provenance("s1").values()) == {new.digest()}


def test_viewer_refuses_a_sample_built_from_two_manifests(tmp_path):
    home = tmp_path / "home"
    store = Storage(home)
    store.register(load_manifest(_manifest(tmp_path / "in")))
    _outputs(store)
    # An older asign overwrote the registration and re-made only the sections.
    new = load_manifest(_manifest(tmp_path / "other", desc="another dataset"))
    write_manifest(new, store.manifest_path("s1"), relative=False)
    with store.write("s1", "sections") as tmp:
        tmp.write_bytes(b"new")
    msg = data.manifest_mismatch(home, "s1")
    assert msg is not None and "outputs come from different manifests" in msg
    assert f"imputed_volume.zarr from manifest {load_manifest(_manifest(tmp_path / 'in')).digest()}" in msg
    assert f"sections from manifest {new.digest()}" in msg and "--replace" in msg
    [sample] = data.list_samples(home)
    assert sample.present["imputed_volume"] and not sample.viewable and sample.mixed == msg
    with pytest.raises(InputError, match="not shown: its outputs come from different manifests"):
        data.volume_path(home, "s1")
    from dash_app.callbacks import sample_overview

    options, default, _table = sample_overview(home)
    assert options[0]["label"] == "s1 (outputs from different manifests)" and default is None


def test_cli_run_refuses_and_replace_needs_a_manifest(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("ASIGN_HOME", str(tmp_path / "unset"))  # main() sets both; monkeypatch restores them
    Storage(home).register(load_manifest(_manifest(tmp_path / "in")))
    _outputs(Storage(home))
    before = _snapshot(home)
    other = _manifest(tmp_path / "other", desc="another dataset")
    assert main(["run", str(other), "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already registered with different content and has outputs" in err
    assert _snapshot(home) == before
    assert main(["run", "s1", "--replace", "--home", str(home)]) == 1
    assert "--replace needs a manifest file" in capsys.readouterr().err


def test_inbox_sensor_refuses_other_content_and_bombs(tmp_path):
    from asign_assets.pipeline.sensors import scan_inbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bomb.yaml").write_text("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    scan = scan_inbox(inbox, {})
    assert [r.path.name for r in scan.rejected] == ["bomb.yaml"] and "anchors (&a) are not allowed" in scan.rejected[0].reason
