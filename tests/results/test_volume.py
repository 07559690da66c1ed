"""The dense OME-Zarr volume: gridding, z interpolation, tissue, NGFF metadata, readers."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from asign_assets.pipeline.assets.volume import MIN_AGREEMENT
from asign_assets.results.volume import (
    VolumeGrid,
    VolumeParams,
    gridding_operator,
    make_grid,
    open_ome_zarr,
    sample_at,
    spot_agreement,
    spot_pitch_um,
    tissue_in_common_frame,
    write_ome_zarr,
)

PITCH = 100.0


def _hex(n: int, pitch: float = PITCH) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    return np.stack([((i + 0.5 * (j % 2)) * pitch).ravel(), (j * pitch * np.sqrt(3) / 2).ravel()], 1)


def _stack(z=(0.0, 16.0, 32.0), n=20, jitter=4.0, seed=0):
    rng = np.random.default_rng(seed)
    xy = _hex(n)
    xyz = np.concatenate([np.c_[xy + rng.normal(0, jitter, xy.shape), np.full(len(xy), zz)] for zz in z])
    code = np.repeat(np.arange(len(z)), len(xy))
    return xyz, code


def test_default_voxels_are_half_pitch_and_smallest_spacing():
    xyz, code = _stack(z=(0.0, 10.0, 30.0), jitter=0.0)
    assert spot_pitch_um(xyz[code == 0, :2]) == pytest.approx(PITCH)
    g = make_grid(xyz, [0.0, 10.0, 30.0], PITCH)
    assert g.voxel_um == pytest.approx((10.0, 50.0, 50.0))
    assert g.shape[0] == 4 and g.axis(0)[-1] == pytest.approx(30.0)
    g2 = make_grid(xyz, [0.0, 10.0, 30.0], PITCH, VolumeParams(voxel_xy_um=25.0, voxel_z_um=5.0))
    assert g2.voxel_um == pytest.approx((5.0, 25.0, 25.0)) and g2.shape[0] == 7
    # the grid covers every spot
    assert np.all(g.axis(2)[0] <= xyz[:, 0]) and np.all(g.axis(2)[-1] >= xyz[:, 0])


def test_voxels_reproduce_spot_values_even_for_noise():
    """Spot agreement: median Spearman over genes >= 0.9 between spots and their voxels,
    with half the genes pure spatially-white noise (the hardest case for a smoothing kernel)."""
    xyz, code = _stack()
    rng = np.random.default_rng(1)
    smooth = np.sin(xyz[:, :1] / 250.0 * np.arange(1, 11) / 3.0)
    noise = rng.normal(size=(len(xyz), 10))
    values = np.concatenate([smooth + 0.3 * rng.normal(size=smooth.shape), noise], 1).astype(np.float32)
    op = gridding_operator(xyz, code)
    vol = op.apply(values)
    assert vol.shape == (20, 3, *op.grid.shape[1:])
    r = spot_agreement(vol, op.grid, xyz, values)
    assert np.median(r) >= 0.9 and np.median(r[10:]) >= 0.85, r
    # a voxel is a weighted mean of nearby spots: inside their range
    assert vol.max() <= values.max() + 1e-5 and vol[:, op.tissue].min() >= values.min() - 1e-5


def test_linear_in_z_between_sections_and_exact_at_sections():
    xyz, code = _stack(z=(0.0, 40.0), jitter=0.0)
    values = np.where(code == 0, 1.0, 3.0)[:, None].astype(np.float32)
    op = gridding_operator(xyz, code, params=VolumeParams(voxel_z_um=10.0))
    vol = op.apply(values)[0]
    assert op.grid.shape[0] == 5
    t = op.tissue
    np.testing.assert_allclose(vol[0][t[0]], 1.0, atol=1e-5)
    np.testing.assert_allclose(vol[4][t[4]], 3.0, atol=1e-5)
    np.testing.assert_allclose(vol[1][t[1]], 1.5, atol=1e-5)
    np.testing.assert_allclose(vol[2][t[2]], 2.0, atol=1e-5)
    assert (vol[~t] == 0).all()


def test_tissue_is_the_registered_mask_within_reach_of_spots():
    xyz, code = _stack(z=(0.0, 20.0), jitter=0.0)
    grid = make_grid(xyz, [0.0, 20.0], PITCH)
    # own-frame mask of 10 um pixels covering x < 1000 um; section 1 is shifted by +500 um in x
    mask = np.zeros((300, 300), bool)
    mask[:, :100] = True
    ident = sitk.TranslationTransform(2, (0.0, 0.0))
    shift = sitk.TranslationTransform(2, (500.0, 0.0))  # common -> own
    m0 = tissue_in_common_frame(mask, 10.0, ident, grid)
    m1 = tissue_in_common_frame(mask, 10.0, shift, grid)
    x, y = grid.axis(2), grid.axis(1)
    in_y = y > 10  # the mask starts at own y = 0
    assert m0[in_y][:, (x > 10) & (x < 990)].all() and not m0[:, x > 1010].any() and not m0[:, x < -10].any()
    assert m1[in_y][:, x < 490].all() and not m1[:, x > 510].any()
    op = gridding_operator(xyz, code, [m0, m1], grid=grid, pitch_um=PITCH)
    assert not op.tissue[0][:, x > 1010].any() and not op.tissue[1][:, x > 510].any()
    # far outside the spot array is never tissue, even where the mask says so
    far = np.ones((400, 400), bool)
    big = sitk.TranslationTransform(2, (1000.0, 1000.0))  # the mask covers the whole grid
    op2 = gridding_operator(xyz, code, [tissue_in_common_frame(far, 10.0, big, grid)] * 2, grid=grid, pitch_um=PITCH)
    xx, yy = np.meshgrid(x, y)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xyz[code == 0, :2]).query(np.stack([xx.ravel(), yy.ravel()], 1))
    np.testing.assert_array_equal(op2.tissue[0].ravel(), d < PITCH)  # reach: strictly within one pitch
    vals = np.ones((len(xyz), 1), np.float32)
    assert (op2.apply(vals)[0][op2.tissue] == pytest.approx(1.0))


def test_ome_zarr_metadata_chunks_and_zarr_only_read(tmp_path):
    xyz, code = _stack(n=40)
    values = np.random.default_rng(2).random((len(xyz), 4)).astype(np.float32)
    op = gridding_operator(xyz, code)
    vol = op.apply(values)
    genes = ["ERBB2", "CD74", "MUCL1", "KRT19"]
    path = tmp_path / "v.ome.zarr"
    write_ome_zarr(path, vol, genes, op.grid, op.tissue, attrs={"unit": "log1p_cp10k"})
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][0]["type"] == "channel" and all(a["unit"] == "micrometer" and a["type"] == "space" for a in ms["axes"][1:])
    assert len(ms["datasets"]) >= 2
    for lv, ds in enumerate(ms["datasets"]):
        tr = ds["coordinateTransformations"]
        assert [t["type"] for t in tr] == ["scale", "translation"]
        assert tr[0]["scale"] == pytest.approx([1.0, op.grid.voxel_um[0], op.grid.voxel_um[1] * 2**lv, op.grid.voxel_um[2] * 2**lv])
        assert tr[1]["translation"] == pytest.approx([0.0, *op.grid.origin_um])
    assert [c["label"] for c in attrs["omero"]["channels"]] == genes
    assert attrs["asign"]["genes"] == genes and attrs["asign"]["unit"] == "log1p_cp10k"
    # one gene per chunk at every level
    root = zarr.open_group(str(path), mode="r")
    for ds in ms["datasets"]:
        a = root[ds["path"]]
        assert a.chunks == (1, *a.shape[1:])
    lab = json.loads((path / "labels" / "tissue" / ".zattrs").read_text())
    assert json.loads((path / "labels" / ".zattrs").read_text())["labels"] == ["tissue"]
    assert [a["name"] for a in lab["multiscales"][0]["axes"]] == ["z", "y", "x"] and "image-label" in lab
    np.testing.assert_array_equal(root["labels/tissue/0"][:], op.tissue.astype(np.uint8))
    # zarr-only reader: the voxel at a spot, located with the stored transforms, holds the written value
    o = open_ome_zarr(path)
    assert o.channels == genes and o.grid == op.grid
    g = o.channel_index("MUCL1")
    np.testing.assert_array_equal(o.levels[0][g], vol[g])
    np.testing.assert_allclose(sample_at(o.levels[0][:], o.grid, xyz[:5]), sample_at(vol, op.grid, xyz[:5]))
    # level 1 subsamples x and y by 2 from voxel 0 (same translation)
    np.testing.assert_array_equal(o.levels[1][g], vol[g][:, ::2, ::2])


def test_ome_zarr_python_reader(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    xyz, code = _stack()
    op = gridding_operator(xyz, code)
    vol = op.apply(np.arange(2 * len(xyz), dtype=np.float32).reshape(-1, 2))
    path = tmp_path / "v.ome.zarr"
    write_ome_zarr(path, vol, ["A", "B"], op.grid, op.tissue)
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    np.testing.assert_allclose(np.asarray(image.data[0]), vol)
    assert image.metadata["channel_names"] == ["A", "B"]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    label = [n for n in nodes if n.metadata.get("name") == "tissue"]
    assert label and np.asarray(label[0].data[0]).shape == op.grid.shape


def test_grid_index_and_sampling():
    g = VolumeGrid((0.0, 10.0, 20.0), (5.0, 2.0, 2.0), (3, 4, 4))
    np.testing.assert_array_equal(g.index_of(np.array([[5.1, 12.9, 20.2], [100.0, -50.0, 0.0]])), [[1, 1, 0], [2, 0, 0]])
    vol = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    assert sample_at(vol, g, np.array([[20.0, 10.0, 10.0]]))[0, 0] == vol[0, 2, 0, 0]


def test_expression_volume_asset(materialised_small):
    store, sid, result = materialised_small
    o = open_ome_zarr(store.local_path(sid, "expression_volume") / "expression.ome.zarr")
    u = open_ome_zarr(store.local_path(sid, "expression_volume") / "uncertainty.ome.zarr")
    import anndata as ad

    a = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    assert o.channels == list(a.var_names) and u.grid == o.grid
    assert o.attrs["unit"] == a.uns["normalisation"]["normalisation"] == "log1p_cp10k"
    assert [s["name"] for s in o.attrs["sections"]] == list(a.obs["section"].cat.categories)
    r = spot_agreement(o.levels[0][:], o.grid, a.obsm["spatial_3d"], np.asarray(a.X))
    assert np.nanmedian(r) >= MIN_AGREEMENT
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks["volume_reproduces_spots"] is True
    unc = u.levels[0][:]
    assert (unc >= 0).all() and unc[:, np.asarray(u.tissue[:], bool)].max() > 0


@pytest.mark.slow
def test_patient_c_volume_and_uncertainty(patient_c_run):
    """HER2ST patient C (C4 measured): the volume reproduces the spots, and the uncertainty
    ranks the absolute errors of every held-out section the right way (Spearman > 0)."""
    import polars as pl

    store, sid, result = patient_c_run
    assert result.success
    o = open_ome_zarr(store.local_path(sid, "expression_volume") / "expression.ome.zarr")
    assert [s["name"] for s in o.attrs["sections"]] == ["C2", "C3", "C4", "C5", "C6"]
    assert o.grid.voxel_um[0] == pytest.approx(16.0)  # the section spacing
    import anndata as ad

    a = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    assert np.nanmedian(spot_agreement(o.levels[0][:], o.grid, a.obsm["spatial_3d"], np.asarray(a.X))) >= 0.9
    ev = pl.read_parquet(store.local_path(sid, "evaluation.parquet"))
    unc = ev.filter((pl.col("metric") == "unc_spearman") & (pl.col("section") != "pooled"))
    assert set(unc["section"]) == {"C2", "C3", "C5", "C6"} and (unc["value"] > 0).all(), unc
    cov = ev.filter((pl.col("metric") == "coverage_80") & (pl.col("section") == "pooled"))["value"][0]
    assert 0.5 < cov <= 1.0
