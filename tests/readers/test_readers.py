import gzip

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from asign_assets.errors import InputError
from asign_assets.readers.counts import read_counts
from asign_assets.readers.join import join_spots_counts
from asign_assets.readers.spots import read_spots

from _spaceranger import write_10x

from conftest import her2st_or_skip


def _tsv_gz(path, ids, genes, X):
    lines = ["\t" + "\t".join(genes)] + [sid + "\t" + "\t".join(str(v) for v in row) for sid, row in zip(ids, X)]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def test_her2st_counts_and_selection(tmp_path):
    X = np.array([[0, 3, 1], [2, 0, 0], [5, 5, 5]])
    counts = read_counts(_tsv_gz(tmp_path / "C9.tsv.gz", ["10x13", "11x13", "12x14"], ["GA", "GB", "GC"], X))
    assert list(counts.spot_ids) == ["10x13", "11x13", "12x14"]
    assert list(counts.genes) == ["GA", "GB", "GC"]
    np.testing.assert_array_equal(counts.X.toarray(), X)
    sel = tmp_path / "C9_selection.tsv"
    sel.write_text("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n10\t13\t10.1\t13\t100.5\t200.25\t1\n11\t13\t11\t13\t355\t201\t1\n9\t9\t9\t9\t1\t1\t0\n13\t13\t13\t13\t600\t200\t1\n")
    spots = read_spots(sel)
    assert spots["spot_id"].to_list() == ["10x13", "11x13", "13x13"]  # unselected dropped
    assert spots["x_px"][0] == pytest.approx(100.5) and spots["y_px"][0] == pytest.approx(200.25)
    joined, sub, report = join_spots_counts(spots, counts, sel, fail_below=0.5)
    assert joined["spot_id"].to_list() == ["10x13", "11x13"]
    assert report.spots_without_counts == ["13x13"] and report.counts_without_spots == ["12x14"]
    np.testing.assert_array_equal(sub.X.toarray(), X[:2])


def test_visium_h5_and_tissue_positions(tmp_path):
    barcodes = ["AAAC-1", "AAAG-1", "AAAT-1"]
    X = np.array([[1, 0, 2, 9], [0, 4, 0, 9], [3, 3, 3, 9]])
    write_10x(tmp_path / "filtered_feature_bc_matrix.h5", barcodes, ["G1", "G2", "G3", "ADT"], X)
    c = read_counts(tmp_path / "filtered_feature_bc_matrix.h5")
    assert list(c.genes) == ["G1", "G2", "G3"]  # antibody feature dropped
    np.testing.assert_array_equal(c.X.toarray(), X[:, :3])
    rows = [("AAAC-1", 1, 0, 0, 1000, 2000), ("AAAG-1", 1, 0, 2, 1010, 2200), ("AAAT-1", 0, 1, 1, 1200, 2100)]
    # Space Ranger >= 2.0: header; 1.x: tissue_positions_list.csv without header; parquet in newer versions
    (tmp_path / "tissue_positions.csv").write_text(
        "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + "\n".join(",".join(map(str, r)) for r in rows)
    )
    (tmp_path / "tissue_positions_list.csv").write_text("\n".join(",".join(map(str, r)) for r in rows))
    pl.DataFrame(rows, schema=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"], orient="row").write_parquet(tmp_path / "tissue_positions.parquet")
    for name in ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet"):
        s = read_spots(tmp_path / name)
        assert s["spot_id"].to_list() == ["AAAC-1", "AAAG-1"], name  # in_tissue == 0 dropped
        assert s["x_px"].to_list() == [2000.0, 2200.0] and s["y_px"].to_list() == [1000.0, 1010.0], name  # x = column


def test_anndata_counts_and_spatial(tmp_path):
    import anndata as ad

    X = sp.csr_matrix(np.array([[1, 2], [3, 0], [0, 7]], dtype=np.float32))
    a = ad.AnnData(X=X)
    a.obs_names = ["a", "b", "c"]
    a.var_names = ["G1", "G2"]
    a.obsm["spatial"] = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    a.write_h5ad(tmp_path / "x.h5ad")
    c = read_counts(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(c.X.toarray(), X.toarray())
    s = read_spots(tmp_path / "x.h5ad")
    assert s["x_px"].to_list() == [10.0, 30.0, 50.0] and s["y_px"].to_list() == [20.0, 40.0, 60.0]


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([["a", "1", "-2"], ["b", "0", "1"]], "negative"),
        ([["a", "1", ""], ["b", "0", "1"]], "NaN"),
        ([["a", "1", "0.5"], ["b", "0", "1"]], "non-integer"),
        ([["a", "1", "2"], ["a", "0", "1"]], "duplicate spot ids"),
        ([["a", "1", "x"], ["b", "0", "1"]], "non-numeric"),
    ],
)
def test_bad_counts(tmp_path, rows, problem):
    p = tmp_path / "bad.tsv"
    p.write_text("\tG1\tG2\n" + "\n".join("\t".join(r) for r in rows) + "\n")
    with pytest.raises(InputError, match=problem) as exc:
        read_counts(p)
    assert str(p) in str(exc.value)


def test_duplicate_genes_and_truncated_gzip(tmp_path):
    p = tmp_path / "dup.tsv"
    p.write_text("\tG1\tG1\na\t1\t2\n")
    with pytest.raises(InputError, match="duplicate"):
        read_counts(p)
    good = _tsv_gz(tmp_path / "t.tsv.gz", [f"s{i}" for i in range(200)], ["G1", "G2"], np.ones((200, 2), int))
    trunc = tmp_path / "trunc.tsv.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match="truncated") as exc:
        read_counts(trunc)
    assert "trunc.tsv.gz" in str(exc.value)


def test_spot_table_missing_columns_and_partial_match(tmp_path, caplog):
    p = tmp_path / "spots.csv"
    p.write_text("id,x\n1,2\n")
    with pytest.raises(InputError, match="missing columns"):
        read_spots(p)
    spots = pl.DataFrame({"spot_id": [f"s{i}" for i in range(10)], "x_px": np.arange(10.0), "y_px": np.arange(10.0)})
    c = read_counts(_tsv_gz(tmp_path / "c.tsv.gz", [f"s{i}" for i in range(3)] + ["zz"], ["G"], np.ones((4, 1), int)))
    with pytest.raises(InputError, match="only 3 of 10 spots"):
        join_spots_counts(spots, c, "c.tsv.gz")
    with caplog.at_level("WARNING", logger="asign_assets.readers.join"):
        joined, _, rep = join_spots_counts(spots, c, "c.tsv.gz", fail_below=0.2)
    assert joined.height == 3 and rep.counts_without_spots == ["zz"]
    assert any("c.tsv.gz" in r.getMessage() and "30%" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_real_her2st_patient_c_import(tmp_path):
    data = her2st_or_skip()
    from asign_assets.importers.her2st import manifest_from_her2st
    from asign_assets.ingest.manifest import load_manifest

    path, report = manifest_from_her2st(data, "C", ["C2", "C3", "C4", "C5", "C6"], "C4", with_truth=True, out=tmp_path / "c.yaml")
    m = load_manifest(path)
    assert m.measured_sections[0].name == "C4" and m.measured_sections[0].counts is not None
    assert all(s.truth is not None for s in m.sections if not s.measured)
    assert 0.6 < m.sections[0].pixel_size_um < 0.85  # about 200 um per 255-290 px
    # depths from the block layout (C3/C4 and C5/C6 are consecutive pairs); overrides win
    assert [s.z_um for s in m.sections] == [16.0, 100.0, 116.0, 200.0, 216.0]
    path2, _ = manifest_from_her2st(data, "C", ["C2", "C3", "C4"], "C4", z_um={"C3": 80.0}, out=tmp_path / "c2.yaml")
    assert [s.z_um for s in load_manifest(path2).sections] == [16.0, 80.0, 116.0]
    with pytest.raises(InputError, match="C9"):
        manifest_from_her2st(data, "C", ["C2", "C3"], "C3", z_um={"C9": 1.0}, out=tmp_path / "c3.yaml")
    assert any("C4:" in line and "dropped" in line for line in report)
    counts = read_counts(m.measured_sections[0].counts)
    spots = read_spots(m.measured_sections[0].spots)
    joined, sub, rep = join_spots_counts(spots, counts, m.measured_sections[0].counts)
    assert 150 < joined.height <= spots.height and sub.X.shape[1] > 10000
    assert rep.n_joined == joined.height


def test_her2st_depths_follow_the_block_layout():
    from asign_assets.cli import _parse_z
    from asign_assets.importers.her2st import DEPTH_GAP_UM, SECTION_THICKNESS_UM, her2st_z_um

    t, d = SECTION_THICKNESS_UM, DEPTH_GAP_UM
    assert her2st_z_um(["C1", "C2", "C3", "C4", "C5", "C6"]) == [0.0, t, d, d + t, 2 * d, 2 * d + t]
    assert her2st_z_um(["C2", "C3", "C4", "C5", "C6"]) == [t, d, d + t, 2 * d, 2 * d + t]
    # patients with one depth (E-H) and unknown names: consecutive sections in the given order
    assert her2st_z_um(["E1", "E2", "E3"]) == [0.0, t, 2 * t]
    assert her2st_z_um(["C2", "sectionX"]) == [0.0, t]
    assert _parse_z("C3=120, C4=136.5") == {"C3": 120.0, "C4": 136.5}
    with pytest.raises(InputError, match="SECTION=UM"):
        _parse_z("C3")
