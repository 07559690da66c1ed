import pytest

from asign_assets.storage.store import Storage


@pytest.mark.parametrize("root", ["local", "memory://asign-test"])
def test_atomic_write_replace_and_failure_keeps_previous(tmp_path, root):
    store = Storage(tmp_path / "home" if root == "local" else root)
    with store.write("s1", "thing") as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("v1")
    assert store.exists("s1", "thing")
    assert (store.local_path("s1", "thing") / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with store.write("s1", "thing") as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (store.local_path("s1", "thing") / "a.txt").read_text() == "v1"
    with store.write("s1", "thing") as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("v2")
    assert (store.local_path("s1", "thing") / "a.txt").read_text() == "v2"
    with store.write("s1", "f.bin") as tmp:
        tmp.write_bytes(b"xyz")
    assert store.local_path("s1", "f.bin").read_bytes() == b"xyz"
    assert "s1" in store.list_samples()
    if root == "local":
        leftovers = [p.name for p in (tmp_path / "home" / "samples" / "s1").iterdir() if p.name.startswith(".")]
        assert leftovers == []


def test_bad_names_are_rejected(tmp_path):
    store = Storage(tmp_path)
    for bad in ("../x", "a/../../b", ".hidden"):
        with pytest.raises(ValueError):
            store.sample_uri("s1", bad)
    with pytest.raises(ValueError):
        store.sample_uri("../s1", "x")


def test_manifest_digest_is_stored_at_registration(small_stack, tmp_path, monkeypatch):
    """The digest is computed once, when the sample is registered, and read from then on;
    a hand-edited registered copy is noticed (size/mtime) and parsed again."""
    import os

    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage import store as store_mod

    manifest = load_manifest(small_stack.manifest_path)
    store = Storage(tmp_path / "home")
    path = store.register(manifest)
    assert path.with_suffix(".digest").exists()

    def no_parse(*a, **k):
        raise AssertionError("the registered manifest was parsed again")

    monkeypatch.setattr(store_mod, "load_manifest", no_parse)
    assert store.registered_digest(manifest.sample_id) == manifest.digest()
    monkeypatch.undo()

    text = path.read_text()
    path.write_text(text.replace("spot_diameter_um: ", "spot_diameter_um: 1", 1))
    os.utime(path, ns=(1, 1))
    assert store.registered_digest(manifest.sample_id) == load_manifest(path, check_files=False).digest() != manifest.digest()
    path.write_text(text)  # back to the registered content: the digest follows the file
    assert store.registered_digest(manifest.sample_id) == manifest.digest()
