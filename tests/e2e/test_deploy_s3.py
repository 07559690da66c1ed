"""Object storage: completion markers (fast, memory://) and the demo + viewer on a local S3 server.

The end-to-end test runs the commands of docs/deployment.md ("Shared storage") verbatim
against moto in server mode on 127.0.0.1; it skips, naming what is missing, without moto or
s3fs (.ci/run installs them through the dev extra).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from _procs import doc_command, free_port, port_open, require, require_modules, run, service, tool_env, wait_for  # noqa: E402
from asign_assets.storage.store import COMPLETE_DIR, Storage


@pytest.fixture()
def remote() -> Storage:
    return Storage(f"memory://asign-deploy-{uuid.uuid4().hex[:8]}")


def _write_dir(store: Storage, sid: str, name: str, value: str) -> None:
    with store.write(sid, name) as tmp:
        tmp.mkdir()
        for i in range(3):
            (tmp / f"part{i}.txt").write_text(f"{value}-{i}")


def test_asset_without_marker_is_absent(remote):
    _write_dir(remote, "s1", "tiles.zarr", "v1")
    assert remote.exists("s1", "tiles.zarr")
    assert (remote.local_path("s1", "tiles.zarr") / "part2.txt").read_text() == "v1-2"
    marker = remote._marker("s1", "tiles.zarr")
    marker.fs.rm_file(marker.path)  # what a reader sees while a writer replaces the asset
    assert remote._upath("samples", "s1", "tiles.zarr").exists()  # the objects are still there...
    assert not remote.exists("s1", "tiles.zarr")  # ...but the asset is not complete
    with pytest.raises(FileNotFoundError, match="not found"):
        remote.local_path("s1", "tiles.zarr")


def test_reader_retries_when_a_writer_replaces_the_asset(remote, monkeypatch):
    _write_dir(remote, "s1", "model", "v1")
    fs = remote._upath().fs
    real_get, calls = fs.get, []

    def get_racing_a_writer(*args, **kwargs):
        calls.append(1)
        out = real_get(*args, **kwargs)
        if len(calls) == 1:  # a writer replaces the asset while the first download runs
            _write_dir(remote, "s1", "model", "v2")
        return out

    monkeypatch.setattr(fs, "get", get_racing_a_writer)
    local = remote.local_path("s1", "model")
    assert len(calls) == 2
    assert sorted(p.read_text() for p in local.iterdir()) == ["v2-0", "v2-1", "v2-2"]


def test_mirror_copies_only_changed_assets(remote, tmp_path):
    _write_dir(remote, "s1", "a", "v1")
    with remote.write("s1", "b.json") as tmp:
        tmp.write_bytes(b"{}")
    assert sorted(remote.mirror(tmp_path)) == ["s1/a", "s1/b.json"]
    assert remote.mirror(tmp_path) == []
    stamp = (tmp_path / "samples" / "s1" / "b.json").stat().st_ino
    _write_dir(remote, "s1", "a", "v2")
    assert remote.mirror(tmp_path) == ["s1/a"]
    assert (tmp_path / "samples" / "s1" / "a" / "part0.txt").read_text() == "v2-0"
    assert (tmp_path / "samples" / "s1" / "b.json").stat().st_ino == stamp
    assert (tmp_path / "samples" / "s1" / COMPLETE_DIR / "a").read_text() == remote._completion_token("s1", "a")
    with remote.write("s1", "c.json") as tmp:
        tmp.write_bytes(b"[]")
    assert remote.mirror(tmp_path / "only_b", names=frozenset({"b.json"})) == ["s1/b.json"]


@pytest.mark.e2e
def test_demo_and_viewer_on_s3(tmp_path, monkeypatch):
    require_modules("moto", "s3fs", "boto3", "flask")
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    require({"moto_server (pip install 'moto[server]')": moto})
    port, viewer_port, bucket = free_port(), free_port(), "asign-e2e"
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    env = tool_env({
        **os.environ, **aws, "MOTO_PORT": str(port), "BUCKET": bucket, "DEMO_DIR": str(tmp_path / "demo"),
        "VIEWER_PORT": str(viewer_port), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "ASIGN_MANIFESTS": str(tmp_path / "manifests"), "ASIGN_VIEWER_CACHE": str(tmp_path / "viewer_cache"),
    })
    env.pop("ASIGN_HOME", None)
    env.pop("ASIGN_INBOX", None)
    for key, value in {**aws, "ASIGN_VIEWER_CACHE": str(tmp_path / "reader_cache"), "ASIGN_MANIFESTS": env["ASIGN_MANIFESTS"]}.items():
        monkeypatch.setenv(key, value)
    root = f"s3://{bucket}/asign"

    with service(doc_command("moto"), env, tmp_path / "moto.log", lambda: port_open(port), "moto_server"):
        run(doc_command("s3-bucket"), env, tmp_path / "bucket.log")
        run(doc_command("s3-demo"), env, tmp_path / "demo.log", timeout=600)

        store = Storage(root)
        assert store.list_samples() == ["demo"]
        done = store.completed_assets("demo")
        assert {"sections", "tiles.zarr", "embeddings.zarr", "model", "imputed_volume.h5ad", "imputed_volume.zarr", "evaluation.parquet"} <= set(done)
        assert not any(p.name.startswith(".tmp-") for p in store._upath("samples", "demo").iterdir()), "staging prefixes left behind"

        # The viewer process reads the S3 root: its page lists the demo sample as viewable.
        with service(doc_command("s3-viewer"), env, tmp_path / "viewer.log", lambda: port_open(viewer_port), "asign viewer", timeout=120):
            def layout():
                with urllib.request.urlopen(f"http://127.0.0.1:{viewer_port}/_dash-layout", timeout=30) as resp:
                    return json.loads(resp.read())

            page = json.dumps(wait_for(layout, 120, "viewer layout"))
            assert '"demo"' in page and "no samples under" not in page, page[:2000]

        # The viewer's readers give the values stored on S3.
        import anndata as ad

        from dash_app import data

        home = data.resolve_home(root)
        assert home.is_relative_to(tmp_path / "reader_cache")
        mirrored = {p.name for p in (home / "samples" / "demo").iterdir()}
        assert {"imputed_volume.zarr", "sections", "evaluation.parquet"} <= mirrored and "tiles.zarr" not in mirrored, mirrored
        [listed] = data.list_samples(home)
        assert listed.sample == "demo" and listed.viewable
        vol = data.load_volume(home, "demo")
        truth = ad.read_h5ad(store.local_path("demo", "imputed_volume.h5ad"))
        gene = truth.var_names[3]
        np.testing.assert_allclose(data.gene_values(home, "demo", gene), np.asarray(truth[:, gene].X).ravel(), rtol=1e-6)
        assert len(vol.spot_id) == truth.n_obs


def test_download_cache_is_removed_with_its_storage(remote):
    _write_dir(remote, "s1", "tiles.zarr", "v1")
    reader = Storage(remote.root)
    cache = reader.local_path("s1", "tiles.zarr")
    assert (cache / "part0.txt").read_text() == "v1-0"
    folder = reader._cache
    assert folder is not None and folder.is_dir()
    del reader
    import gc

    gc.collect()
    assert not folder.exists()  # one temporary folder per step would otherwise pile up in /tmp
