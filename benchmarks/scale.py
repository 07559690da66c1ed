"""Benchmark: the whole asset graph on synthetic Visium-size stacks, through Dagster.

Run:
  .venv/bin/python benchmarks/scale.py --spots 100000 [--sections 20] [--device cpu] [--out DIR]
  .venv/bin/python benchmarks/scale.py --sweep [--sizes 5x200,10x1000,20x5000] [--write-docs]

Per run: the demo stack is generated first (timed, not counted), then the ``full_sample`` job
is executed in process exactly as ``asign run`` does (build_definitions(...).resolve_job_def(
"full_sample").execute_in_process(partition_key=..., instance=...)). Each asset's ``seconds``
and ``peak_rss_mb`` are read back from its materialization metadata in the Dagster instance;
the whole-process peak RSS (incl. children) is sampled by a psutil thread and cross-checked
with ``resource.getrusage``. Each run happens in a fresh child process, so one size's peak
memory does not leak into the next. ``--sweep`` fits time ~ N^k per asset (log-log least
squares) and, with ``--write-docs``, writes docs/benchmarks.md and docs/benchmarks_scaling.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSETS = ("sections", "tiles", "embeddings", "registrations", "graph_3d", "expression", "model", "imputed_volume", "evaluation")
TARGET_S = 15 * 60
TARGET_100K_S = 10 * 60  # issue #13 (cost on 2 CPU cores)
TARGET_RSS_MB = 8 * 1024


class PeakRSS:
    """Peak RSS of this process plus its children, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.1):
        import psutil

        self._proc = psutil.Process(os.getpid())
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self._proc.memory_info().rss
                for c in self._proc.children(recursive=True):
                    try:
                        rss += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                rss = 0
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _asset_metadata(instance, sample_id: str, run_id: str) -> dict[str, dict]:
    """seconds / peak_rss_mb of every asset materialised by ``run_id`` (from the instance)."""
    import dagster as dg

    out: dict[str, dict] = {}
    for name in ASSETS:
        ev = instance.get_latest_materialization_event(dg.AssetKey(name))
        if ev is None or ev.run_id != run_id:
            continue
        meta = ev.asset_materialization.metadata
        row = {}
        for k in ("seconds", "peak_rss_mb"):
            if k in meta:
                row[k] = float(meta[k].value)
        out[name] = row
    return out


def _load(path):
    from asign_assets.ingest.manifest import load_manifest

    return load_manifest(path)


def merge_config(a: dict, b: dict) -> dict:
    out = {"ops": {**a.get("ops", {})}}
    for op, cfg in b.get("ops", {}).items():
        out["ops"][op] = {"config": {**out["ops"].get(op, {}).get("config", {}), **cfg.get("config", {})}}
    return out


def tiles_run_config(pixel_sizes_um: list[float]) -> dict:
    """Run config equivalent to ``TileParams(spot_downsample=auto_spot_downsample(...))`` through
    the existing TilesConfig fields (same physical patches, stored at no finer than the scan),
    plus a larger encoder batch for the small patches."""
    from asign_assets.imaging.tiles import TileParams, auto_spot_downsample

    p = TileParams()
    f = auto_spot_downsample(pixel_sizes_um, p)
    cfg = {"ops": {"embeddings": {"config": {"batch_size": 256}}}}
    if f > 1:
        cfg["ops"]["tiles"] = {"config": {
            "spot_size": p.spot_size // f, "spot_um_per_px": p.spot_um_per_px * f,
            "region_size": p.region_size // f, "region_downsample": max(1, p.region_downsample // f),
            "global_size": p.global_size // f, "global_downsample": max(1, p.global_downsample // f),
        }}
    return cfg


def run_one(n_sections: int, spots_per_section: int, image_px: int | None, device: str, out_dir: Path, run_config: dict | None = None, auto_tiles: bool = True) -> dict:
    """Generate, materialise, measure one stack (in this process)."""
    from asign_assets.importers.demo import DemoConfig, make_demo_stack

    out_dir.mkdir(parents=True, exist_ok=True)
    if image_px is None:
        image_px = default_image_px(spots_per_section)
    cfg = DemoConfig(n_sections=n_sections, spots_per_section=spots_per_section, image_px=image_px)
    gen_file = out_dir / "generation.json"
    stack_manifest = out_dir / "stack" / "manifest.yaml"
    prev = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    if stack_manifest.exists() and prev.get("config") == repr(cfg):  # same stack already generated: reuse it
        gen_s, gen_peak = prev["seconds"], prev["peak_rss_mb"]
    else:
        t = time.perf_counter()
        with PeakRSS() as gen_rss:
            make_demo_stack(out_dir / "stack", cfg, sample_id="scale")
        gen_s, gen_peak = time.perf_counter() - t, gen_rss.peak_mb
        gen_file.write_text(json.dumps({"config": repr(cfg), "seconds": gen_s, "peak_rss_mb": gen_peak}))
    stack = type("Stack", (), {"manifest_path": stack_manifest})

    run_config = dict(run_config or {})
    if auto_tiles:
        run_config = merge_config(tiles_run_config([s.pixel_size_um for s in _load(stack.manifest_path).sections]), run_config)

    run = materialise(stack.manifest_path, out_dir / "home", device, run_config)
    n_spots = run.pop("n_spots") or n_sections * spots_per_section
    return {
        "n_sections": n_sections,
        "spots_per_section": spots_per_section,
        "image_px": image_px,
        "n_spots": n_spots,
        "pixel_size_um": cfg.pixel_size_um,
        "device": device,
        "run_config": run_config,
        "generate_s": gen_s,
        "generate_peak_rss_mb": gen_peak,
        **run,
    }


def materialise(manifest_path: Path, home: Path, device: str, run_config: dict | None = None) -> dict:
    """Run the ``full_sample`` job on one manifest in this process, in a fresh ``home``, and
    measure it: success, failures, total_s, cpu_s, peak_rss_mb, ru_maxrss_mb, per-asset
    seconds/peak_rss_mb (``assets``), disk MB per asset folder and n_spots (0 if unknown)."""
    import dagster as dg

    if home.exists():
        import shutil

        shutil.rmtree(home)
    os.environ["ASIGN_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    storage = Storage(str(home))
    manifest = load_manifest(manifest_path)
    storage.register(manifest)
    defs = build_definitions(storage_root=storage.root, device=device)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    job = defs.resolve_job_def("full_sample")
    ru0, rc0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with PeakRSS() as rss:
        result = job.execute_in_process(partition_key=manifest.sample_id, instance=instance, raise_on_error=False, run_config=run_config or {})
    total_s = time.perf_counter() - t
    ru1, rc1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    sample_dir = home / "samples" / manifest.sample_id
    sec_json = sample_dir / "sections" / "sections.json"
    sec_rows = json.loads(sec_json.read_text()) if sec_json.exists() else []
    return {
        "n_spots": sum(int(r.get("n_spots", 0)) for r in sec_rows),
        "success": bool(result.success),
        "failures": [ev.step_key for ev in result.all_events if ev.is_step_failure],
        "total_s": total_s,
        # this process and its finished children (the section and ensemble-member worker processes)
        "cpu_s": sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in ((ru0, ru1), (rc0, rc1))),
        "peak_rss_mb": rss.peak_mb,
        "ru_maxrss_mb": ru1.ru_maxrss / 1024.0,  # Linux: KiB; the whole process so far
        "assets": _asset_metadata(instance, manifest.sample_id, result.run_id),
        "disk_mb": {p.name: _du(p) for p in sample_dir.iterdir()} if sample_dir.exists() else {},
    }


def _du(p: Path) -> float:
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def default_image_px(spots_per_section: int) -> int:
    """~3000 px for 5000 spots (about 4 um/px, Visium-like pitch), proportionally smaller below."""
    return int(max(600, min(3000, round(3000 * math.sqrt(spots_per_section / 5000) / 100) * 100)))


def run_in_child(n_sections: int, spots: int, image_px: int | None, device: str, out_dir: Path, run_config: dict | None, auto_tiles: bool = True) -> dict:
    """Run one size in a fresh interpreter so peak memory is per size."""
    res = out_dir / "result.json"
    cmd = [sys.executable, __file__, "--child", "--sections", str(n_sections), "--spots", str(n_sections * spots), "--device", device, "--out", str(out_dir)]
    if image_px:
        cmd += ["--image-px", str(image_px)]
    if run_config:
        cmd += ["--run-config", json.dumps(run_config)]
    if not auto_tiles:
        cmd += ["--no-auto-tiles"]
    subprocess.run(cmd, check=True)
    return json.loads(res.read_text())


def fit_exponent(ns: list[float], ts: list[float]) -> float:
    """Least-squares slope of log t vs log N."""
    import numpy as np

    x, y = np.log(np.asarray(ns, float)), np.log(np.maximum(np.asarray(ts, float), 1e-3))
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def table(results: list[dict]) -> str:
    hdr = "| asset | " + " | ".join(f"N={r['n_spots']:,} s" for r in results) + " | " + " | ".join(f"N={r['n_spots']:,} MB" for r in results) + " | exponent |"
    lines = [hdr, "|---|" + "---:|" * (2 * len(results) + 1)]
    ns = [r["n_spots"] for r in results]
    for a in ASSETS:
        ts = [r["assets"].get(a, {}).get("seconds", float("nan")) for r in results]
        ms = [r["assets"].get(a, {}).get("peak_rss_mb", float("nan")) for r in results]
        k = fit_exponent(ns, ts) if all(math.isfinite(t) for t in ts) else float("nan")
        lines.append(f"| {a} | " + " | ".join(f"{t:.1f}" for t in ts) + " | " + " | ".join(f"{m:.0f}" for m in ms) + f" | {k:.2f} |")
    tot = [r["total_s"] for r in results]
    lines.append("| **end to end** | " + " | ".join(f"**{t:.1f}**" for t in tot) + " | " + " | ".join(f"**{r['peak_rss_mb']:.0f}**" for r in results) + f" | {fit_exponent(ns, tot):.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n_spots"] for r in results]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for a in ASSETS:
        ts = [max(r["assets"].get(a, {}).get("seconds", float("nan")), 1e-2) for r in results]
        ax[0].loglog(ns, ts, "o-", label=a, ms=4)
        ms = [r["assets"].get(a, {}).get("peak_rss_mb", float("nan")) for r in results]
        ax[1].loglog(ns, ms, "o-", label=a, ms=4)
    ax[0].loglog(ns, [r["total_s"] for r in results], "k^-", lw=2, label="end to end")
    ax[0].axhline(TARGET_S, color="r", ls="--", lw=1, label="15 min target")
    ax[1].loglog(ns, [r["peak_rss_mb"] for r in results], "k^-", lw=2, label="whole process")
    ax[1].axhline(TARGET_RSS_MB, color="r", ls="--", lw=1, label="8 GB target")
    ax[0].set(xlabel="spots (N)", ylabel="seconds", title="time per asset")
    ax[1].set(xlabel="spots (N)", ylabel="peak RSS (MB)", title="peak memory per asset")
    ax[0].legend(fontsize=7, ncol=2)
    ax[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def summary(r: dict) -> str:
    lines = [
        f"stack: {r['n_sections']} sections x {r['spots_per_section']} spots/section target -> N={r['n_spots']:,} spots, "
        f"{r['image_px']}^2 px images at {r['pixel_size_um']:.2f} um/px; device {r['device']}",
        f"generation (not counted): {r['generate_s']:.1f} s, peak {r['generate_peak_rss_mb']:.0f} MB",
        f"run {'OK' if r['success'] else 'FAILED ' + str(r['failures'])}: {r['total_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB (getrusage maxrss {r['ru_maxrss_mb']:.0f} MB)",
        f"  {'asset':16s} {'seconds':>9s} {'peak MB':>9s}",
    ]
    for a in ASSETS:
        m = r["assets"].get(a, {})
        lines.append(f"  {a:16s} {m.get('seconds', float('nan')):9.1f} {m.get('peak_rss_mb', float('nan')):9.0f}")
    lines.append("  disk MB: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["disk_mb"].items())))
    return "\n".join(lines)


def _capture(fn, *args) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue().strip()


def dense_comparison(ns: tuple[int, ...] = (100, 200)) -> str:
    """The reference's all-pairs 100-gon IoU vs our KD-tree + closed form (registration_graph.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import registration_graph as rg  # noqa: PLC0415

    return "\n\n".join(_capture(rg.bench_dense_vs_sparse, n) for n in ns)


def _slowest(r: dict, n: int = 3) -> list[tuple[str, float]]:
    secs = [(a, float(r["assets"][a]["seconds"])) for a in ASSETS if a in r.get("assets", {}) and r["assets"][a].get("seconds") is not None]
    return sorted(secs, key=lambda t: -t[1])[:n]


def write_docs(results: list[dict], docs: Path, extra_sections: dict[str, str] | None = None) -> None:
    """docs/benchmarks.md (tables, exponents, notes) and docs/benchmarks_scaling.png."""
    docs.mkdir(parents=True, exist_ok=True)
    plot(results, docs / "benchmarks_scaling.png")
    big = max(results, key=lambda r: r["n_spots"])
    ok_t = big["total_s"] <= TARGET_S
    ok_m = big["peak_rss_mb"] <= TARGET_RSS_MB
    host = f"{platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    md = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/scale.py --sweep --write-docs`. **All timings are from one run on a shared "
        f"2-core machine ({host}) where other jobs may run**, so they are indicative (expect +-30%); "
        "CPU-bound stages are the ones to compare. Device: " + ", ".join(sorted({r["device"] for r in results})) + ".",
        "",
        "## Whole asset graph through Dagster (synthetic Visium-like stacks)",
        "",
        "Each size: `make_demo_stack(DemoConfig(n_sections, spots_per_section, image_px))` (hexagonal 100 um lattice, "
        "55 um spots, ~4 um/px images; generation is timed but not counted), then the `full_sample` job executed in "
        "process exactly as `asign run` does. Per-asset seconds and peak RSS are the `seconds` / `peak_rss_mb` "
        "materialization metadata read back from the Dagster instance; *end to end* is the job's wall time and the "
        "whole-process peak RSS (psutil sampling thread incl. children). Exponent: least-squares slope of log(time) "
        "vs log(N).",
        "",
        table(results),
        "",
        "![time and memory per asset vs N](benchmarks_scaling.png)",
        "",
        "| N spots | sections x spots | image px | um/px | generation s | end-to-end s | CPU s (incl. workers) | peak RSS MB | tiles.zarr MB | run config |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        md.append(
            f"| {r['n_spots']:,} | {r['n_sections']} x {r['spots_per_section']} | {r['image_px']} | {r['pixel_size_um']:.2f} | "
            f"{r['generate_s']:.0f} | {r['total_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['disk_mb'].get('tiles.zarr', float('nan')):.0f} | `{json.dumps(r.get('run_config') or {})}` |"
        )
    md += [
        "",
        f"Target (GitHub issue *Scale: Visium-size stacks on one machine*): 20 x 5,000 spots in <= 15 min with peak "
        f"RSS <= 8 GB on 2 CPU cores. Largest run: N={big['n_spots']:,}, {big['total_s'] / 60:.1f} min "
        f"({'meets' if ok_t else 'MISSES'} the time target), {big['peak_rss_mb'] / 1024:.2f} GB "
        f"({'meets' if ok_m else 'MISSES'} the memory target)"
        + ("" if big["success"] else f"; the run FAILED at {big['failures']}") + ".",
        f"Issue #13's cost target is tighter: the 100k benchmark in <= {TARGET_100K_S // 60} min "
        f"({'met' if big['total_s'] <= TARGET_100K_S else 'missed'}: {big['total_s'] / 60:.1f} min; "
        f"the slowest assets: {', '.join(f'{a} {s:.0f} s' for a, s in _slowest(big))}).",
        "",
    ]
    for title, body in (extra_sections or {}).items():
        md += [f"## {title}", "", body, ""]
    (docs / "benchmarks.md").write_text("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, default=100_000, help="total spots (split evenly over --sections)")
    ap.add_argument("--sections", type=int, default=20)
    ap.add_argument("--image-px", type=int, default=None, help="image side; default ~3000 px at 5000 spots/section")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, deleted)")
    ap.add_argument("--sweep", action="store_true", help="run 5x200, 10x1000, 20x5000 (or --sizes)")
    ap.add_argument("--sizes", default="5x200,10x1000,20x5000")
    ap.add_argument("--run-config", default=None, help="JSON Dagster run config (e.g. model epochs)")
    ap.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md and the plot")
    ap.add_argument("--results", type=Path, default=None, help="also save the JSON results here")
    ap.add_argument("--from-results", type=Path, nargs="*", default=None, help="skip running: load these results JSON files")
    ap.add_argument("--notes", type=Path, default=ROOT / "benchmarks" / "scale_notes.md", help="markdown to include in docs/benchmarks.md (changes, before/after)")
    ap.add_argument("--patient-c", type=Path, default=ROOT / "benchmarks" / "imaging_patient_c_output.txt", help="saved output of benchmarks/imaging_patient_c.py to include")
    ap.add_argument("--no-auto-tiles", action="store_true", help="default TilesConfig (224 px spot patches at 0.8 um/px whatever the scan)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    run_config = json.loads(args.run_config) if args.run_config else None

    if args.child:
        r = run_one(args.sections, args.spots // args.sections, args.image_px, args.device, args.out, run_config, not args.no_auto_tiles)
        (args.out / "result.json").write_text(json.dumps(r, indent=1))
        return

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="asign-scale-")
        args.out = Path(tmp.name)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if args.sweep else [(args.sections, args.spots // args.sections)]
    results = []
    if args.from_results:
        for f in args.from_results:
            loaded = json.loads(f.read_text())
            results += loaded if isinstance(loaded, list) else [loaded]
        results.sort(key=lambda r: r["n_spots"])
        sizes = []
    for n_sec, per in sizes:
        print(f"\n=== {n_sec} sections x {per} spots ===", flush=True)
        r = run_in_child(n_sec, per, args.image_px, args.device, args.out / f"{n_sec}x{per}", run_config, not args.no_auto_tiles)
        print(summary(r), flush=True)
        results.append(r)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    if len(results) > 1:
        print("\n" + table(results))
    if args.write_docs:
        extra = {}
        if args.notes and args.notes.exists():
            extra["Changes, before/after and what remains slow"] = args.notes.read_text()
        extra["Dense reference vs sparse graph (small N)"] = (
            "From `benchmarks/registration_graph.py` (the reference builds overlap edges from all pairs of 100-gon "
            "polygons; we query a KD-tree and use the closed-form circle intersection):\n\n```\n" + dense_comparison() + "\n```"
        )
        if args.patient_c and args.patient_c.exists():
            extra["HER2ST patient C (real data)"] = "Output of `benchmarks/imaging_patient_c.py`:\n\n```\n" + args.patient_c.read_text().strip() + "\n```"
        write_docs(results, ROOT / "docs", extra)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
