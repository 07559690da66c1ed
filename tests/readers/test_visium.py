"""Space Ranger folders and scanpy/squidpy AnnData as manifest sections (asign_assets.readers.visium, asign_assets.importers.visium)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from asign_assets.errors import InputError
from asign_assets.ingest.manifest import load_manifest, write_manifest
from asign_assets.ingest.sections import read_section_spots
from asign_assets.readers.spots import VISIUM_COLS
from asign_assets.readers.visium import lattice_um_per_px
from asign_assets.importers.visium import manifest_from_visium

from _spaceranger import FULL_H, FULL_W, FULLRES_UM, HIRES, LOWRES, MARK, hex_lattice, make_outs, scan_image, write_10x, write_positions

ROOT = Path(__file__).resolve().parents[2]
DLPFC = Path(os.environ.get("ASIGN_DLPFC", ROOT / ".." / "shared" / "data" / "dlpfc")).resolve()

def _manifest(tmp_path: Path, sections: list[dict], **top) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump({"sample_id": "vis", "sections": sections, **top}))
    return p


def _two(tmp_path: Path, **kw) -> tuple[Path, Path, pl.DataFrame]:
    a, pos = make_outs(tmp_path / "A" / "outs", **kw)
    b, _ = make_outs(tmp_path / "B" / "outs", seed=1)
    return a, b, pos


@pytest.mark.parametrize("kind", ["list", "csv", "parquet"])
@pytest.mark.parametrize("hires", [True, False])
def test_spots_filtered_and_scaled_onto_the_image(tmp_path, kind, hires):
    a, b, pos = _two(tmp_path, positions=kind, hires=hires)
    m = load_manifest(_manifest(tmp_path, [
        {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
        {"name": "B", "z_um": 10, "visium": "B/outs"},
    ]))
    spec = m.sections[0]
    scale = HIRES if hires else LOWRES
    assert spec.image == a / "spatial" / ("tissue_hires_image.png" if hires else "tissue_lowres_image.png")
    assert spec.spot_scale == scale
    assert spec.counts == a / "filtered_feature_bc_matrix.h5" and spec.truth is None
    assert spec.spots.name == {"list": "tissue_positions_list.csv", "csv": "tissue_positions.csv", "parquet": "tissue_positions.parquet"}[kind]
    spots = read_section_spots(spec)
    tis = pos.filter(pl.col("in_tissue") == 1)
    assert 0 < tis.height < pos.height
    assert spots["spot_id"].to_list() == tis["barcode"].to_list()  # out-of-tissue rows dropped
    np.testing.assert_allclose(spots["x_px"].to_numpy(), tis["pxl_col_in_fullres"].to_numpy() * scale)
    np.testing.assert_allclose(spots["y_px"].to_numpy(), tis["pxl_row_in_fullres"].to_numpy() * scale)
    # every spot lands on its own mark in the image
    img = np.asarray(Image.open(spec.image).convert("RGB"))
    hit = img[np.round(spots["y_px"].to_numpy()).astype(int), np.round(spots["x_px"].to_numpy()).astype(int)]
    assert (hit == MARK).all()
    # the measured section's spots join its counts through the pipeline's reader
    from asign_assets.ingest.sections import read_measured

    joined, counts, report = read_measured(spec)
    assert report.n_joined == tis.height and counts.X.shape == (tis.height, 30)
    np.testing.assert_allclose(joined["x_px"].to_numpy(), spots["x_px"].to_numpy())


def test_pixel_size_from_the_lattice_within_one_percent(tmp_path):
    pos = hex_lattice(rows=10, cols=20, angle=-0.4, jitter_px=2.0, seed=5)
    # three spots far off the lattice (a corrupt row) must not move the fit
    bad = pl.Series([False] * (pos.height - 3) + [True] * 3)
    pos = pos.with_columns(pl.when(bad).then(pl.col("pxl_col_in_fullres") + 900).otherwise(pl.col("pxl_col_in_fullres")).alias("pxl_col_in_fullres"))
    um = lattice_um_per_px(pos["array_row"].to_numpy(), pos["array_col"].to_numpy(),
                           np.stack([pos["pxl_col_in_fullres"].to_numpy(), pos["pxl_row_in_fullres"].to_numpy()], 1), 100.0, "t")
    assert um == pytest.approx(FULLRES_UM, rel=0.002)
    a, b, _ = _two(tmp_path)
    _save_scan(b, tmp_path / "B" / "scan.png")
    m = load_manifest(_manifest(tmp_path, [
        {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
        {"name": "B", "z_um": 10, "visium": "B/outs", "image": "B/scan.png"},
    ]))
    assert m.sections[0].pixel_size_um == pytest.approx(FULLRES_UM / HIRES, rel=0.01)
    assert "visium lattice" in m.sections[0].pixel_size_source and "tissue_hires_scalef" in m.sections[0].pixel_size_source
    # an explicit full-resolution scan: spots stay in full-resolution px, pixel size of the scan
    assert m.sections[1].spot_scale == 1.0
    assert m.sections[1].pixel_size_um == pytest.approx(FULLRES_UM, rel=0.01)
    assert m.spot_diameter_um == 55.0 and m.spot_pitch_um == 100.0  # Visium defaults when every section is Visium


def _save_scan(outs: Path, path: Path) -> None:
    """The full-resolution scan a Space Ranger folder usually lacks."""
    pos = pl.read_csv(outs / "spatial" / "tissue_positions_list.csv", has_header=False, new_columns=list(VISIUM_COLS))
    scan_image(pos, 1.0).save(path)


def test_positions_preference_parquet_csv_list(tmp_path, caplog):
    pos = hex_lattice()
    outs, _ = make_outs(tmp_path / "A", positions="list", pos=pos)
    # each format marks a different row set in tissue, so the chosen file is visible
    write_positions(outs / "spatial", pos.with_columns(pl.lit(1, pl.Int64).alias("in_tissue")), "csv")
    write_positions(outs / "spatial", pos.with_columns(((pl.col("array_row") % 2) == 0).cast(pl.Int64).alias("in_tissue")), "parquet")
    make_outs(tmp_path / "B")
    sections = [{"name": "A", "z_um": 0, "visium": "A"}, {"name": "B", "z_um": 10, "visium": "B", "measured": True}]
    with caplog.at_level(logging.INFO, logger="asign_assets.readers.visium"):
        m = load_manifest(_manifest(tmp_path, sections))
    assert m.sections[0].spots.name == "tissue_positions.parquet"
    assert "using tissue_positions.parquet (preferred over tissue_positions.csv, tissue_positions_list.csv)" in caplog.text
    assert read_section_spots(m.sections[0]).height == int((pos["array_row"] % 2 == 0).sum())
    (outs / "spatial" / "tissue_positions.parquet").unlink()
    m = load_manifest(_manifest(tmp_path, sections))
    assert m.sections[0].spots.name == "tissue_positions.csv" and read_section_spots(m.sections[0]).height == pos.height


def test_explicit_keys_win_over_the_folder(tmp_path, caplog):
    a, b, pos = _two(tmp_path)
    _save_scan(b, tmp_path / "scan.png")
    tis = pos.filter(pl.col("in_tissue") == 1)
    pl.DataFrame({"spot_id": tis["barcode"], "x_px": tis["pxl_col_in_fullres"].cast(pl.Float64), "y_px": tis["pxl_row_in_fullres"].cast(pl.Float64)}).head(40).write_csv(tmp_path / "spots.csv")
    write_10x(tmp_path / "other.h5", tis["barcode"].to_list(), ["G0", "G1", "ADT"], np.ones((tis.height, 3), int))
    m = load_manifest(_manifest(tmp_path, [
        {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True, "spots": "spots.csv", "counts": "other.h5", "pixel_size_um": 3.0},
        {"name": "B", "z_um": 10, "visium": "B/outs", "image": "scan.png", "truth": "other.h5"},
        {"name": "C", "z_um": 20, "image": "scan.png"},
    ], pixel_size_um=0.25, spot_diameter_um=55, spot_pitch_um=100))
    A, B, C = m.sections
    assert A.spots == tmp_path / "spots.csv" and A.counts == tmp_path / "other.h5"
    assert A.pixel_size_um == 3.0 and A.pixel_size_source == "manifest"
    assert A.image.name == "tissue_hires_image.png" and A.spot_scale == HIRES  # explicit spots are full-resolution too
    assert read_section_spots(A).height == 40
    assert B.image == tmp_path / "scan.png" and B.spot_scale == 1.0 and B.truth == tmp_path / "other.h5"
    assert B.pixel_size_um == 0.25 and B.pixel_size_source == "manifest"  # global size describes full-resolution scans
    assert C.pixel_size_um == 0.25
    # a section showing a Space Ranger PNG never takes the global (scan) pixel size
    with caplog.at_level(logging.INFO, logger="asign_assets.ingest.manifest"):
        m2 = load_manifest(_manifest(tmp_path, [
            {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
            {"name": "C", "z_um": 20, "image": "scan.png"},
        ], pixel_size_um=0.25, spot_diameter_um=55, spot_pitch_um=100))
    assert m2.sections[0].pixel_size_um == pytest.approx(FULLRES_UM / HIRES, rel=0.01)
    assert "global pixel_size_um describes full-resolution scans" in caplog.text


def test_truth_from_the_folder_and_round_trip(tmp_path):
    a, b, _ = _two(tmp_path)
    c, _ = make_outs(tmp_path / "C", counts=False, seed=2)
    path = _manifest(tmp_path, [
        {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
        {"name": "B", "z_um": 10, "visium": "B/outs", "truth": True},
        {"name": "C", "z_um": 20, "visium": "C"},
    ])
    m = load_manifest(path)
    assert m.sections[1].truth == b / "filtered_feature_bc_matrix.h5" and m.sections[1].counts is None
    assert m.sections[2].truth is None and m.has_truth
    assert m.without_truth().sections[1].truth is None
    out = write_manifest(m, tmp_path / "sub" / "copy.yaml")
    written = yaml.safe_load(out.read_text())["sections"]
    assert written[0] == {"name": "A", "z_um": 0.0, "visium": "../A/outs", "measured": True}
    assert written[1] == {"name": "B", "z_um": 10.0, "visium": "../B/outs", "truth": True}
    assert load_manifest(out).sections == m.sections
    # the fingerprint ignores truth: true like any truth
    no_truth = _manifest(tmp_path, [
        {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
        {"name": "B", "z_um": 10, "visium": "B/outs"},
        {"name": "C", "z_um": 20, "visium": "C"},
    ])
    assert load_manifest(no_truth).input_fingerprint() == m.input_fingerprint()


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "asign_assets.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_visium_writes_a_manifest_that_validates(tmp_path):
    make_outs(tmp_path / "data" / "S1" / "outs", seed=1)
    make_outs(tmp_path / "data" / "S2" / "outs", seed=2, hires=False)
    make_outs(tmp_path / "data" / "S3", seed=3)  # a folder with spatial/ that is not called outs
    r = _run_cli("import-visium", "data/S2/outs", "data/S1/outs", "data/S3", "--measured", "S1", "--with-truth",
                 "--z-step-um", "12", "--out", "man/stack.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    assert out == tmp_path / "man" / "stack.yaml"
    raw = yaml.safe_load(out.read_text())
    assert [s["name"] for s in raw["sections"]] == ["S2", "S1", "S3"]  # stack order as given, names from outs parents
    assert [s["z_um"] for s in raw["sections"]] == [0.0, 12.0, 24.0]
    assert raw["sections"][0] == {"name": "S2", "z_um": 0.0, "visium": "../data/S2/outs", "truth": True}
    assert raw["sections"][1]["measured"] is True and "truth" not in raw["sections"][1]
    assert not any(k in s for s in raw["sections"] for k in ("image", "pixel_size_um", "spots", "counts"))  # nothing hand-made
    assert raw["sample_id"] == "visium_S1"
    assert "S2:" in r.stderr and "tissue_lowres_image.png" in r.stderr and "truth:" in r.stderr
    m = load_manifest(out)
    assert m.sections[0].pixel_size_um == pytest.approx(FULLRES_UM / LOWRES, rel=0.01)
    v = _run_cli("validate", str(out), cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    assert v.stdout.strip().endswith(f"{out}: OK")
    assert "S1:" in v.stdout and "[measured]" in v.stdout
    # a bad folder: exit 1, the folder and the problem on stderr, nothing on stdout, no manifest
    shutil.rmtree(tmp_path / "data" / "S2" / "outs" / "spatial")
    bad = _run_cli("import-visium", "data/S1/outs", "data/S2/outs", "--measured", "S1", "--out", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert f"asign: error: {tmp_path / 'data' / 'S2' / 'outs' / 'spatial'}: folder not found" in bad.stderr
    assert not (tmp_path / "bad.yaml").exists()


def test_registered_visium_stack_materialises_sections_and_expression(tmp_path, asign_home):
    """Storage writes the manifest back and the assets reload it: spots arrive in the PNG's frame."""
    import anndata as ad
    import dagster as dg

    from asign_assets.pipeline.assets.ingest import expression, sections
    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.storage.store import Storage

    make_outs(tmp_path / "S1" / "outs", seed=1)
    _, pos2 = make_outs(tmp_path / "S2" / "outs", seed=2, hires=False)
    path, _ = manifest_from_visium([tmp_path / "S1" / "outs", tmp_path / "S2" / "outs"], measured="S2", with_truth=True, out=tmp_path / "m.yaml")
    manifest = load_manifest(path)
    store = Storage(asign_home)
    store.register(manifest)
    assert store.load_registered(manifest.sample_id).sections == manifest.sections
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    defs = build_definitions(storage_root=str(asign_home), device="cpu")
    result = dg.materialize([sections, expression], partition_key=manifest.sample_id, resources=defs.resources, instance=instance, raise_on_error=False)
    assert result.success
    spots = pl.read_parquet(store.local_path(manifest.sample_id, "sections") / "spots.parquet")
    s2 = spots.filter(pl.col("section") == "S2")
    tis = pos2.filter(pl.col("in_tissue") == 1)
    assert s2["spot_id"].to_list() == tis["barcode"].to_list() and not s2["virtual"].any()
    np.testing.assert_allclose(s2["x_px"].to_numpy(), tis["pxl_col_in_fullres"].to_numpy() * LOWRES)
    records = {r["name"]: r for r in json.loads((store.local_path(manifest.sample_id, "sections") / "sections.json").read_text())}
    assert (records["S2"]["width"], records["S2"]["height"]) == (round(FULL_W * LOWRES), round(FULL_H * LOWRES))
    assert records["S2"]["pixel_size_um"] == pytest.approx(FULLRES_UM / LOWRES, rel=0.01)
    assert records["S1"]["pixel_size_um"] == pytest.approx(FULLRES_UM / HIRES, rel=0.01)
    assert ad.read_h5ad(store.local_path(manifest.sample_id, "expression.h5ad")).n_obs == tis.height


@pytest.mark.parametrize(
    "args, problem",
    [
        (["A/outs", "B/outs", "--measured", "X"], "measured section 'X' is not among the sections ['A', 'B']"),
        (["A/outs", "A/outs", "--measured", "A"], "duplicate section names"),
        (["A/outs", "nowhere", "--measured", "A"], "Visium folder not found"),
        (["A/outs", "bad name", "--measured", "A"], "section name 'bad name' (from the folder name) must be"),
    ],
)
def test_import_visium_bad_arguments(tmp_path, args, problem):
    _two(tmp_path)
    make_outs(tmp_path / "bad name")
    with pytest.raises(InputError, match=re.escape(problem)):
        manifest_from_visium([tmp_path / a for a in args[:-2]], measured=args[-1], out=tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def _visium_anndata(pos: pl.DataFrame, arrays: bool = True, libraries: int = 1):
    """An AnnData as scanpy.read_visium leaves it (in-tissue spots, float images in [0, 1])."""
    import anndata as ad
    import scipy.sparse as sp

    tis = pos.filter(pl.col("in_tissue") == 1)
    X = sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (tis.height, 12)).astype(np.float32))
    a = ad.AnnData(X=X)
    a.obs_names = tis["barcode"].to_list()
    a.var_names = [f"G{i}" for i in range(12)]
    a.obs["in_tissue"] = tis["in_tissue"].to_numpy()
    if arrays:
        a.obs["array_row"] = tis["array_row"].to_numpy()
        a.obs["array_col"] = tis["array_col"].to_numpy()
    a.obsm["spatial"] = np.stack([tis["pxl_col_in_fullres"].to_numpy(), tis["pxl_row_in_fullres"].to_numpy()], 1)
    hires = np.asarray(scan_image(pos, HIRES), dtype=np.float32) / 255.0
    lowres = np.asarray(scan_image(pos, LOWRES), dtype=np.float32) / 255.0
    a.uns["spatial"] = {
        f"lib{i}": {"images": {"hires": hires, "lowres": lowres},
                    "scalefactors": {"tissue_hires_scalef": HIRES, "tissue_lowres_scalef": LOWRES, "spot_diameter_fullres": 150.0}}
        for i in range(libraries)
    }
    return a


@pytest.mark.parametrize("arrays", [True, False])
def test_anndata_is_a_complete_section(tmp_path, asign_home, arrays):
    pos = hex_lattice(seed=4)
    _visium_anndata(pos, arrays=arrays).write_h5ad(tmp_path / "a.h5ad")
    make_outs(tmp_path / "B")
    m = load_manifest(_manifest(tmp_path, [
        {"name": "A", "z_um": 0, "anndata": "a.h5ad", "measured": True},
        {"name": "B", "z_um": 10, "visium": "B"},
    ]))
    (A,) = m.measured_sections
    assert A.counts == A.spots == A.anndata == tmp_path / "a.h5ad"
    assert A.image.is_relative_to(asign_home / "cache" / "anndata-images") and A.image.suffix == ".png"
    assert A.spot_scale == HIRES
    img = np.asarray(Image.open(A.image).convert("RGB"))
    np.testing.assert_array_equal(img, np.asarray(scan_image(pos, HIRES)))  # float [0, 1] back to the same uint8 pixels
    spots = read_section_spots(A)
    tis = pos.filter(pl.col("in_tissue") == 1)
    np.testing.assert_allclose(spots["x_px"].to_numpy(), tis["pxl_col_in_fullres"].to_numpy() * HIRES)
    hit = img[np.round(spots["y_px"].to_numpy()).astype(int), np.round(spots["x_px"].to_numpy()).astype(int)]
    assert (hit == MARK).all()
    assert A.pixel_size_um == pytest.approx(FULLRES_UM / HIRES, rel=0.01)
    assert A.pixel_size_source.startswith("anndata lattice" if arrays else "anndata spot spacing")
    # loading again reuses the cached PNG; writing back keeps the anndata form
    assert load_manifest(m.path).measured_sections[0].image == A.image
    written = yaml.safe_load(write_manifest(m, tmp_path / "copy.yaml").read_text())["sections"][0]
    assert written == {"name": "A", "z_um": 0.0, "anndata": "a.h5ad", "measured": True}


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_read_spots_rejects_a_bad_scale(tmp_path, scale):
    from asign_assets.readers.spots import read_spots

    outs, _ = make_outs(tmp_path / "A", counts=False, hires=False, lowres=False)
    with pytest.raises(InputError, match="spot scale must be a positive finite number"):
        read_spots(outs / "spatial" / "tissue_positions_list.csv", scale=scale)


def _set_json(outs: Path, text: str) -> None:
    (outs / "spatial" / "scalefactors_json.json").write_text(text)


ERROR_CASES = {
    "no spatial folder": (lambda o: shutil.rmtree(o / "spatial"), "spatial", "folder not found"),
    "no positions": (lambda o: (o / "spatial" / "tissue_positions_list.csv").unlink(), "spatial", "no tissue positions file"),
    "no image": (lambda o: [(o / "spatial" / f).unlink() for f in ("tissue_hires_image.png", "tissue_lowres_image.png")], "spatial", "no image"),
    "no scalefactors": (lambda o: (o / "spatial" / "scalefactors_json.json").unlink(), "scalefactors_json.json", "scale factors file not found"),
    "bad json": (lambda o: _set_json(o, "{not json"), "scalefactors_json.json", "not valid JSON"),
    "missing scalef": (lambda o: _set_json(o, '{"tissue_lowres_scalef": 0.05}'), "scalefactors_json.json", "field 'tissue_hires_scalef': scale factor missing"),
    "negative scalef": (lambda o: _set_json(o, '{"tissue_hires_scalef": -0.2}'), "scalefactors_json.json", "must be a positive finite number"),
    "no in-tissue spots": (
        lambda o: write_positions(o / "spatial", hex_lattice().with_columns(pl.lit(0, pl.Int64).alias("in_tissue")), "list"),
        "tissue_positions_list.csv", "no in-tissue spots",
    ),
    "measured without counts": (lambda o: (o / "filtered_feature_bc_matrix.h5").unlink(), "filtered_feature_bc_matrix.h5", "the measured section needs its counts"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_space_ranger_folders(tmp_path, case):
    a, b, _ = _two(tmp_path)
    damage, file, problem = ERROR_CASES[case]
    damage(a)
    with pytest.raises(InputError) as exc:
        load_manifest(_manifest(tmp_path, [
            {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
            {"name": "B", "z_um": 10, "visium": "B/outs"},
        ]))
    msg = str(exc.value)
    assert msg.startswith(str(a)) and file in msg.split(":")[0] and problem in msg, msg


@pytest.mark.parametrize(
    "section, problem",
    [
        ({"visium": "A/outs", "anndata": "a.h5ad"}, "give either 'visium' or 'anndata', not both"),
        ({"image": "B/outs/spatial/tissue_lowres_image.png", "truth": True, "pixel_size_um": 1}, "'truth: true' takes the counts"),
        ({"visium": "C", "truth": True}, "'truth: true' but the folder has no filtered_feature_bc_matrix.h5"),
        ({"visium": "missing"}, "file not found"),
        ({}, "field 'sections[1].image': is required but missing (or give 'visium"),
    ],
)
def test_bad_visium_sections(tmp_path, section, problem):
    _two(tmp_path)
    make_outs(tmp_path / "C", counts=False)
    with pytest.raises(InputError) as exc:
        load_manifest(_manifest(tmp_path, [
            {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
            {"name": "X", "z_um": 10, **section},
        ], spot_diameter_um=55, spot_pitch_um=100))
    assert problem in str(exc.value)


def test_mixed_stack_needs_spot_geometry(tmp_path):
    _two(tmp_path)
    _save_scan(tmp_path / "B" / "outs", tmp_path / "scan.png")
    with pytest.raises(InputError, match="field 'spot_pitch_um': is required"):
        load_manifest(_manifest(tmp_path, [
            {"name": "A", "z_um": 0, "visium": "A/outs", "measured": True},
            {"name": "C", "z_um": 10, "image": "scan.png", "pixel_size_um": 0.5},
        ], spot_diameter_um=55))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda a: a.obsm.pop("spatial"), "no obsm['spatial']"),
        (lambda a: a.uns["spatial"].update({"lib1": a.uns["spatial"]["lib0"]}), "need exactly one library in uns['spatial']"),
        (lambda a: a.uns["spatial"]["lib0"].update({"images": {}}), "no 'hires' or 'lowres' image"),
        (lambda a: a.uns["spatial"]["lib0"]["scalefactors"].pop("tissue_hires_scalef"), "field 'tissue_hires_scalef': scale factor missing"),
        (lambda a: a.obs.__setitem__("in_tissue", 0), "no in-tissue spots"),
    ],
)
def test_bad_anndata(tmp_path, asign_home, change, problem):
    a = _visium_anndata(hex_lattice())
    change(a)
    a.write_h5ad(tmp_path / "a.h5ad")
    make_outs(tmp_path / "B")
    with pytest.raises(InputError) as exc:
        load_manifest(_manifest(tmp_path, [
            {"name": "A", "z_um": 0, "anndata": "a.h5ad", "measured": True},
            {"name": "B", "z_um": 10, "visium": "B"},
        ]))
    assert str(exc.value).startswith(str(tmp_path / "a.h5ad")) and problem in str(exc.value)
    assert not (asign_home / "cache").exists()


@pytest.mark.slow
def test_real_dlpfc_import_and_validate(tmp_path):
    if not (DLPFC / "151673" / "spatial").is_dir():
        pytest.skip(f"real DLPFC Visium data not found at {DLPFC} (../shared/data/dlpfc relative to the project, or $ASIGN_DLPFC)")
    r = _run_cli("import-visium", str(DLPFC / "151674"), str(DLPFC / "151673"), "--measured", "151674", "--with-truth",
                 "--out", str(tmp_path / "dlpfc.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    m = load_manifest(out)
    assert m.section_names == ["151674", "151673"] and m.measured_sections[0].name == "151674"
    assert m.sections[1].truth == DLPFC / "151673" / "filtered_feature_bc_matrix.h5"
    for spec in m.sections:
        assert spec.image.name == "tissue_lowres_image.png"
        # README: spot centres 100 um apart are ~137 full-resolution px, i.e. ~0.73 um/px
        assert spec.pixel_size_um * spec.spot_scale == pytest.approx(0.7246, rel=0.01)
        assert spec.pixel_size_um == pytest.approx(16.1, rel=0.01)
    assert "3673 spots joined" in r.stderr and "3639 spots joined" in r.stderr
    v = _run_cli("validate", str(out), cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    assert "151674: 3673 spots (0 virtual)" in v.stdout and "151673: 3639 spots (0 virtual)" in v.stdout
