"""Fast checks of the scale work: stored spot resolution, sharded tiles, fast encoder kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from asign_assets.imaging.encoders import HistologyEncoder, _quantiles, _sobel_laplace
from asign_assets.imaging.tiles import TileParams, auto_spot_downsample, write_section_tiles


def test_auto_spot_downsample_never_stores_finer_than_the_scan():
    p = TileParams()  # 224 px at 0.8 um/px
    assert auto_spot_downsample([0.69, 0.70], p) == 1  # HER2ST: unchanged 224 px
    assert auto_spot_downsample([0.25], p) == 1  # full-resolution Visium
    assert auto_spot_downsample([1.7], p) == 2  # 112 px at 1.6 um/px
    assert auto_spot_downsample([4.0, 4.1], p) == 4  # synthetic ~4 um/px: 56 px at 3.2 um/px
    assert auto_spot_downsample([4.0, 1.0], p) == 1  # the finest section decides (one factor per stack)
    assert auto_spot_downsample([40.0], p) == 4  # capped: 56 px is the smallest default patch
    assert auto_spot_downsample([40.0], p, max_downsample=8) == 8
    with pytest.raises(ValueError):
        TileParams(spot_downsample=3)  # 224 is not a multiple of 3


def test_spot_downsample_stores_the_same_physical_field(tmp_path):
    # 4 um/px image; a 40 um dark square centred on the spot covers 10 source px
    img = np.full((300, 300, 3), 255, np.uint8)
    img[145:155, 145:155] = 0
    xy = np.array([[149.5, 149.5]])
    full = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    small = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    write_section_tiles(img, xy, 4.0, full, TileParams())
    meta = write_section_tiles(img, xy, 4.0, small, TileParams(spot_downsample=4))
    a, b = full["spot"][0].astype(float), small["spot"][0].astype(float)
    assert a.shape == (224, 224, 3) and b.shape == (56, 56, 3)
    assert meta["spot_stored_um_per_px"] == pytest.approx(3.2) and meta["spot_patch_um"] == pytest.approx(179.2)
    # dark area in um^2 is the same (40 um x 40 um = 1600 um^2), at either storage scale
    assert (a.mean(-1) < 128).sum() * 0.8**2 == pytest.approx(1600, rel=0.15)
    assert (b.mean(-1) < 128).sum() * 3.2**2 == pytest.approx(1600, rel=0.25)
    # and the 4x area-downsampled 224 px patch is close to the 56 px one
    pooled = a.reshape(56, 4, 56, 4, 3).mean((1, 3))
    assert np.abs(pooled - b).mean() < 8


def test_tiles_are_sharded_but_chunked_per_tile(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    xy = np.round(rng.uniform(20, 380, (70, 2)))  # integer: native-scale patches are exact crops
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    write_section_tiles(img, xy, 1.0, g, TileParams(spot_size=16, spot_um_per_px=1.0, region_size=64, global_size=128, region_downsample=2, global_downsample=4, batch=32))
    arr = g["spot"]
    assert arr.chunks == (1, 16, 16, 3) and arr.shards == (32, 16, 16, 3)
    files = [p for p in (tmp_path / "t.zarr" / "spot").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(files) == 3  # ceil(70 / 32) shard files, not 70 chunk files
    x, y = np.round(xy[41]).astype(int)
    np.testing.assert_array_equal(arr[41], img[y - 8 : y + 8, x - 8 : x + 8])  # one tile reads back exactly


def test_fast_kernels_match_reference_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 333, generator=g)
    np.testing.assert_allclose(_quantiles(x, (0.1, 0.5, 0.9)).numpy(), torch.quantile(x, torch.tensor([0.1, 0.5, 0.9]), dim=-1).numpy(), atol=1e-6)
    z = torch.rand(2, 1, 20, 17, generator=g)
    zp = F.pad(z, (1, 1, 1, 1), mode="replicate")
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    gx, gy, lp = _sobel_laplace(zp)
    torch.testing.assert_close(gx, F.conv2d(zp, sob.view(1, 1, 3, 3)))
    torch.testing.assert_close(gy, F.conv2d(zp, sob.T.contiguous().view(1, 1, 3, 3)))
    torch.testing.assert_close(lp, F.conv2d(zp, lap))
    # and the encoder on a 56 px batch is finite and batch-independent
    tiles = np.random.default_rng(1).integers(60, 250, (5, 56, 56, 3), dtype=np.uint8)
    enc = HistologyEncoder("cpu")
    f = enc.encode(tiles)
    assert np.isfinite(f).all()
    np.testing.assert_allclose(enc.encode(tiles[3:4])[0], f[3], rtol=1e-5, atol=1e-6)
