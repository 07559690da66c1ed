from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asign_assets.errors import InputError
from asign_assets.readers.images import read_image_size, read_rgb, read_thumbnail
from asign_assets.imaging.tissue import spot_coverage, tissue_area_mm2, tissue_mask

HER2ST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "her2st"


def _save(tmp_path: Path, name: str, arr: np.ndarray, **kw) -> Path:
    p = tmp_path / name
    Image.fromarray(arr).save(p, **kw)
    return p


def test_read_thumbnail_and_size_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    h, w = 1500, 2000
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = 200
    arr[: h // 2, :, 1] = 40  # top half: red-ish, bottom half: yellow-ish
    arr[h // 2 :, :, 1] = 220
    arr += rng.integers(0, 3, size=arr.shape, dtype=np.uint8)
    p = _save(tmp_path, "slide.jpg", arr, quality=95)
    assert read_image_size(p) == (w, h)
    thumb, scale = read_thumbnail(p, max_side=256)
    assert thumb.dtype == np.uint8 and thumb.shape == (192, 256, 3)
    assert scale == pytest.approx(256 / 2000)
    assert abs(int(thumb[20, 100, 1]) - 41) < 6 and abs(int(thumb[170, 100, 1]) - 221) < 6
    full = read_rgb(p)
    assert full.shape == (h, w, 3)
    np.testing.assert_array_equal(full, np.asarray(Image.open(p).convert("RGB")))


def test_small_image_thumbnail_keeps_size(tmp_path):
    p = _save(tmp_path, "small.png", np.full((30, 40, 3), 7, np.uint8))
    thumb, scale = read_thumbnail(p, max_side=1024)
    assert thumb.shape == (30, 40, 3) and scale == 1.0


def test_greyscale_rgba_16bit_palette_accepted(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    p = _save(tmp_path, "grey.jpg", g, quality=100)
    rgb = read_rgb(p)
    assert rgb.shape == (20, 25, 3) and np.abs(rgb[..., 0].astype(int) - g).max() <= 3
    assert read_thumbnail(p, 10)[0].shape[2] == 3

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 100
    rgba[:5, :, 3] = 255  # top opaque red-ish, bottom fully transparent -> white
    p = _save(tmp_path, "rgba.png", rgba)
    out = read_rgb(p)
    assert tuple(out[0, 0]) == (100, 0, 0) and tuple(out[9, 9]) == (255, 255, 255)

    g16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g16).save(p)
    assert Image.open(p).mode.startswith("I")
    out = read_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[..., 1], (g16.astype(int) // 257).astype(np.uint8))

    pal = Image.fromarray(np.full((8, 8, 3), (10, 200, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    p = tmp_path / "pal.png"
    pal.save(p)
    assert tuple(read_rgb(p)[3, 3]) == (10, 200, 30)


@pytest.mark.parametrize("reader", [read_rgb, read_thumbnail, read_image_size])
def test_bad_files_raise_input_error(tmp_path, reader):
    missing = tmp_path / "missing.jpg"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for p, words in [(missing, "does not exist"), (empty, "empty"), (junk, "not a readable image")]:
        with pytest.raises(InputError) as e:
            reader(p)
        assert str(p) in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("reader", [read_rgb, read_thumbnail])
def test_truncated_jpeg_raises(tmp_path, reader):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError) as e:
        reader(p)
    assert str(p) in str(e.value) and "truncated" in str(e.value)


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not HER2ST.is_dir(), reason=f"HER2ST data not found at {HER2ST}")
def test_her2st_patient_c_masks_lattice_tiles_embeddings(tmp_path):
    import polars as pl
    import torch
    import zarr

    from asign_assets.imaging.encoders import embed_tiles, get_encoder
    from asign_assets.ingest.lattice import infer_lattice
    from asign_assets.imaging.tiles import write_section_tiles

    # Patient C's spots sit ~291 px apart per 200 um array unit (fitted from the array
    # coordinates below), i.e. ~0.687 um/px.
    px_um = 200.0 / 291.0
    for s in ["C2", "C3", "C4", "C5", "C6"]:
        img = next((HER2ST / "ST-imgs" / "C" / s).glob("*.jpg"))
        w, h = read_image_size(img)
        assert 9000 < w < 10000 and 9000 < h < 10500
        thumb, scale = read_thumbnail(img)
        assert max(thumb.shape[:2]) == 1024
        mask = tissue_mask(thumb)
        area = tissue_area_mm2(mask, scale, px_um)
        df = pl.read_csv(HER2ST / "ST-spotfiles" / f"{s}_selection.tsv", separator="\t").filter(pl.col("selected") == 1)
        # ~180 spots on a 200 um grid cover ~n * 0.04 mm2
        assert 0.7 * len(df) * 0.04 < area < 1.5 * len(df) * 0.04, (s, area)
        assert spot_coverage(mask, scale, df.select("pixel_x", "pixel_y").to_numpy()) >= 0.98  # spots lie on the detected tissue

    df = pl.read_csv(HER2ST / "ST-spotfiles" / "C2_selection.tsv", separator="\t").filter(pl.col("selected") == 1)
    xy = df.select("pixel_x", "pixel_y").to_numpy()
    A = np.c_[df["x"].to_numpy(), df["y"].to_numpy(), np.ones(len(df))]
    coef = np.linalg.lstsq(A, xy, rcond=None)[0]
    unit_px = float(np.mean(np.linalg.norm(coef[:2], axis=1)))
    geom = infer_lattice(xy, px_um)
    assert geom.kind == "square"
    assert geom.pitch_um / px_um == pytest.approx(unit_px, rel=0.03)
    assert 190 < geom.pitch_um < 210
    assert geom.diameter_um == pytest.approx(geom.pitch_um / 2)
    assert abs(np.degrees(geom.angle_rad)) < 3

    rgb = read_rgb(next((HER2ST / "ST-imgs" / "C" / "C2").glob("*.jpg")))
    root = zarr.open_group(str(tmp_path / "tiles.zarr"), mode="w")
    meta = write_section_tiles(rgb, xy, px_um, root.create_group("C2"))
    del rgb
    assert meta["n_spots"] == len(xy) and 10 < meta["n_region"] <= len(xy)
    spot = root["C2/spot"][:]
    assert spot.shape == (len(xy), 224, 224, 3)
    assert spot.mean() < 215  # patches are on stained tissue, not white background
    emb = zarr.open_group(str(tmp_path / "emb.zarr"), mode="w")
    out = embed_tiles(root, emb, ["C2"], get_encoder("histology", torch.device("cpu")))
    f = emb["C2/spot"][:]
    assert f.shape == (len(xy), out["dim"]) and np.isfinite(f).all()
