"""Mask registration: synthetic rigid transforms, flips, failures; HER2ST patient C (slow)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asign_assets.errors import RegistrationError
from asign_assets.registration.masks import warp_masks
from asign_assets.registration.overlay import render_overlay
from asign_assets.registration.params import RegistrationParams
from asign_assets.registration.search import register_stack
from asign_assets.registration.transform_io import load_transform, save_transform
from asign_assets.registration.transforms import inverse_transform_points, to_common_frame, to_own_frame, transform_points

UM = 20.0  # um per mask pixel
HER2ST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "her2st"


def _blob(shape=(360, 380)) -> np.ndarray:
    """An asymmetric tissue-like blob: no rotational or mirror symmetry."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    m = ((xx - 170) / 95) ** 2 + ((yy - 180) / 60) ** 2 < 1
    m |= ((xx - 230) / 40) ** 2 + ((yy - 120) / 75) ** 2 < 1  # a lobe up-right
    m |= ((xx - 110) / 30) ** 2 + ((yy - 225) / 30) ** 2 < 1  # a knob down-left
    m &= ~(((xx - 150) / 22) ** 2 + ((yy - 140) / 18) ** 2 < 1)  # a notch
    return m


def _true_transform(angle_deg: float, shift_um: tuple[float, float], centre_um) -> sitk.Euler2DTransform:
    g = sitk.Euler2DTransform()
    g.SetCenter(tuple(float(c) for c in centre_um))
    g.SetAngle(math.radians(angle_deg))
    g.SetTranslation(shift_um)
    return g


def _warp(mask: np.ndarray, g: sitk.Transform, mirror: bool = False) -> np.ndarray:
    """The section whose own frame is reached from the common frame by g (then mirrored)."""
    img = sitk.GetImageFromArray(mask.astype(np.float32))
    img.SetSpacing((UM, UM))
    img.SetOrigin((UM / 2, UM / 2))
    out = sitk.GetArrayFromImage(sitk.Resample(img, img, g.GetInverse(), sitk.sitkLinear, 0.0)) > 0.5
    return out[:, ::-1] if mirror else out


def _tissue_points(mask: np.ndarray, step: int = 10) -> np.ndarray:
    rows, cols = np.nonzero(mask[::step, ::step])
    return np.stack([(cols * step + 0.5) * UM, (rows * step + 0.5) * UM], 1)


PARAMS = RegistrationParams(working_um_per_px=40.0, coarse_um_per_px=120.0, compose_neighbours=False)


def test_recovers_known_rigid_transform():
    ref = _blob()
    centre = np.array([3800.0, 3600.0])
    g = _true_transform(25.0, (600.0, -400.0), centre)
    mov = _warp(ref, g)
    regs = register_stack([ref, mov], [UM, UM], ["ref", "mov"], 0, PARAMS)
    r0, r1 = regs
    assert r0.method == "identity" and r0.dice_after == 1.0
    assert not r1.flipped and r1.ok
    assert abs(r1.rotation_deg - 25.0) < 1.0
    pts = _tissue_points(ref)
    expected = np.array([g.TransformPoint(tuple(p)) for p in pts])
    err = np.linalg.norm(to_own_frame(r1, pts) - expected, axis=1)
    assert err.max() < 50.0  # one spot radius
    # spots of the moving section mapped back into the common frame land where they came from
    back = to_common_frame(r1, expected)
    assert np.linalg.norm(back - pts, axis=1).max() < 50.0
    np.testing.assert_allclose(transform_points(r1.transform, back), expected, atol=1e-6)  # exact inverse
    assert r1.dice_after > 0.97 and r1.dice_before < 0.7


def test_detects_flipped_section():
    ref = _blob()
    g = _true_transform(-40.0, (-300.0, 250.0), (3800.0, 3600.0))
    mov = _warp(ref, g, mirror=True)
    (_, r1) = register_stack([ref, mov], [UM, UM], ["ref", "flip"], 0, PARAMS)
    assert r1.flipped and r1.dice_after > 0.95
    width = ref.shape[1] * UM
    pts = _tissue_points(ref)
    expected = np.array([g.TransformPoint(tuple(p)) for p in pts])
    expected[:, 0] = width - expected[:, 0]  # the mirror in the moving image
    assert np.linalg.norm(to_own_frame(r1, pts) - expected, axis=1).max() < 50.0
    assert abs(r1.rotation_deg - (-40.0)) < 1.0
    # the unflipped blob is not called flipped
    (_, r2) = register_stack([ref, _warp(ref, g)], [UM, UM], ["ref", "plain"], 0, PARAMS)
    assert not r2.flipped


def test_different_mask_resolutions_and_chain():
    """Sections at other mask scales, a 3-section chain composed through the neighbour."""
    ref = _blob()
    c = (3800.0, 3600.0)
    g1 = _true_transform(10.0, (200.0, 100.0), c)
    g2 = _true_transform(-20.0, (-150.0, 300.0), c)
    m1, m2 = _warp(ref, g1), _warp(ref, g2)
    m2_half = m2[::2, ::2]  # 40 um per px
    params = RegistrationParams(compose_neighbours=True)
    regs = register_stack([ref, m1, m2_half], [UM, UM, 2 * UM], ["a", "b", "c"], 0, params)
    assert [r.method for r in regs][0] == "identity"
    assert regs[2].chain_discrepancy_um is not None and regs[2].chain_discrepancy_um < 50.0
    assert regs[2].dice_composed is not None and regs[2].dice_direct is not None
    assert regs[2].dice_after == max(regs[2].dice_direct, regs[2].dice_composed)
    pts = _tissue_points(ref)
    for r, g in ((regs[1], g1), (regs[2], g2)):
        expected = np.array([g.TransformPoint(tuple(p)) for p in pts])
        assert np.linalg.norm(to_own_frame(r, pts) - expected, axis=1).max() < 60.0
        assert r.ok


def test_failure_is_reported_not_hidden():
    ref = _blob()
    noise = np.random.default_rng(0).random(ref.shape) > 0.5
    (_, r) = register_stack([ref, noise], [UM, UM], ["ref", "noise"], 0, PARAMS)
    assert r.dice_after < 0.85 and not r.ok
    assert r.qc_row()["dice_after"] == r.dice_after
    with pytest.raises(RegistrationError, match="empty"):
        register_stack([ref, np.zeros_like(ref)], [UM, UM], ["ref", "blank"], 0, PARAMS)


def test_transform_io_and_overlay(tmp_path):
    ref = _blob()
    g = _true_transform(15.0, (100.0, -200.0), (3800.0, 3600.0))
    mov = _warp(ref, g)
    regs = register_stack([ref, mov], [UM, UM], ["ref", "mov"], 0, PARAMS)
    path = tmp_path / "mov.tfm"
    save_transform(regs[1].transform, path)
    loaded = load_transform(path)
    pts = _tissue_points(ref)
    np.testing.assert_allclose(transform_points(loaded, pts), to_own_frame(regs[1], pts), atol=1e-6)
    np.testing.assert_allclose(inverse_transform_points(loaded, to_own_frame(regs[1], pts)), pts, atol=1e-6)
    img = render_overlay(warp_masks([ref, mov], [UM, UM], regs, 0))
    assert img.dtype == np.uint8 and img.shape == ref.shape + (3,)
    colours = {tuple(c) for c in img.reshape(-1, 3)[:: 7]}
    assert len(colours) >= 3  # background + two tints/outlines


def test_bspline_refinement_is_invertible():
    ref = _blob()
    g = _true_transform(12.0, (150.0, 80.0), (3800.0, 3600.0))
    mov = _warp(ref, g)
    params = RegistrationParams(refine="bspline", compose_neighbours=False, try_flip=False)
    (_, r) = register_stack([ref, mov], [UM, UM], ["ref", "mov"], 0, params)
    assert r.dice_after > 0.95
    pts = _tissue_points(ref, step=25)
    own = to_own_frame(r, pts)
    np.testing.assert_allclose(to_common_frame(r, own), pts, atol=0.5)


_VIEWER_WITHOUT_SITK = """
import sys
import numpy as np
from dash_app import callbacks as cb, data
from dash_app.app import create_app
from asign_assets.registration import overlay, params

home, sample = sys.argv[1], sys.argv[2]
create_app(home)
legend, _ = cb.sample_extras(home, sample)  # the overlay legend: overlay_colour
assert legend is not None
cb.reports(home, sample)  # overlay.png, registration QC
assert data.load_dense(home, sample) is not None  # OME-Zarr via asign_assets.results.volume
overlay.render_overlay([np.ones((4, 4), bool)])
params.RegistrationParams()
print("SITK", sorted(m for m in sys.modules if m.split(".")[0] == "SimpleITK"))
"""


def test_viewer_and_overlay_do_not_import_simpleitk(tmp_path):
    """The viewer colours the overlay legend and reads results without loading SimpleITK (fresh process)."""
    from viewer_fixtures import write_fake_result

    r = write_fake_result(tmp_path / "home")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", _VIEWER_WITHOUT_SITK, str(r.home), r.sample], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SITK []" in out.stdout, out.stdout


@pytest.mark.slow
def test_her2st_patient_c_registers():
    if not (HER2ST / "ST-imgs" / "C").is_dir():
        pytest.skip(f"real HER2ST data not found at {HER2ST.resolve()} (../shared/data/her2st relative to the project)")
    from asign_assets.importers.her2st import estimate_pixel_size_um
    from asign_assets.readers.images import read_thumbnail
    from asign_assets.imaging.tissue import tissue_mask

    names = ["C2", "C3", "C4", "C5", "C6"]
    masks, ups = [], []
    for s in names:
        img = next((HER2ST / "ST-imgs" / "C" / s).glob("*.jpg"))
        thumb, scale = read_thumbnail(img, 1024)
        masks.append(tissue_mask(thumb))
        ups.append(estimate_pixel_size_um(HER2ST / "ST-spotfiles" / f"{s}_selection.tsv") / scale)
    regs = register_stack(masks, ups, names, 2, RegistrationParams())
    for r in regs:
        assert r.dice_after >= 0.85, (r.name, r.dice_after)
        assert not r.flipped
    assert min(r.dice_after for r in regs) >= 0.97  # 0.976-0.989 with the tissue.py masks
    assert sum(r.seconds for r in regs) < 60  # 10 s target on 2 idle cores; loose under load
