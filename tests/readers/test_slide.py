"""Slide: windows, thumbnails and pixel sizes of tiny TIFF/JPEG files written in the test."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from asign_assets.readers import images as imaging
from asign_assets.readers import slide as slide_mod
from asign_assets.errors import InputError
from asign_assets.readers.slide import Slide, file_pixel_size_um


def _coded(h: int, w: int) -> np.ndarray:
    """Every pixel's colour encodes its (x, y), so a window shows exactly where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx // 256) * 16 + (yy // 256)], axis=-1).astype(np.uint8)


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[0] // k, a.shape[1] // k
    return a[: h * k, : w * k].astype(np.float64).reshape(h, k, w, k, -1).mean((1, 3))


def _pyramid(a: np.ndarray, n: int) -> list[np.ndarray]:
    out = [a]
    for _ in range(n):
        out.append(np.floor(_block_mean(out[-1], 2) + 0.5).astype(np.uint8))
    return out


def _write_subifd_pyramid(path, levels, **kw):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(levels[0], tile=(32, 32), subifds=len(levels) - 1, photometric="rgb", compression="zlib", **kw)
        for lv in levels[1:]:
            tw.write(lv, tile=(32, 32), subfiletype=1, photometric="rgb", compression="zlib")


def test_subifd_pyramid_levels_windows_thumbnail_and_pixel_size(tmp_path):
    src = _coded(256, 320)
    levels = _pyramid(src, 2)
    p = tmp_path / "pyr.tif"
    _write_subifd_pyramid(p, levels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with Slide(p) as s:
        assert (s.width, s.height, s.kind) == (320, 256, "tiff")
        assert [(lv.width, lv.height, lv.downsample) for lv in s.levels] == [(320, 256, 1.0), (160, 128, 2.0), (80, 64, 4.0)]
        # native scale, integer origin: an exact crop of level 0
        np.testing.assert_array_equal(s.read_region(37, 50, 101, 114, 64), src[50:114, 37:101])
        # 4x reduction, box aligned to the 4x level: an exact crop of level 2 (not a resample of level 0)
        np.testing.assert_array_equal(s.read_region(40, 32, 168, 160, 32), levels[2][8:40, 10:42])
        # between levels (3x): read from level 1 (2x), the nearest not coarser
        assert s.level_for(3.0) == 1 and s.level_for(1.99) == 0 and s.level_for(100) == 2
        got = s.read_region(30, 30, 126, 126, 32).astype(float)
        want = _block_mean(src[30:126, 30:126], 3)
        assert np.abs(got - want)[2:-2, 2:-2, :2].max() <= 2.5  # smooth channels: bilinear ~ area mean
        # outside the image is white
        edge = s.read_region(-8, -8, 24, 24, 32)
        assert (edge[:8] == 255).all() and (edge[:, :8] == 255).all()
        np.testing.assert_array_equal(edge[8:, 8:], src[:24, :24])
        # thumbnail: 80 px long side -> exactly level 2 (4x), itself a 4x4 block mean of the source
        thumb, scale = s.thumbnail(80)
        assert thumb.shape == (64, 80, 3) and scale == pytest.approx(0.25)
        assert np.abs(thumb.astype(float) - _block_mean(src, 4)).max() <= 1.0
    assert file_pixel_size_um(p) == (pytest.approx(0.5), "TIFF XResolution (cm)")


def test_read_regions_grouped_equals_one_by_one(tmp_path):
    src = _coded(256, 320)
    p = tmp_path / "pyr.tif"
    _write_subifd_pyramid(p, _pyramid(src, 1))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (40, 2))
    boxes = np.c_[xy - 20.25, xy + 20.25]  # 40.5 px boxes -> 27 px: resampled from level 1 (1.5x)
    with Slide(p) as s:
        many = s.read_regions(boxes, 27)
        one = np.stack([s.read_region(*b, 27) for b in boxes])
    np.testing.assert_array_equal(many, one)


def test_ome_tiff_physical_size_and_series_levels(tmp_path):
    src = _coded(128, 192)
    levels = _pyramid(src, 1)
    p = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(p, bigtiff=True, ome=True) as tw:
        tw.write(levels[0], tile=(32, 32), subifds=1, photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 250.0, "PhysicalSizeYUnit": "nm"})
        tw.write(levels[1], tile=(32, 32), subfiletype=1, photometric="rgb")
    assert file_pixel_size_um(p) == (pytest.approx(0.25), "OME PhysicalSizeX")
    with Slide(p) as s:
        assert len(s.levels) == 2 and s.levels[1].downsample == 2.0
        np.testing.assert_array_equal(s.read_region(64, 32, 128, 96, 32), levels[1][16:48, 32:64])


def test_striped_untiled_greyscale_16bit_and_blockwise_thumbnail(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    g16 = rng.integers(0, 65536, (210, 300), dtype=np.uint16)
    p = tmp_path / "grey16.tif"
    tifffile.imwrite(p, g16, rowsperstrip=7, resolution=(50800, 50800), resolutionunit="INCH")
    assert not tifffile.TiffFile(p).pages[0].is_tiled
    g8 = (g16 // 257).astype(np.uint8)
    with Slide(p) as s:
        assert len(s.levels) == 1
        win = s.read_region(11, 23, 61, 73, 50)
        np.testing.assert_array_equal(win, np.repeat(g8[23:73, 11:61, None], 3, axis=2))
        # no pyramid: a block-wise reduction in bands of 21 rows (3 strips, 7 blocks; forced small here)
        monkeypatch.setattr(slide_mod, "_BAND_BYTES", 300 * 3 * 10)
        thumb, scale = s.thumbnail(100)
    assert thumb.shape == (70, 100, 3) and scale == pytest.approx(1 / 3)
    want = _block_mean(g8[..., None], 3)[..., 0]
    assert np.abs(thumb[..., 1].astype(float) - want).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(thumb[..., 0], thumb[..., 2])
    assert file_pixel_size_um(p) == (pytest.approx(0.5), "TIFF XResolution (inch)")


def test_planar_rgb_and_rgba_on_white(tmp_path):
    src = _coded(96, 128)
    p = tmp_path / "planar.tif"
    tifffile.imwrite(p, np.moveaxis(src, 2, 0), photometric="rgb", planarconfig="separate", tile=(32, 32))
    with Slide(p) as s:
        assert (s.width, s.height) == (128, 96)
        np.testing.assert_array_equal(s.read_region(5, 9, 69, 73, 64), src[9:73, 5:69])

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 100
    rgba[:32, :, 3] = 255  # top opaque, bottom transparent
    rgba[32:48, :, 3] = 128
    p = tmp_path / "rgba.tif"
    tifffile.imwrite(p, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    with Slide(p) as s:
        w = s.read_region(0, 0, 64, 64, 64)
    assert tuple(w[0, 0]) == (100, 0, 0) and tuple(w[63, 63]) == (255, 255, 255)
    half = 128 / 255
    assert tuple(w[40, 5]) == (round(100 * half + 255 * (1 - half)), round(255 * (1 - half)), round(255 * (1 - half)))


def test_jpeg_goes_through_pillow_and_matches_read_rgb(tmp_path):
    src = _coded(120, 160)
    p = tmp_path / "s.jpg"
    Image.fromarray(src).save(p, quality=95)
    full = imaging.read_rgb(p)
    with Slide(p) as s:
        assert s.kind == "pillow" and (s.width, s.height) == (160, 120)
        np.testing.assert_array_equal(s.read_region(10, 20, 42, 52, 32), full[20:52, 10:42])
        thumb, scale = s.thumbnail(40)
    t2, sc2 = imaging.read_thumbnail(p, 40)
    np.testing.assert_array_equal(thumb, t2)
    assert scale == sc2 == pytest.approx(0.25)
    assert file_pixel_size_um(p) is None  # Pillow's default 72 dpi (or none) is a placeholder


def test_decode_budget_error_names_file_size_and_conversion(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(_coded(400, 500)).save(p)
    monkeypatch.setenv("ASIGN_MAX_DECODE_MB", "0.5")  # 0.2 Mpx RGB needs 0.8 MB
    for call in (lambda: Slide(p), lambda: imaging.read_rgb(p), lambda: imaging.read_thumbnail(p, 64)):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert str(p) in msg and "500x400 px (0 Mpx" in msg and "budget of 0 MB" in msg and "vips tiffsave" in msg
    assert imaging.read_image_size(p) == (500, 400)  # a header read is not a decode
    monkeypatch.setenv("ASIGN_MAX_DECODE_MB", "1")
    with Slide(p) as s:
        assert s.read_region(0, 0, 8, 8, 8).shape == (8, 8, 3)


def test_bad_tiff_files_raise_input_error(tmp_path):
    missing, empty, junk = tmp_path / "missing.tif", tmp_path / "empty.tif", tmp_path / "junk.tif"
    empty.write_bytes(b"")
    junk.write_bytes(b"II*\x00" + np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for p, words in [(missing, "does not exist"), (empty, "empty"), (junk, "not a readable TIFF")]:
        with pytest.raises(InputError) as e:
            Slide(p)
        assert str(p) in str(e.value) and words in str(e.value)


def test_svs_mpp_and_placeholder_resolution(tmp_path):
    p = tmp_path / "fake.svs"
    desc = "Aperio Image Library v12.0.15 \n256x256 [0,0 256x256] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520"
    tifffile.imwrite(p, _coded(256, 256), tile=(256, 256), description=desc, photometric="rgb")
    assert file_pixel_size_um(p) == (pytest.approx(0.252), "SVS MPP")
    q = tmp_path / "dpi72.tif"
    tifffile.imwrite(q, _coded(16, 16), resolution=(72, 72), resolutionunit="INCH", photometric="rgb")
    assert file_pixel_size_um(q) is None


def test_window_of_large_tiled_tiff_decodes_only_its_tiles(tmp_path, monkeypatch):
    """A 10,000 x 10,000 px (100 Mpx, 300 MB decoded) tiled file: a 300 px window decodes 4 tiles."""
    n, t = 10_000, 256
    tile = np.full((t, t, 3), 200, np.uint8)
    p = tmp_path / "big.tif"
    ntiles = (-(-n // t)) ** 2
    tifffile.imwrite(p, (tile for _ in range(ntiles)), shape=(n, n, 3), dtype=np.uint8, tile=(t, t), photometric="rgb", compression="zlib", bigtiff=True)
    decoded = []
    real = tifffile.TiffPage.__dict__["decode"].func  # a cached_property returning the decode function

    def counting(page):
        fn = real(page)

        def decode(*a, **k):
            decoded.append(1)
            return fn(*a, **k)

        return decode

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    with Slide(p) as s:
        w = s.read_region(5000, 5000, 5300, 5300, 300)
    assert (w == 200).all()
    assert 1 <= len(decoded) <= 4  # tiles 19-20 x 19-20 of 40 x 40
