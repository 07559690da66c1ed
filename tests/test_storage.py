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
