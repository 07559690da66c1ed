"""Image-side benchmark on HER2ST patient C (sections C2..C6).

Stages per section: thumbnail + tissue mask, full-resolution decode, tiles
(spot/region/global into zarr), embeddings (histology encoder). Prints seconds per
stage (wall and process CPU) and the peak RSS of this process.

    .venv/bin/python benchmarks/imaging_patient_c.py [--data ../shared/data/her2st]
        [--threads 2] [--pixel-size-um 0.687] [--out /tmp/dir] [--encoder histology]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asign_assets.imaging.encoders import embed_tiles, get_encoder  # noqa: E402
from asign_assets.readers.images import read_rgb, read_thumbnail  # noqa: E402
from asign_assets.imaging.tissue import tissue_area_mm2, tissue_mask  # noqa: E402
from asign_assets.ingest.lattice import infer_lattice  # noqa: E402
from asign_assets.imaging.tiles import TileParams, write_section_tiles  # noqa: E402

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def spots(data: Path, section: str) -> np.ndarray:
    df = pl.read_csv(data / "ST-spotfiles" / f"{section}_selection.tsv", separator="\t")
    df = df.filter(pl.col("selected") == 1)
    return df.select("pixel_x", "pixel_y").to_numpy().astype(np.float64)


class Clock:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float]] = []

    def __call__(self, section: str, stage: str):
        clock = self

        class _C:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.rows.append((section, stage, time.perf_counter() - self.w, time.process_time() - self.c))

        return _C()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "her2st")
    ap.add_argument("--threads", type=int, default=2)
    # Patient C's spot lattice measures ~291 px per 200 um array unit -> 0.687 um/px.
    ap.add_argument("--pixel-size-um", type=float, default=200.0 / 291.0)
    ap.add_argument("--encoder", default="histology")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data.resolve()
    if not data.is_dir():
        sys.exit(f"data folder {data} not found")
    out = args.out or Path(tempfile.mkdtemp(prefix="asign_bench_"))
    clock = Clock()
    t_all = time.perf_counter()
    tiles_root = zarr.open_group(str(out / "tiles.zarr"), mode="w")
    params = TileParams()
    for s in SECTIONS:
        img = next((data / "ST-imgs" / "C" / s).glob("*.jpg"))
        xy = spots(data, s)
        with clock(s, "thumbnail+mask"):
            thumb, scale = read_thumbnail(img)
            mask = tissue_mask(thumb)
        area = tissue_area_mm2(mask, scale, args.pixel_size_um)
        with clock(s, "lattice"):
            geom = infer_lattice(xy, args.pixel_size_um)
        with clock(s, "decode"):
            rgb = read_rgb(img)
        with clock(s, "tiles"):
            meta = write_section_tiles(rgb, xy, args.pixel_size_um, tiles_root.create_group(s), params)
        del rgb
        print(
            f"{s}: {len(xy)} spots, tissue {area:.2f} mm2, lattice {geom.kind} pitch {geom.pitch_um:.1f} um "
            f"angle {np.degrees(geom.angle_rad):.1f} deg, region tiles {meta['n_region']}, global tiles {meta['n_global']}",
            flush=True,
        )
    enc = get_encoder(args.encoder, torch.device("cpu"))
    emb_root = zarr.open_group(str(out / "embeddings.zarr"), mode="w")
    for s in SECTIONS:
        with clock(s, "embeddings"):
            embed_tiles(tiles_root, emb_root, [s], enc)
    total = time.perf_counter() - t_all

    stages = ["thumbnail+mask", "lattice", "decode", "tiles", "embeddings"]
    print(f"\n{'section':8s}" + "".join(f"{st:>16s}" for st in stages))
    for s in SECTIONS:
        row = {st: w for sec, st, w, _ in clock.rows if sec == s}
        print(f"{s:8s}" + "".join(f"{row.get(st, 0):16.2f}" for st in stages))
    tot_w = {st: sum(w for _, x, w, _ in clock.rows if x == st) for st in stages}
    tot_c = {st: sum(c for _, x, _, c in clock.rows if x == st) for st in stages}
    print(f"{'wall':8s}" + "".join(f"{tot_w[st]:16.2f}" for st in stages))
    print(f"{'cpu':8s}" + "".join(f"{tot_c[st]:16.2f}" for st in stages))
    print(f"\ntotal wall {total:.2f} s (torch threads {args.threads}), encoder {enc.name} dim {enc.dim}")
    print(f"peak RSS {peak_rss_mb():.0f} MB; output in {out}")


if __name__ == "__main__":
    main()
