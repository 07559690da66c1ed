"""DLPFC (10x Visium) from its Space Ranger folders through `asign import-visium` and `asign run` (slow)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import polars as pl
import pytest

DLPFC = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dlpfc").resolve()


@pytest.mark.slow
def test_dlpfc_pair_from_space_ranger_folders(tmp_path, monkeypatch):
    if not all((DLPFC / s / "spatial").is_dir() for s in ("151673", "151674")):
        pytest.skip(f"DLPFC data not found at {DLPFC} (../shared/data/dlpfc relative to the project)")
    from asign_assets.cli import main
    from asign_assets.storage.store import Storage

    home = tmp_path / "home"
    monkeypatch.setenv("ASIGN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["import-visium", str(DLPFC / "151674"), str(DLPFC / "151673"), "--measured", "151674",
                   "--with-truth", "--sample-id", "dlpfc", "--out", str(tmp_path / "dlpfc.yaml")])
    assert rc == 0
    manifest = Path(buf.getvalue().strip().splitlines()[-1])
    assert manifest.is_file()
    assert main(["run", str(manifest), "--home", str(home), "--device", "cpu"]) == 0

    store = Storage(home)
    qc = pl.read_parquet(store.local_path("dlpfc", "registrations") / "qc.parquet")
    assert (qc["dice_after"] >= 0.85).all(), qc
    ev = pl.read_parquet(store.local_path("dlpfc", "evaluation.parquet"))
    sec = ev.filter(pl.col("section") == "151673")
    score = {r["method"]: r["value"] for r in sec.filter(pl.col("metric") == "gene_pcc").iter_rows(named=True)}
    scored = sec.filter((pl.col("metric") == "genes_scored") & (pl.col("method") == "asign"))["value"][0]
    # Different gene panels: some of the 250 genes selected on 151674 are unmeasured on 151673.
    assert 0 < scored <= 250
    assert score["asign"] > score["overlap"] and score["asign"] > score["gauss_knn"], score
