"""Benchmark: a 40x-like whole-slide section through the asset graph, against the native stack.

Run:
  .venv/bin/python benchmarks/wsi.py [--data ../shared/data/her2st] [--scale 1.0] [--out DIR]
      [--epochs 5] [--device cpu]

Builds, in a temporary folder (nothing goes into the repo), a tiled pyramidal BigTIFF of a
HER2ST patient C section (C3, ~0.687 um/px, 9270 x 9936 px) upsampled to 0.25 um/px
(``--scale 1``: ~25,500 x 27,300 px, ~696 Mpx, like a 40x scan; ``--scale 0.5``: 0.5 um/px),
written strip by strip (256 output rows resampled from the source JPEG at a time, cut into
256 px tiles: never the full-resolution array in memory), JPEG-compressed tiles when
imagecodecs is installed (else deflate), 2x pyramid levels down to < 1024 px as SubIFDs, and
the resolution tags (px per cm). C3's spot table is scaled to the new pixel grid.

Then two stacks run through the ``full_sample`` job (``benchmarks/scale.py::materialise``,
each in a fresh child process so peak RSS is per run): C3 (WSI) + C4 (measured, native
JPEG), and C3 + C4 both native. Printed per asset: seconds and peak RSS (the assets'
``seconds``/``peak_rss_mb`` metadata) and the whole-process peak RSS (psutil, incl. children).
Targets: whole WSI run <= 3 GB peak RSS; sections/tiles/embeddings <= 2x the native stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402  (benchmarks/scale.py: PeakRSS, materialise, merge_config, tiles_run_config)

IMAGING = ("sections", "tiles", "embeddings")
TARGET_RSS_MB = 3 * 1024
TILE = 256


def _compression() -> str:
    try:
        import imagecodecs  # noqa: F401

        return "jpeg"
    except ImportError:
        return "zlib"


def build_wsi(src_jpg: Path, src_um: float, target_um: float, out: Path) -> dict:
    """Write ``src_jpg`` resampled to ``target_um`` as a tiled pyramidal BigTIFF, strip by strip."""
    import tifffile
    from PIL import Image

    from asign_assets.readers.images import read_rgb

    src = Image.fromarray(np.asarray(read_rgb(src_jpg)))  # 92 Mpx source: the only whole image held
    sw, sh = src.size
    comp = _compression()
    g0 = src_um / target_um  # output px per source px at level 0
    sizes = [(round(sw * g0), round(sh * g0))]
    while max(sizes[-1]) > 1024:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))

    def tiles(w: int, h: int):
        gx, gy = w / sw, h / sh
        for r0 in range(0, h, TILE):
            r1 = min(h, r0 + TILE)
            strip = np.asarray(src.resize((w, r1 - r0), Image.Resampling.BILINEAR, box=(0, r0 / gy, sw, r1 / gy)))
            pad = np.full((TILE, -(-w // TILE) * TILE, 3), 255, np.uint8)
            pad[: r1 - r0, :w] = strip
            for c0 in range(0, w, TILE):
                yield pad[:, c0 : c0 + TILE]

    t = time.perf_counter()
    kw = {"photometric": "rgb", "tile": (TILE, TILE), "compression": comp}
    if comp == "jpeg":
        kw["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(out, bigtiff=True) as tw:
        w, h = sizes[0]
        tw.write(tiles(w, h), shape=(h, w, 3), dtype=np.uint8, subifds=len(sizes) - 1,
                 resolution=(1e4 / target_um, 1e4 / target_um), resolutionunit="CENTIMETER", **kw)
        for w, h in sizes[1:]:
            tw.write(tiles(w, h), shape=(h, w, 3), dtype=np.uint8, subfiletype=1, **kw)
    return {"seconds": time.perf_counter() - t, "width": sizes[0][0], "height": sizes[0][1], "levels": len(sizes),
            "compression": comp, "file_mb": out.stat().st_size / 1e6, "factor": g0}


def make_stacks(data: Path, work: Path, target_um: float) -> tuple[Path, Path, dict]:
    """native.yaml (C3 + C4 measured, both native JPEGs) and wsi.yaml (C3 as the built WSI)."""
    import polars as pl

    from asign_assets.importers.her2st import her2st_paths, manifest_from_her2st
    from asign_assets.ingest.manifest import load_manifest, write_manifest
    from asign_assets.readers.slide import file_pixel_size_um

    native, _ = manifest_from_her2st(data, "C", ["C3", "C4"], measured="C4", sample_id="wsi_native", out=work / "native.yaml")
    m = load_manifest(native)
    c3 = m.sections[0]
    image, spots, _ = her2st_paths(data, "C", "C3")
    wsi = work / "C3_wsi.tif"
    with scale.PeakRSS() as rss:
        info = build_wsi(image, c3.pixel_size_um, target_um, wsi)
    info["peak_rss_mb"] = rss.peak_mb
    info["file_pixel_size"] = file_pixel_size_um(wsi)
    g = info["factor"]
    df = pl.read_csv(spots, separator="\t")
    # pixel-centre coordinates: centre x sits at edge x + 0.5, which scales by g
    df = df.with_columns(((pl.col("pixel_x") + 0.5) * g - 0.5).alias("pixel_x"), ((pl.col("pixel_y") + 0.5) * g - 0.5).alias("pixel_y"))
    wsi_spots = work / "C3_wsi_selection.tsv"
    df.write_csv(wsi_spots, separator="\t")
    sec = dataclasses.replace(c3, image=wsi, spots=wsi_spots, pixel_size_um=target_um)
    wm = dataclasses.replace(m, sample_id="wsi_40x", path=work / "wsi.yaml", sections=(sec,) + m.sections[1:],
                             description=f"HER2ST patient C: C3 as a {target_um} um/px tiled pyramidal BigTIFF, C4 measured")
    write_manifest(wm, work / "wsi.yaml")
    return native, work / "wsi.yaml", info


def run_child(manifest: Path, out: Path, device: str, epochs: int) -> dict:
    """Materialise one manifest in a fresh interpreter (per-run peak RSS)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--child", str(manifest), "--out", str(out), "--device", device, "--epochs", str(epochs)], check=True)
    return json.loads((out / "result.json").read_text())


def _child(manifest: Path, out: Path, device: str, epochs: int) -> None:
    from asign_assets.ingest.manifest import load_manifest

    px = [s.pixel_size_um for s in load_manifest(manifest).sections]
    cfg = scale.merge_config(scale.tiles_run_config(px), {"ops": {"model": {"config": {"epochs": epochs, "ensemble": 1}}}})
    r = scale.materialise(manifest, out / "home", device, cfg)
    (out / "result.json").write_text(json.dumps(r, indent=1))


def report(native: dict, wsi: dict, build: dict) -> str:
    lines = [
        f"WSI build: {build['width']} x {build['height']} px ({build['width'] * build['height'] / 1e6:.0f} Mpx), "
        f"{build['levels']} levels (2x steps), {build['compression']} tiles {TILE} px, {build['file_mb']:.0f} MB file, "
        f"{build['seconds']:.0f} s, build peak RSS {build['peak_rss_mb']:.0f} MB; pixel size from the file: {build['file_pixel_size']}",
        f"{'asset':16s} {'native s':>9s} {'WSI s':>8s} {'ratio':>6s} {'native MB':>10s} {'WSI MB':>8s}",
    ]
    for a in scale.ASSETS:
        n, w = native["assets"].get(a, {}), wsi["assets"].get(a, {})
        ns, ws = n.get("seconds", float("nan")), w.get("seconds", float("nan"))
        lines.append(f"{a:16s} {ns:9.1f} {ws:8.1f} {ws / ns if ns else float('nan'):6.2f} {n.get('peak_rss_mb', float('nan')):10.0f} {w.get('peak_rss_mb', float('nan')):8.0f}")
    img_n = sum(native["assets"].get(a, {}).get("seconds", 0.0) for a in IMAGING)
    img_w = sum(wsi["assets"].get(a, {}).get("seconds", 0.0) for a in IMAGING)
    lines += [
        f"{'end to end':16s} {native['total_s']:9.1f} {wsi['total_s']:8.1f} {wsi['total_s'] / native['total_s']:6.2f} "
        f"{native['peak_rss_mb']:10.0f} {wsi['peak_rss_mb']:8.0f}   (whole process, psutil)",
        f"runs OK: native {native['success']} {native['failures']}, WSI {wsi['success']} {wsi['failures']}",
        f"imaging stages (sections+tiles+embeddings): native {img_n:.1f} s, WSI {img_w:.1f} s = {img_w / img_n:.2f}x (target <= 2x: "
        f"{'met' if img_w <= 2 * img_n else 'MISSED'}); WSI run peak RSS {wsi['peak_rss_mb']:.0f} MB (target <= {TARGET_RSS_MB} MB: "
        f"{'met' if wsi['peak_rss_mb'] <= TARGET_RSS_MB else 'MISSED'})",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "her2st")
    ap.add_argument("--scale", type=float, default=1.0, help="linear size of the WSI relative to a 0.25 um/px (40x) scan")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, deleted)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--epochs", type=int, default=5, help="model epochs (the imaging stages do not depend on it)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.out, args.device, args.epochs)
        return
    if not args.data.is_dir():
        sys.exit(f"HER2ST data not found at {args.data} (pass --data)")
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="asign-wsi-")
        args.out = Path(tmp.name)
    args.out.mkdir(parents=True, exist_ok=True)
    native_m, wsi_m, build = make_stacks(args.data.resolve(), args.out, 0.25 / args.scale)
    print(f"built {wsi_m.parent / 'C3_wsi.tif'} in {build['seconds']:.0f} s", flush=True)
    native = run_child(native_m, args.out / "native", args.device, args.epochs)
    wsi = run_child(wsi_m, args.out / "wsi", args.device, args.epochs)
    text = report(native, wsi, build)
    print(text)
    (args.out / "report.txt").write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
