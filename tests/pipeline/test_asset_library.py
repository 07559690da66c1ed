"""Library code behind the thin assets: file digests, stack inputs, QC checks, evaluation, console."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from asign_assets.pipeline.console import asset_line, summary_table
from asign_assets.storage.input_digest import FileDigestCache, files_version, sha256_file
from asign_assets.results.qc import isolated_fraction, registration_gaps, volume_problems
from asign_assets.storage.stack_inputs import measured_rows, tile_arrays


def test_digest_cache_rehashes_only_changed_files_and_touch_keeps_the_digest(tmp_path):
    f = tmp_path / "counts.tsv"
    f.write_bytes(b"a\tb\n1\t2\n")
    cache = FileDigestCache(tmp_path / "cache.json")
    v1 = files_version([f], cache, "m")
    assert cache.hashed == [f.resolve()]
    cache.save()
    again = FileDigestCache(tmp_path / "cache.json")
    assert files_version([f], again, "m") == v1 and again.hashed == []  # size and mtime unchanged: not read
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    assert files_version([f], again, "m") == v1 and again.hashed == [f.resolve()]  # read again, same content
    f.write_bytes(b"a\tb\n1\t3\n")  # same size, new content
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    v2 = files_version([f], again, "m")
    assert v2 != v1 and files_version([f], again, "other manifest") != v2
    import hashlib

    assert sha256_file(f) == hashlib.sha256(b"a\tb\n1\t3\n").hexdigest()


def test_damaged_digest_cache_is_ignored(tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    f = tmp_path / "x"
    f.write_bytes(b"1")
    cache = FileDigestCache(tmp_path / "cache.json")
    assert len(files_version([f], cache)) == 20 and cache.hashed == [f.resolve()]


def test_measured_rows_join_and_missing_ids():
    spots = pl.DataFrame({"spot_id": ["a", "b", "c", "a"], "measured": [False, True, True, True], "section": ["S1", "S2", "S2", "S2"]})
    np.testing.assert_array_equal(measured_rows(spots, ["S2:c", "S2:a", "S2:b"]), [2, 3, 1])  # the measured "a", not S1's
    with pytest.raises(ValueError, match=r"\['S2:zz'\]"):
        measured_rows(spots, ["S2:a", "S2:zz"])
    # two measured sections with the same spot ids stay apart
    two = pl.DataFrame({"spot_id": ["a", "b", "a", "b"], "measured": [True] * 4, "section": ["S1", "S1", "S3", "S3"]})
    np.testing.assert_array_equal(measured_rows(two, ["S3:a", "S1:b", "S3:b", "S1:a"]), [2, 1, 3, 0])


def test_tile_arrays_number_tiles_across_sections():
    root = {
        "A": {"spot_region": np.array([0, 1, 1]), "spot_global": np.array([0, 0, 0]), "region_xy_px": np.zeros((2, 2)), "global_xy_px": np.zeros((1, 2))},
        "B": {"spot_region": np.array([0, 2]), "spot_global": np.array([1, 0]), "region_xy_px": np.ones((3, 2)), "global_xy_px": np.ones((2, 2))},
    }
    sr, sg, rxy, rsec, gxy, gsec = tile_arrays(root, ["A", "B"])
    np.testing.assert_array_equal(sr, [0, 1, 1, 2, 4])
    np.testing.assert_array_equal(sg, [0, 0, 0, 2, 1])
    np.testing.assert_array_equal(rsec, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(gsec, [0, 1, 1])
    assert rxy.shape == (5, 2) and gxy.shape == (3, 2)


def test_isolated_fraction_and_registration_gaps(tmp_path):
    edges = pl.DataFrame({"src": [0, 1], "dst": [1, 2]})
    assert isolated_fraction(edges, 5) == pytest.approx(0.4)
    assert isolated_fraction(edges, 0) == 0.0
    (tmp_path / "A.tfm").write_text("t")
    spots = pl.DataFrame({"section": ["A", "A"], "x_um": [0.0, np.nan], "y_um": [0.0, 1.0], "z_um": [0.0, 0.0]})
    gaps = registration_gaps(["A", "B"], spots, tmp_path)
    assert gaps == ["section B: no spots", "section B: no transform B.tfm", "x_um: non-finite common-frame coordinates"]


def test_volume_problems_reports_non_finite_and_shape(tmp_path):
    import anndata as ad

    a = ad.AnnData(X=np.ones((4, 3), np.float32))
    a.layers["uncertainty"] = np.ones((4, 3), np.float32)
    a.obsm["spatial_3d"] = np.zeros((4, 3))
    a.write_h5ad(tmp_path / "ok.h5ad")
    assert volume_problems(tmp_path / "ok.h5ad", 4) == []
    a.layers["uncertainty"][0, 0] = np.inf
    a.write_h5ad(tmp_path / "bad.h5ad")
    assert volume_problems(tmp_path / "bad.h5ad", 5) == ["4 rows but the registered spot table has 5 spots", "layers/uncertainty: 1 non-finite values"]


def test_anndata_zarr_is_format_2_with_one_gene_per_chunk(tmp_path):
    import warnings

    import anndata as ad
    import pandas as pd
    import zarr

    from asign_assets.results.imputed import write_anndata_zarr

    a = ad.AnnData(X=np.arange(12, dtype=np.float32).reshape(4, 3), obs=pd.DataFrame({"section": ["a", "a", "b", "b"]}, index=list("wxyz")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_anndata_zarr(a, tmp_path / "v.zarr", (4, 1))
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    assert g.metadata.zarr_format == 2 and g["X"].chunks == (4, 1)
    back = ad.read_zarr(tmp_path / "v.zarr")
    np.testing.assert_array_equal(back.X, a.X)
    assert list(back.obs["section"].cat.categories) == ["a", "b"]


def test_console_lines_and_summary():
    line = asset_line("model", {"seconds": 4.25, "best_val_gene_pcc": 0.49871, "other": 1})
    assert line.text().split() == ["model", "4.2", "s", "best_val_gene_pcc", "0.4987"]
    table = summary_table([line], {"sections": "up to date"}).splitlines()
    assert table[0].split() == ["asset", "status", "seconds", "detail"]
    assert table[2].split() == ["model", "ran", "4.2", "best_val_gene_pcc", "0.4987"]
    assert table[3].split() == ["sections", "skipped", "up", "to", "date"]


def test_truth_matrix_joins_by_spot_id_in_spot_order_and_marks_unmeasured_genes(tmp_path):
    from types import SimpleNamespace

    from asign_assets.evaluation.sample import truth_matrix
    from asign_assets.ingest.expression import normalise_to_genes
    from asign_assets.ingest.manifest import Manifest, SectionSpec

    truth = tmp_path / "S2.tsv"
    truth.write_text("\tG1\tG2\nzz\t5\t5\nb\t30\t70\na\t1\t1\n")  # zz: no such spot; a: library 2 < min_counts
    spots = pl.DataFrame({"section": ["S1", "S1", "S2", "S2", "S2"], "spot_id": ["a", "b", "a", "b", "c"], "virtual": [False] * 5})
    inp = SimpleNamespace(spots=spots, normalisation={"min_counts": 10})
    sec = lambda name, **kw: SectionSpec(name=name, z_um=0.0, image=tmp_path / "x.png", pixel_size_um=1.0, **kw)  # noqa: E731
    manifest = Manifest("s", tmp_path / "m.yaml", 55.0, 100.0, (sec("S1", measured=True, counts=tmp_path / "c.tsv"), sec("S2", truth=truth)))
    genes = np.array(["G2", "G9"])
    rows, y = truth_matrix(manifest, inp, genes, "log1p_cp10k")
    np.testing.assert_array_equal(rows, [3])  # S2's "b" only
    expected = normalise_to_genes(np.array([[30.0, 70.0]]), np.array(["G1", "G2"]), np.array(["G2"]), "log1p_cp10k")
    np.testing.assert_allclose(y[:, :1], expected, rtol=1e-6)
    assert np.isnan(y[0, 1])  # G9 not measured by the truth file


def test_ui_loads_the_asign_location_and_home_gets_a_quiet_dagster_yaml(tmp_path, monkeypatch):
    import argparse

    import yaml

    from asign_assets.cli import _set_home, _ui_commands

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("ASIGN_DEVICE", raising=False)
    monkeypatch.delenv("ASIGN_HOME", raising=False)  # _set_home exports it; restored after the test
    _set_home(str(tmp_path / "home"))
    dagster_home = tmp_path / "home" / "dagster"
    assert yaml.safe_load((dagster_home / "dagster.yaml").read_text()) == {"telemetry": {"enabled": False}}
    assert os.environ["ASIGN_HOME"] == str(tmp_path / "home") and os.environ["ASIGN_DEVICE"] == "auto"  # for dg.EnvVar
    [cmd] = _ui_commands(argparse.Namespace(host="127.0.0.1", port=3999, viewer_port=8999, no_viewer=True))
    workspace = yaml.safe_load(Path(cmd[cmd.index("-w") + 1]).read_text())
    assert workspace["load_from"][0]["python_module"] == {"module_name": "asign_assets.definitions", "location_name": "asign"}


def test_digest_refuses_a_fifo_without_blocking(tmp_path):
    from asign_assets.errors import InputError

    fifo = tmp_path / "counts.tsv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        sha256_file(fifo)


def test_loading_the_definitions_imports_neither_torch_nor_anndata():
    """`asign run` on an up-to-date sample stays a few seconds: the heavy libraries load in the steps."""
    import subprocess
    import sys

    code = "import sys, asign_assets.definitions, asign_assets.cli, asign_assets.pipeline.freshness; print(sorted({'torch', 'anndata', 'torch_geometric'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert out.stdout.strip() == "[]", out.stdout
