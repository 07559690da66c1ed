from __future__ import annotations

import numpy as np
import pytest
import zarr

from asign_assets.errors import InputError
from asign_assets.imaging.tiles import TileParams, write_section_tiles

SMALL = TileParams(spot_size=32, spot_um_per_px=1.0, region_size=64, global_size=128, region_downsample=2, global_downsample=4)


def _coded_image(h=600, w=800) -> np.ndarray:
    """Every pixel's colour encodes its (x, y), so a patch shows exactly where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx // 256) * 16 + (yy // 256)], axis=-1).astype(np.uint8)


def _group(tmp_path, name="s1"):
    return zarr.open_group(str(tmp_path / "tiles.zarr"), mode="a").require_group(name)


def test_spot_patch_exact_pixels_at_native_scale(tmp_path):
    img = _coded_image()
    xy = np.array([[300.0, 200.0], [517.0, 411.0]])
    g = _group(tmp_path)
    meta = write_section_tiles(img, xy, 1.0, g, SMALL)
    spot = g["spot"][:]
    assert spot.shape == (2, 32, 32, 3) and spot.dtype == np.uint8
    for k, (x, y) in enumerate(xy.astype(int)):
        np.testing.assert_array_equal(spot[k], img[y - 16 : y + 16, x - 16 : x + 16])
        assert tuple(spot[k, 16, 16]) == tuple(img[y, x])  # the spot pixel sits at [s//2, s//2]
    assert g["spot"].chunks == (1, 32, 32, 3)
    assert meta["n_spots"] == 2 and g.attrs["spot_um_per_px"] == 1.0


def test_spot_patch_resampled_to_common_physical_scale(tmp_path):
    # 0.5 um/px image, patches at 1 um/px: a 40 px black square becomes a 20 px one.
    img = np.full((400, 400, 3), 255, np.uint8)
    img[180:220, 140:180] = 0  # centred on pixel (159.5, 199.5)
    g = _group(tmp_path)
    write_section_tiles(img, np.array([[159.5, 199.5]]), 0.5, g, SMALL)
    patch = g["spot"][0].astype(int).mean(-1)
    dark = patch < 128
    rows, cols = np.nonzero(dark)
    assert dark.sum() == pytest.approx(400, abs=45)
    # patch pixel k spans source edges [127 + 2k, 129 + 2k]; the square spans [140, 180]
    assert rows.min() in (6, 7) and rows.max() in (25, 26) and cols.min() in (6, 7) and cols.max() in (25, 26)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(16, abs=0.5)
    assert patch[0, 0] == 255 and patch[16, 16] == 0


def test_region_and_global_tiles_contain_their_spots(tmp_path):
    img = _coded_image(1000, 1200)
    rng = np.random.default_rng(0)
    xy = np.c_[rng.uniform(100, 700, 40), rng.uniform(100, 500, 40)]
    g = _group(tmp_path)
    meta = write_section_tiles(img, xy, 1.0, g, SMALL)
    region_xy, global_xy = g["region_xy_px"][:], g["global_xy_px"][:]
    sr, sg = g["spot_region"][:], g["spot_global"][:]
    assert sr.dtype == np.int32 and sg.dtype == np.int32
    # each spot lies inside its tile (tile size 64 / 128 own px at 1 um/px)
    assert np.all(np.abs(xy - region_xy[sr]) <= 32 + 1e-9)
    assert np.all(np.abs(xy - global_xy[sg]) <= 64 + 1e-9)
    # only tiles with spots are stored, each used by at least one spot
    assert set(sr.tolist()) == set(range(meta["n_region"]))
    assert set(sg.tolist()) == set(range(meta["n_global"]))
    expected = len({(int((y + 0.5) // 64), int((x + 0.5) // 64)) for x, y in xy})
    assert meta["n_region"] == expected
    # stored downsampled: region 64 px / 2, global 128 px / 4
    assert g["region"].shape == (meta["n_region"], 32, 32, 3) and g["global"].shape == (meta["n_global"], 32, 32, 3)
    assert g.attrs["region_downsample"] == 2 and g.attrs["global_um_per_px"] == 4.0


def test_region_tile_pixels_are_the_downsampled_area(tmp_path):
    # smooth image so that bilinear downsampling ~ block mean
    yy, xx = np.mgrid[0:512, 0:512]
    img = np.stack([xx / 2, yy / 2, (xx + yy) / 4], axis=-1).astype(np.uint8)
    g = _group(tmp_path)
    write_section_tiles(img, np.array([[100.0, 150.0]]), 1.0, g, SMALL)
    cx, cy = g["region_xy_px"][0]
    assert (cx, cy) == (95.5, 159.5)  # tile col 1, row 2 of a 64 px grid (edges at 64, 128)
    tile = g["region"][0].astype(float)
    src = img[128:192, 64:128].astype(float).reshape(32, 2, 32, 2, 3).mean((1, 3))
    assert np.abs(tile - src).max() <= 1.5


def test_edge_spots_padded_white(tmp_path):
    img = np.zeros((100, 100, 3), np.uint8)
    g = _group(tmp_path)
    write_section_tiles(img, np.array([[2.0, 3.0]]), 1.0, g, SMALL)
    p = g["spot"][0]
    assert (p[:13] == 255).all() and (p[:, :14] == 255).all()  # outside the image
    assert (p[13:, 14:] == 0).all()  # inside


def test_spots_outside_image_raise_before_writing(tmp_path):
    img = np.zeros((100, 120, 3), np.uint8)
    g = _group(tmp_path)
    with pytest.raises(InputError, match="outside"):
        write_section_tiles(img, np.array([[10.0, 10.0], [125.0, 50.0]]), 1.0, g, SMALL, source="C2.jpg")
    with pytest.raises(InputError, match="far smaller"):
        write_section_tiles(img, np.array([[10.0, 10.0], [400.0, 350.0]]), 1.0, g, SMALL, source="C2.jpg")
    with pytest.raises(InputError, match="NaN"):
        write_section_tiles(img, np.array([[np.nan, 10.0]]), 1.0, g, SMALL)
    assert list(g.keys()) == []  # nothing written


def test_tile_params_validation():
    with pytest.raises(ValueError):
        TileParams(region_size=500, region_downsample=3)
    p = TileParams()
    assert p.stored_px("region") == 128 and p.stored_px("global") == 128 and p.tile_um("region") == pytest.approx(409.6)


def test_tiles_from_pyramidal_tiff_read_the_matching_levels(tmp_path):
    """At 0.5 um/px, SMALL stores spots at 1 um/px (2x), regions at 2 um/px (4x), globals at
    4 um/px (8x): each is an exact crop of that pyramid level, not a resample of level 0."""
    import tifffile

    from asign_assets.readers.slide import Slide

    src = _coded_image(512, 640)
    levels = [src]
    for _ in range(3):
        a = levels[-1].astype(float)
        levels.append(np.floor(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).mean((1, 3)) + 0.5).astype(np.uint8))
    p = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(src, tile=(64, 64), subifds=3, photometric="rgb", compression="zlib")
        for lv in levels[1:]:
            tw.write(lv, tile=(32, 32), subfiletype=1, photometric="rgb", compression="zlib")
    xy = np.array([[100.5, 300.5], [420.5, 64.5]])  # box origins (x - 32.5) / 2 are integers on level 1
    g = _group(tmp_path)
    with Slide(p) as s:
        meta = write_section_tiles(s, xy, 0.5, g, SMALL)
    spot = g["spot"][:]
    for k, (x, y) in enumerate(xy):
        i, j = int((y - 32.5) / 2), int((x - 32.5) / 2)
        np.testing.assert_array_equal(spot[k], levels[1][i : i + 32, j : j + 32])
    for name, lv in (("region", 2), ("global", 3)):
        tile_px = 32 * 2**lv  # level-0 px per tile
        rc = np.unique(np.floor((xy[:, ::-1] + 0.5) / tile_px).astype(int), axis=0)
        for t, (r, c) in enumerate(rc):
            np.testing.assert_array_equal(g[name][t], levels[lv][r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32])
    assert meta["n_spots"] == 2


def _tree(path) -> dict[str, bytes]:
    """Every file under a zarr store, by relative path (metadata and chunk bytes)."""
    from pathlib import Path

    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(Path(path).rglob("*")) if f.is_file()}


def _stack_images(tmp_path, n=3):
    """``n`` PNG sections at 0.7 um/px (patches are resampled, not cropped), spots near the edges too."""
    from PIL import Image

    from asign_assets.imaging.tiles import SectionImage

    out = []
    for k in range(n):
        rng = np.random.default_rng(k)
        img = _coded_image(300 + 20 * k, 400)
        img[..., 2] = rng.integers(0, 256, img.shape[:2], dtype=np.uint8)
        path = tmp_path / f"S{k}.png"
        Image.fromarray(img).save(path)
        xy = np.c_[rng.uniform(0, 399, 40 + k), rng.uniform(0, 299, 40 + k)]
        out.append(SectionImage(f"S{k}", path, xy, 0.7))
    return out


def test_stack_tiles_in_worker_processes_equal_sequential_bytes(tmp_path, monkeypatch):
    import asign_assets.runtime.process_jobs as PJ
    from asign_assets.imaging.tiles import write_stack_tiles

    pool_calls = []
    run = PJ.run_in_processes
    monkeypatch.setattr(PJ, "run_in_processes", lambda func, payloads, workers: pool_calls.append(workers) or run(func, payloads, workers))

    jobs = _stack_images(tmp_path)
    params = TileParams(spot_size=32, spot_um_per_px=1.0, region_size=64, global_size=128, region_downsample=2, global_downsample=4, batch=16)
    rows, done = {}, {}
    for workers in (1, 3):
        root = zarr.open_group(str(tmp_path / f"w{workers}.zarr"), mode="w")
        seen = []
        rows[workers] = write_stack_tiles(root, jobs, params, workers, on_section=seen.append)
        done[workers] = sorted(r["section"] for r in seen)
    assert pool_calls == [3] and done[1] == done[3] == ["S0", "S1", "S2"]
    seq, par = _tree(tmp_path / "w1.zarr"), _tree(tmp_path / "w3.zarr")
    assert len(seq) > 10 and seq.keys() == par.keys()
    assert all(seq[k] == par[k] for k in seq), [k for k in seq if seq[k] != par[k]]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "started_s")} for r in rs]  # noqa: E731
    assert strip(rows[1]) == strip(rows[3])
    assert [r["spots"] for r in rows[3]] == [40, 41, 42] and all(r["seconds"] >= 0 and r["started_s"] >= 0 for r in rows[3])


@pytest.mark.parametrize("problem", ["spots outside", "not an image"])
def test_stack_tiles_worker_error_is_input_error_and_nothing_is_written(tmp_path, problem):
    import dataclasses

    from asign_assets.storage.store import Storage
    from asign_assets.imaging.tiles import write_stack_tiles

    jobs = _stack_images(tmp_path)
    bad = jobs[1]
    if problem == "spots outside":
        jobs[1] = dataclasses.replace(bad, xy_px=np.r_[bad.xy_px, [[395.0, 380.0]]])
    else:
        bad.image.write_bytes(b"this is not a PNG")
    store = Storage(tmp_path / "home")
    with pytest.raises(InputError) as err:
        with store.write("s1", "tiles.zarr") as tmp:
            write_stack_tiles(zarr.open_group(str(tmp), mode="w"), jobs, SMALL, workers=2)
    assert str(bad.image) in str(err.value)
    assert not store.exists("s1", "tiles.zarr")


def test_tiles_and_embeddings_assets_with_workers_match_one_by_one(tmp_path):
    """Through Dagster: `workers: 2` writes the same tiles.zarr and embeddings.zarr bytes as
    `workers: 1`, and the metadata says how many workers ran and when each section started."""
    import dagster as dg

    from asign_assets.pipeline import assets as A
    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    stack = make_demo_stack(tmp_path / "stack", DemoConfig(n_sections=3, spots_per_section=40, image_px=300, n_genes=20), sample_id="par")
    trees, metas = {}, {}
    for workers in (1, 2):
        home = tmp_path / f"home{workers}"
        Storage(home).register(load_manifest(stack.manifest_path))
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("samples", ["par"])
        cfg = {"ops": {"tiles": {"config": {"workers": workers}}, "embeddings": {"config": {"workers": workers}}}}
        result = dg.materialize([A.sections, A.tiles, A.embeddings], partition_key="par", instance=instance,
                                resources=build_definitions(storage_root=str(home), device="cpu").resources, run_config=cfg)
        assert result.success
        trees[workers] = {name: _tree(home / "samples" / "par" / name) for name in ("tiles.zarr", "embeddings.zarr")}
        metas[workers] = {node: result.asset_materializations_for_node(node)[0].metadata for node in ("tiles", "embeddings")}
    for name in ("tiles.zarr", "embeddings.zarr"):
        assert trees[1][name] == trees[2][name], name
    for node, wall in (("tiles", "tiling_seconds"), ("embeddings", "encoding_seconds")):
        m = metas[2][node]
        assert m["workers"].value == 2 and m[wall].value > 0
        table = m["sections"].value.splitlines()
        assert "started_s" in table[0] and "seconds" in table[0] and len(table) == 2 + 3
        assert metas[1][node]["workers"].value == 1
