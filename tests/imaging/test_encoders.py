from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from skimage.color import hed_from_rgb, rgb2hed

from asign_assets.imaging.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HistologyEncoder,
    embed_tiles,
    get_encoder,
)
from asign_assets.errors import InputError
from asign_assets.imaging.tiles import TileParams, write_section_tiles

CPU = torch.device("cpu")


def _tiles(n=6, size=48, seed=0):
    rng = np.random.default_rng(seed)
    pink = np.array([230, 150, 200])
    purple = np.array([90, 60, 150])
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frac = i / max(n - 1, 1)  # more haematoxylin along the batch
        mix = (rng.uniform(size=(size, size, 1)) < frac * 0.6).astype(float)
        out[i] = np.clip(pink * (1 - mix) + purple * mix + rng.normal(0, 4, (size, size, 3)), 0, 255)
    return out


def test_histology_shape_determinism_and_meaning():
    enc = get_encoder("histology", CPU)
    tiles = _tiles()
    f1, f2 = enc.encode(tiles), enc.encode(tiles.copy())
    assert f1.shape == (6, enc.dim) and f1.dtype == np.float32 and enc.dim == len(enc.feature_names)
    np.testing.assert_array_equal(f1, f2)
    assert np.isfinite(f1).all()
    names = enc.feature_names
    h_mean = f1[:, names.index("h_mean")]
    assert np.all(np.diff(h_mean) > 0)  # more purple -> more haematoxylin
    # deconvolution matches skimage.color.rgb2hed
    ref = rgb2hed(tiles).reshape(6, -1, 3).mean(1)
    np.testing.assert_allclose(f1[:, [names.index("h_mean"), names.index("e_mean"), names.index("d_mean")]], ref, atol=1e-5)
    # a blank white tile has no tissue and no nuclei
    blank = enc.encode(np.full((1, 48, 48, 3), 255, np.uint8))[0]
    assert blank[names.index("tissue_frac")] == 0 and blank[names.index("blob_density_s3")] == 0
    # batch composition does not change a tile's features
    np.testing.assert_allclose(enc.encode(tiles[2:3])[0], f1[2], rtol=1e-5, atol=1e-6)


def test_histology_blob_density_counts_nuclei():
    enc = HistologyEncoder(CPU)
    few = np.full((1, 96, 96, 3), (230, 150, 200), np.uint8)
    many = few.copy()
    yy, xx = np.mgrid[0:96, 0:96]
    centres = [(y, x) for y in range(8, 96, 16) for x in range(8, 96, 16)]
    for k, (cy, cx) in enumerate(centres):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
        many[0][disc] = (60, 40, 130)
        if k < 4:
            few[0][disc] = (60, 40, 130)
    i = enc.feature_names.index("blob_density_s1.5")
    d_few, d_many = enc.encode(few)[0, i], enc.encode(many)[0, i]
    area = 96 * 96 / 1000.0
    assert d_many * area == pytest.approx(len(centres), abs=2)
    assert d_few * area == pytest.approx(4, abs=1)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_torchscript_plugin(tmp_path):
    model = _Tiny().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(path))
    enc = get_encoder(f"torchscript:{path}", CPU, input_size=24)
    assert enc.dim == 5 and enc.name == "torchscript" and enc.version.startswith("sha256:")
    tiles = _tiles(n=3, size=40)
    got = enc.encode(tiles)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (3, 5)


def test_get_encoder_errors(tmp_path):
    with pytest.raises(InputError, match="unknown encoder"):
        get_encoder("resnet50", CPU)
    with pytest.raises(InputError, match="does not exist"):
        get_encoder(f"torchscript:{tmp_path / 'nope.pt'}", CPU)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="TorchScript"):
        get_encoder(f"torchscript:{bad}", CPU)


def _write_tiles(root, name, seed):
    rng = np.random.default_rng(seed)
    img = np.full((400, 500, 3), (235, 200, 220), np.uint8)
    img[50:350, 50:450] = np.clip(rng.normal((150, 100, 170), 30, (300, 400, 3)), 0, 255).astype(np.uint8)
    xy = np.c_[rng.uniform(60, 440, 12), rng.uniform(60, 340, 12)]
    p = TileParams(spot_size=32, spot_um_per_px=1.0, region_size=64, global_size=128, region_downsample=2, global_downsample=4)
    write_section_tiles(img, xy, 1.0, root.create_group(name), p)


def test_embed_tiles_writes_standardised_features(tmp_path):
    tiles = zarr.open_group(str(tmp_path / "tiles.zarr"), mode="w")
    _write_tiles(tiles, "A", 1)
    _write_tiles(tiles, "B", 2)
    out = zarr.open_group(str(tmp_path / "emb.zarr"), mode="w")
    enc = HistologyEncoder(CPU)
    meta = embed_tiles(tiles, out, ["A", "B"], enc, batch_size=5)
    assert out.attrs["encoder"] == "histology" and out.attrs["dim"] == enc.dim and out.attrs["version"] == enc.version
    assert "params" in out.attrs
    assert meta["sections"]["A"]["n_spot"] == 12 and meta["sections"]["A"]["seconds"] >= 0
    for s in ("A", "B"):
        f = out[f"{s}/spot"][:]
        assert f.shape == (12, enc.dim) and f.dtype == np.float32
        assert out[f"{s}/region"].shape == (tiles[f"{s}/region"].shape[0], enc.dim)
        assert out[f"{s}/global"].shape == (tiles[f"{s}/global"].shape[0], enc.dim)
        np.testing.assert_allclose(f.mean(0), 0, atol=1e-4)
        sd = f.std(0)
        assert np.all((np.abs(sd - 1) < 1e-3) | (sd < 1e-6))
    # raw features = encoder output, batch size irrelevant
    raw = zarr.open_group(str(tmp_path / "raw.zarr"), mode="w")
    embed_tiles(tiles, raw, ["A"], enc, batch_size=64, standardise=False)
    np.testing.assert_allclose(raw["A/spot"][:], enc.encode(tiles["A/spot"][:]), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no tiles"):
        embed_tiles(tiles, out, ["A", "Z"], enc)


def test_histology_fast_statistics_equal_plain_torch_formulas():
    """The centred-sum std and the numpy-sort quantiles give what ``Tensor.std`` and
    ``torch.quantile`` give, on H&E-like tiles and on a near-constant bright tile (where a
    one-pass variance would lose digits)."""
    from asign_assets.imaging.encoders import _quantiles, _std

    rng = np.random.default_rng(3)
    y = torch.from_numpy(np.r_[rng.uniform(0, 1, (5, 3136)), 0.9 + rng.normal(0, 1e-3, (1, 3136))].astype(np.float32))
    np.testing.assert_allclose(_std(y), y.std(-1), rtol=1e-5)
    assert _std(y, keepdim=True).shape == (6, 1)
    qs = (0.1, 0.5, 0.9)
    np.testing.assert_allclose(_quantiles(y, qs), torch.quantile(y, torch.tensor(qs), dim=-1), rtol=1e-6)

    enc = HistologyEncoder(CPU)
    tiles = np.concatenate([_tiles(n=8, size=56, seed=1), np.full((1, 56, 56, 3), (250, 248, 251), np.uint8)])
    f = enc.encode(tiles)
    col = {n: i for i, n in enumerate(enc.feature_names)}
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    od = torch.log(x.clamp_min(1e-6)) / float(np.log(1e-6))
    hed = torch.einsum("nchw,cd->ndhw", od, torch.tensor(hed_from_rgb, dtype=torch.float32)).clamp_min(0)
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    ref = {
        **{f"rgb_std_{c}": x[:, i].flatten(1).std(-1) for i, c in enumerate("rgb")},
        **{f"{c}_std": hed[:, i].flatten(1).std(-1) for i, c in enumerate("hed")},
        **{f"{c}_p{int(q * 100)}": torch.quantile(hed[:, i].flatten(1), q, dim=-1) for i, c in enumerate("hed") for q in qs},
        "lum_s1_std": lum.flatten(1).std(-1),
        "lum_s2_std": F.avg_pool2d(lum, 2).flatten(1).std(-1),
        "h_s4_std": F.avg_pool2d(hed[:, :1] * 4.0, 4).flatten(1).std(-1),
    }
    for lag in (1, 4):
        a, b = lum[..., :, :-lag].flatten(1), lum[..., :, lag:].flatten(1)
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        ref[f"lum_acorr_{lag}"] = (a * b).mean(-1) / (a.std(-1) * b.std(-1) + 1e-6)
    for name, r in ref.items():
        np.testing.assert_allclose(f[:, col[name]], r.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
    assert f[1:-1, col["h_std"]].min() > 0.01  # the tiles are not degenerate
    assert f[-1, col["rgb_std_r"]] == 0 and f[-1, col["h_std"]] == 0  # a constant tile: exactly 0, as Tensor.std


def test_embed_tiles_in_worker_processes_equal_sequential_bytes(tmp_path, monkeypatch):
    tiles = zarr.open_group(str(tmp_path / "tiles.zarr"), mode="w")
    for k, name in enumerate("ABC"):
        _write_tiles(tiles, name, k + 1)
    enc = HistologyEncoder(CPU)
    import asign_assets.runtime.process_jobs as PJ

    pool_calls = []
    run = PJ.run_in_processes
    monkeypatch.setattr(PJ, "run_in_processes", lambda func, payloads, workers: pool_calls.append(workers) or run(func, payloads, workers))
    metas = {}
    for workers in (1, 3):
        out = zarr.open_group(str(tmp_path / f"w{workers}.zarr"), mode="w")
        seen = []
        metas[workers] = embed_tiles(tiles, out, ["C", "A", "B"], enc, batch_size=5, workers=workers, on_section=lambda s, r: seen.append(s))
        assert sorted(seen) == ["A", "B", "C"]
    files = {w: {str(p.relative_to(tmp_path / f"w{w}.zarr")): p.read_bytes() for p in sorted((tmp_path / f"w{w}.zarr").rglob("*")) if p.is_file()} for w in (1, 3)}
    assert pool_calls == [3] and len(files[1]) >= 9 and files[1] == files[3]
    assert list(metas[3]["sections"]) == ["C", "A", "B"]  # input order, not completion order
    assert metas[1]["workers"] == 1 and metas[3]["workers"] == 3
    # a TorchScript model does not travel to workers: encoded here, one section at a time
    torch.jit.script(_Tiny().eval()).save(str(tmp_path / "tiny.pt"))
    ts = get_encoder(f"torchscript:{tmp_path / 'tiny.pt'}", CPU, input_size=24)
    meta = embed_tiles(tiles, zarr.open_group(str(tmp_path / "ts.zarr"), mode="w"), ["A", "B"], ts, workers=3, standardise=False)
    assert meta["workers"] == 1 and pool_calls == [3]
    assert {s: (m["n_spot"], m["n_region"]) for s, m in metas[1]["sections"].items()} == {s: (m["n_spot"], m["n_region"]) for s, m in metas[3]["sections"].items()}
    assert all(m["started_s"] >= 0 and m["seconds"] > 0 for m in metas[3]["sections"].values())


class _RefusesBlankTiles(HistologyEncoder):
    """Fails like a user's model that rejects an input (module level: it travels to workers)."""

    def encode(self, tiles):
        if (np.asarray(tiles) == 255).all(axis=(1, 2, 3)).any():
            raise InputError("model.pt", "refuses blank tiles")
        return super().encode(tiles)


def test_embed_tiles_worker_error_surfaces_unchanged(tmp_path, monkeypatch):
    """An encoder failing on one section's tiles in a worker stops the stage with its own error."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]))
    tiles = zarr.open_group(str(tmp_path / "tiles.zarr"), mode="w")
    for k, name in enumerate("AB"):
        _write_tiles(tiles, name, k + 1)
    tiles["B/spot"][3] = 255
    out = zarr.open_group(str(tmp_path / "emb.zarr"), mode="w")
    with pytest.raises(InputError) as err:
        embed_tiles(tiles, out, ["A", "B"], _RefusesBlankTiles(CPU), batch_size=64, workers=2)
    assert str(err.value) == "model.pt: refuses blank tiles"
