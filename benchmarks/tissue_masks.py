"""Benchmark: image-only tissue masks on pale brain (DLPFC Visium) and dark tumour (HER2ST patient C).

Per section: mask area, fraction of measured / in-tissue spots on the mask, fraction of
Visium's out-of-tissue spots on the mask, detector time; then mask registration of each
stack (Dice before/after, the pipeline's check is Dice >= 0.85).

Run: .venv/bin/python benchmarks/tissue_masks.py [--data ../shared/data] [--skip-dlpfc] [--skip-her2st] [--save-masks DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data"

from asign_assets.readers.images import read_thumbnail  # noqa: E402
from asign_assets.registration.params import RegistrationParams  # noqa: E402
from asign_assets.registration.search import register_stack  # noqa: E402
from asign_assets.imaging.tissue import spot_coverage, tissue_mask  # noqa: E402

VISIUM_COL_STEP_UM = 50.0  # neighbouring spots in a Visium row are 2 array columns = 100 um apart


def visium_positions(section_dir: Path) -> pl.DataFrame:
    """Space Ranger v1 ``tissue_positions_list.csv`` (no header)."""
    return pl.read_csv(
        section_dir / "spatial" / "tissue_positions_list.csv", has_header=False,
        new_columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"],
    )


def visium_um_per_fullres_px(pos: pl.DataFrame) -> float:
    """Full-resolution pixel size from the array lattice: least squares px ~ (array_col, array_row)."""
    A = np.c_[pos["array_col"].to_numpy(), pos["array_row"].to_numpy(), np.ones(len(pos))]
    coef = np.linalg.lstsq(A, pos.select("pxl_col", "pxl_row").to_numpy().astype(np.float64), rcond=None)[0]
    return VISIUM_COL_STEP_UM / float(np.linalg.norm(coef[0]))


def _print_registration(regs) -> None:
    print(f"  {'section':8s} {'method':9s} {'flip':5s} {'rot_deg':>8s} {'dice0':>6s} {'dice':>6s} {'ok':>3s} {'sec':>5s}")
    for r in regs:
        print(f"  {r.name:8s} {r.method:9s} {str(r.flipped):5s} {r.rotation_deg:8.2f} {r.dice_before:6.3f} {r.dice_after:6.3f} {'yes' if r.ok else 'NO':>3s} {r.seconds:5.2f}")


def bench_dlpfc(root: Path, save: Path | None) -> None:
    names = ["151673", "151674"]
    masks, ups = [], []
    print(f"\n[dlpfc] {root.resolve()}: lowres PNG masks vs Space Ranger in_tissue spots")
    print(f"  {'section':8s} {'px':>7s} {'um/px':>6s} {'area':>6s} {'in_tissue_on':>12s} {'out_on':>7s} {'n_in':>5s} {'n_out':>5s} {'sec':>5s}")
    for s in names:
        d = root / s
        thumb = np.asarray(Image.open(d / "spatial" / "tissue_lowres_image.png").convert("RGB"))
        scalef = float(json.loads((d / "spatial" / "scalefactors_json.json").read_text())["tissue_lowres_scalef"])
        pos = visium_positions(d)
        t = time.perf_counter()
        mask = tissue_mask(thumb)
        dt = time.perf_counter() - t
        xy = pos.select("pxl_col", "pxl_row").to_numpy().astype(np.float64)
        inside = pos["in_tissue"].to_numpy() == 1
        um = visium_um_per_fullres_px(pos) / scalef
        print(
            f"  {s:8s} {thumb.shape[1]}x{thumb.shape[0]} {um:6.2f} {mask.mean():6.3f} {spot_coverage(mask, scalef, xy[inside]):12.4f} "
            f"{spot_coverage(mask, scalef, xy[~inside]):7.4f} {inside.sum():5d} {(~inside).sum():5d} {dt:5.2f}"
        )
        masks.append(mask)
        ups.append(um)
        if save is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(save / f"dlpfc_{s}.png")
    print("  registration 151674 -> 151673 (register_stack, default RegistrationParams)")
    _print_registration(register_stack(masks, ups, names, 0, RegistrationParams()))


def bench_her2st(root: Path, save: Path | None) -> None:
    from asign_assets.importers.her2st import estimate_pixel_size_um

    names = ["C2", "C3", "C4", "C5", "C6"]
    masks, ups = [], []
    print(f"\n[her2st] {root.resolve()}: patient C, 1024 px thumbnails vs measured (selected) spots")
    print(f"  {'section':8s} {'px':>9s} {'area':>6s} {'spots_on':>8s} {'n':>4s} {'sec':>5s}")
    for s in names:
        thumb, scale = read_thumbnail(next((root / "ST-imgs" / "C" / s).glob("*.jpg")), 1024)
        t = time.perf_counter()
        mask = tissue_mask(thumb)
        dt = time.perf_counter() - t
        spots = root / "ST-spotfiles" / f"{s}_selection.tsv"
        xy = pl.read_csv(spots, separator="\t").filter(pl.col("selected") == 1).select("pixel_x", "pixel_y").to_numpy()
        print(f"  {s:8s} {thumb.shape[1]}x{thumb.shape[0]} {mask.mean():6.3f} {spot_coverage(mask, scale, xy):8.4f} {len(xy):4d} {dt:5.2f}")
        masks.append(mask)
        ups.append(estimate_pixel_size_um(spots) / scale)
        if save is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(save / f"her2st_{s}.png")
    print("  registration -> C4 (register_stack, default RegistrationParams)")
    _print_registration(register_stack(masks, ups, names, 2, RegistrationParams()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding dlpfc/ and her2st/")
    ap.add_argument("--skip-dlpfc", action="store_true")
    ap.add_argument("--skip-her2st", action="store_true")
    ap.add_argument("--save-masks", type=Path, default=None, help="write each mask as a PNG here")
    args = ap.parse_args()
    if args.save_masks is not None:
        args.save_masks.mkdir(parents=True, exist_ok=True)
    for skip, name, fn in ((args.skip_dlpfc, "dlpfc", bench_dlpfc), (args.skip_her2st, "her2st", bench_her2st)):
        if skip:
            continue
        root = args.data / name
        if not root.is_dir():
            print(f"\n[{name}] skipped: data not found at {root.resolve()}")
            continue
        fn(root, args.save_masks)


if __name__ == "__main__":
    main()
