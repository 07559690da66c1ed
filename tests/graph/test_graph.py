"""The sparse 3D spot graph on toy lattices."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from asign_assets.errors import InputError
from asign_assets.graph.build import (
    GraphParams,
    build_graph_3d,
    edges_frame,
    merge_edges,
    shifted_copy,
    similarity_edges,
    write_edges_parquet,
)
from asign_assets.graph.edge_types import EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY

PITCH = 100.0


def _lattice(n_sections=3, side=4, offset=(0.0, 0.0)):
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    xy = np.stack([xx.ravel(), yy.ravel()], 1) * PITCH
    rows = []
    for s in range(n_sections):
        p = xy + np.asarray(offset) * s
        rows.append(pl.DataFrame({"section_index": np.full(len(p), s, np.int32), "x_um": p[:, 0], "y_um": p[:, 1], "z_um": np.full(len(p), 10.0 * s)}))
    return pl.concat(rows)


def _tiles(spots, per_section=4):
    sec = spots["section_index"].to_numpy()
    n_sec = int(sec.max()) + 1
    tile_xy = np.tile(np.array([[0, 0], [1, 0], [0, 1], [1, 1]], float)[:per_section] * 1000, (n_sec, 1))
    tile_sec = np.repeat(np.arange(n_sec), per_section)
    spot_tile = sec * per_section  # every spot in its section's first tile
    return spot_tile, tile_xy, tile_sec


def _build(spots, emb=None, **kw):
    n = spots.height
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 8)).astype(np.float32) if emb is None else emb
    st, txy, tsec = _tiles(spots)
    params = GraphParams(**{"pitch_um": PITCH, "k_intra": 4, "intra_max_pitch": 1.1, "overlap": "iou", "spot_radius_um": 40.0, "k_similarity": 2, "similarity_radius_um": None, "similarity_sections": None, "k_tile": 2, "neighbour_sections": 1, "depth_weight": False, **kw})
    return build_graph_3d(spots, emb, st, st, txy, tsec, txy, tsec, params)


def _pairs(data, etype):
    ei = data.edge_index[:, data.edge_type == etype].numpy()
    return set(zip(ei[0].tolist(), ei[1].tolist()))


def test_edge_counts_on_toy_lattice():
    spots = _lattice()
    g = _build(spots)
    assert g.num_nodes == 48
    # 4x4 lattice: 2 * 4 * 3 = 24 lattice edges per section, 3 sections, both directions
    intra = _pairs(g, EDGE_INTRA)
    assert len(intra) == 2 * 24 * 3
    sec = g.section.numpy()
    assert all(sec[a] == sec[b] for a, b in intra)
    pos = g.pos.numpy()
    assert all(abs(np.linalg.norm(pos[a, :2] - pos[b, :2]) - PITCH) < 1e-6 for a, b in intra)
    # overlap: stacked without offset -> exactly the same-xy spot of the neighbouring section, IoU 1
    ov = g.edge_index[:, g.edge_type == EDGE_OVERLAP].numpy()
    assert ov.shape[1] == 2 * 16 * 2  # sections 0-1 and 1-2, both directions, none 0-2
    assert set(np.abs(sec[ov[0]] - sec[ov[1]]).tolist()) == {1}
    np.testing.assert_allclose(pos[ov[0], :2], pos[ov[1], :2])
    np.testing.assert_allclose(g.edge_weight[g.edge_type == EDGE_OVERLAP].numpy(), 1.0)
    # every edge type is symmetric
    for t in (EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY):
        p = _pairs(g, t)
        assert p == {(b, a) for a, b in p}
    assert g.edge_weight.dtype == torch.float32 and g.pos.shape == (48, 3)


def test_overlap_modes_with_offset():
    spots = _lattice(n_sections=2, offset=(10.0, 0.0))  # second section shifted by 10 um
    g_iou = _build(spots)
    w = g_iou.edge_weight[g_iou.edge_type == EDGE_OVERLAP].numpy()
    from asign_assets.graph.geometry import disc_iou

    assert len(w) == 2 * 16 and np.allclose(w, disc_iou(10.0, 40.0, 40.0))
    g_rad = _build(spots, overlap="radius", effective_radius_um=PITCH)  # enlarged discs reach lattice neighbours
    assert (g_rad.edge_type == EDGE_OVERLAP).sum() > 2 * 16
    g_gau = _build(spots, overlap="gaussian", gaussian_sigma_um=50.0)
    wg = g_gau.edge_weight[g_gau.edge_type == EDGE_OVERLAP].numpy()
    assert wg.max() == pytest.approx(np.exp(-0.5 * (10 / 50) ** 2), rel=1e-6)
    assert wg.min() > 0 and len(wg) > 2 * 16


def test_similarity_joins_other_sections_and_finds_twins():
    spots = _lattice()
    n = spots.height
    rng = np.random.default_rng(1)
    base = rng.normal(size=(16, 16))
    emb = np.tile(base, (3, 1)) + 0.01 * rng.normal(size=(n, 16))  # same lattice position = same look
    g = _build(spots, emb=emb.astype(np.float32), k_similarity=1)
    sim = g.edge_index[:, g.edge_type == EDGE_SIMILARITY].numpy()
    sec = g.section.numpy()
    assert sim.shape[1] > 0 and np.all(sec[sim[0]] != sec[sim[1]])
    assert np.all(sim[0] % 16 == sim[1] % 16)  # twins: same lattice position in another section
    assert np.all(g.edge_weight[g.edge_type == EDGE_SIMILARITY].numpy() > 0.99)


def test_similarity_radius_path_equals_dense_path():
    spots = _lattice(n_sections=4)
    xy = spots.select("x_um", "y_um").to_numpy()
    sec = spots["section_index"].to_numpy()
    emb = np.random.default_rng(2).normal(size=(len(xy), 8)).astype(np.float32)
    dense = similarity_edges(xy, sec, emb, GraphParams(k_similarity=3, similarity_radius_um=None, similarity_sections=None))
    radius = similarity_edges(xy, sec, emb, GraphParams(k_similarity=3, similarity_radius_um=1e6, similarity_sections=None, chunk_pairs=97))
    for a, b in zip(dense, radius):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # a radius below the pitch leaves only the same-xy candidates
    near = similarity_edges(xy, sec, emb, GraphParams(k_similarity=3, similarity_radius_um=1.0, similarity_sections=1))
    np.testing.assert_allclose(xy[near[0]], xy[near[1]])
    assert np.all(np.abs(sec[near[0]] - sec[near[1]]) == 1)


def test_tile_graphs_stay_within_sections_and_outputs(tmp_path):
    spots = _lattice()
    g = _build(spots)
    tsec = np.repeat(np.arange(3), 4)
    for ei in (g.region_edge_index, g.global_edge_index):
        ei = ei.numpy()
        assert ei.shape[0] == 2 and ei.shape[1] == 3 * 4 * 2  # 2-NN of a 4-tile square: its two sides
        assert np.all(tsec[ei[0]] == tsec[ei[1]])
    assert g.spot_region.tolist() == (g.section * 4).tolist()
    # parquet + merged adjacency
    path = tmp_path / "edges.parquet"
    write_edges_parquet(g, path)
    df = pl.read_parquet(path)
    assert df.columns == ["src", "dst", "type", "weight"] and df.height == g.edge_index.shape[1]
    assert df.equals(edges_frame(g))
    ei, w = merge_edges(g.edge_index, g.edge_weight, g.num_nodes)
    assert ei.shape[1] == len(set(zip(*g.edge_index.tolist())))
    assert w.sum().item() == pytest.approx(g.edge_weight.sum().item(), rel=1e-6)


def test_merge_sums_duplicate_pairs():
    ei = torch.tensor([[0, 0, 1, 2], [1, 1, 0, 0]])
    w = torch.tensor([0.5, 0.25, 1.0, 2.0])
    m, mw = merge_edges(ei, w, 3)
    assert m.tolist() == [[0, 1, 2], [1, 0, 0]] and mw.tolist() == [0.75, 1.0, 2.0]


def test_bad_inputs():
    spots = _lattice()
    st, txy, tsec = _tiles(spots)
    emb = np.zeros((spots.height, 4), np.float32)
    with pytest.raises(InputError, match="spot_region"):
        build_graph_3d(spots, emb, st + 100, st, txy, tsec, txy, tsec, GraphParams())
    with pytest.raises(InputError, match="spot_emb"):
        build_graph_3d(spots, emb[:5], st, st, txy, tsec, txy, tsec, GraphParams())
    with pytest.raises(InputError, match="z_um"):
        build_graph_3d(spots.drop("z_um"), emb, st, st, txy, tsec, txy, tsec, GraphParams())


def test_for_lattice_scales_defaults():
    p = GraphParams.for_lattice(100.0, 55.0)
    assert p.spot_radius_um == 27.5 and p.gaussian_sigma_um == 50.0 and p.similarity_radius_um == 300.0
    assert p.overlap_cutoff() == pytest.approx(125.0)


def test_depth_weights_decrease_with_dz():
    from asign_assets.graph.build import depth_factor

    p = GraphParams(gaussian_sigma_um=100.0, depth_weight=True)
    f = depth_factor(np.array([0.0, 16.0, 50.0, 100.0, 300.0]), p)
    assert f[0] == 1.0 and np.all(np.diff(f) < 0)
    assert f[3] == pytest.approx(np.exp(-0.5))
    assert depth_factor(100.0, GraphParams(depth_sigma_um=50.0, depth_weight=True)) == pytest.approx(np.exp(-2.0))
    assert depth_factor(300.0, GraphParams(depth_weight=False)) == 1.0


def test_overlap_weights_follow_the_manifest_depths():
    """Same xy offset, sections 16 um vs 116 um apart: the farther pair gets the lower weight."""
    spots = _lattice(n_sections=3)
    z = np.repeat([0.0, 16.0, 132.0], 16)
    spots = spots.with_columns(pl.Series("z_um", z))
    d = _build(spots, overlap="gaussian", gaussian_sigma_um=50.0, neighbour_sections=2, depth_weight=True)
    ei, w, et = d.edge_index.numpy(), d.edge_weight.numpy(), d.edge_type.numpy()
    sec = spots["section_index"].to_numpy()
    ov = et == 1
    same_xy = ov & (ei[0] % 16 == ei[1] % 16)  # co-located spots of two sections
    w_of = {(int(sec[a]), int(sec[b])): float(x) for a, b, x in zip(ei[0][same_xy], ei[1][same_xy], w[same_xy])}
    assert w_of[(0, 1)] == pytest.approx(np.exp(-0.5 * (16 / 50) ** 2), rel=1e-5)
    assert w_of[(1, 2)] == pytest.approx(np.exp(-0.5 * (116 / 50) ** 2), rel=1e-5)
    assert w_of[(0, 2)] < w_of[(1, 2)] < w_of[(0, 1)]
    flat = _build(spots, overlap="gaussian", gaussian_sigma_um=50.0, neighbour_sections=2, depth_weight=False)
    assert float(flat.edge_weight[(flat.edge_type == 1)].max()) == pytest.approx(1.0)


def test_shifted_copy_is_displaced_and_joined_only_by_overlap_edges():
    data = _build(_lattice(n_sections=2, side=4))
    n = int(data.num_nodes)
    meas = torch.nonzero(data.section == 0).flatten()
    k = meas.numel()
    shift = np.array([30.0, -40.0])  # 50 um: half a pitch
    params = GraphParams(pitch_um=PITCH, overlap="iou", spot_radius_um=40.0)
    aug = shifted_copy(data, meas, shift, params)
    assert int(aug.num_nodes) == n + k
    copies = torch.arange(n, n + k)
    # displaced by exactly the shift, same depth, tiles and a section of their own
    np.testing.assert_allclose((aug.pos[copies, :2] - data.pos[meas, :2]).numpy(), np.tile(shift, (k, 1)), atol=1e-4)
    np.testing.assert_array_equal(aug.pos[copies, 2].numpy(), data.pos[meas, 2].numpy())
    assert torch.equal(aug.spot_region[copies], data.spot_region[meas])
    assert set(aug.section[copies].tolist()) == {int(data.section.max()) + 1}
    # the original graph is untouched
    assert torch.equal(aug.edge_index[:, : data.edge_index.shape[1]], data.edge_index)
    new = aug.edge_index[:, data.edge_index.shape[1]:]
    new_t = aug.edge_type[data.edge_index.shape[1]:]
    is_copy = new >= n
    # edges between a copy and an original are overlap edges, each carrying the disc IoU at their distance
    cross = is_copy[0] ^ is_copy[1]
    assert cross.any() and bool((new_t[cross] == EDGE_OVERLAP).all())
    from asign_assets.graph.geometry import disc_iou

    d = (aug.pos[new[0, cross], :2] - aug.pos[new[1, cross], :2]).norm(dim=1).double().numpy()
    np.testing.assert_allclose(aug.edge_weight[data.edge_index.shape[1]:][cross].numpy(), disc_iou(d, 40.0, 40.0), rtol=1e-5)
    # a copy overlaps its own original (50 um < 80 um) and nothing at >= 80 um
    pairs = set(zip(new[0, cross].tolist(), new[1, cross].tolist()))
    assert all((int(meas[i]), n + i) in pairs for i in range(k))
    assert bool((d < 80.0).all())
    # copies among themselves: the originals' intra edges, relabelled
    both = is_copy[0] & is_copy[1]
    assert bool((new_t[both] == EDGE_INTRA).all())
    orig_intra = {(a, b) for a, b in _pairs(data, EDGE_INTRA) if a < k and b < k}  # section 0 = nodes 0..k-1
    assert {(a - n, b - n) for a, b in zip(new[0, both].tolist(), new[1, both].tolist())} == orig_intra
    # nothing joins a copy to another section
    assert not bool(((new[0] >= k) & (new[0] < n)).any() | ((new[1] >= k) & (new[1] < n)).any())
