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


def run_one(n_sections: int, spots_per_section: int, image_px: int | None, device: str, out_dir: Path, run_config: dict | None = None) -> dict:
    """Generate, materialise, measure one stack (in this process)."""
    import dagster as dg

    from asign_assets.demo import DemoConfig, make_demo_stack

    out_dir.mkdir(parents=True, exist_ok=True)
    if image_px is None:
        image_px = default_image_px(spots_per_section)
    cfg = DemoConfig(n_sections=n_sections, spots_per_section=spots_per_section, image_px=image_px)
    t = time.perf_counter()
    with PeakRSS() as gen_rss:
        stack = make_demo_stack(out_dir / "stack", cfg, sample_id="scale")
    gen_s = time.perf_counter() - t

    home = out_dir / "home"
    os.environ["ASIGN_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    from asign_assets.definitions import build_definitions
    from asign_assets.manifest import load_manifest
    from asign_assets.storage import Storage

    storage = Storage(str(home))
    manifest = load_manifest(stack.manifest_path)
    storage.register(manifest)
    defs = build_definitions(storage_root=storage.root, device=device)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    job = defs.resolve_job_def("full_sample")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    with PeakRSS() as rss:
        result = job.execute_in_process(partition_key=manifest.sample_id, instance=instance, raise_on_error=False, run_config=run_config or {})
    total_s = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    assets = _asset_metadata(instance, manifest.sample_id, result.run_id)
    failures = [ev.step_key for ev in result.all_events if ev.is_step_failure]
    sec_rows = json.loads((home / "samples" / manifest.sample_id / "sections" / "sections.json").read_text()) if result.success else []
    n_spots = sum(int(r.get("n_spots", 0)) for r in sec_rows) if sec_rows else n_sections * spots_per_section
    disk = {p.name: _du(p) for p in (home / "samples" / manifest.sample_id).iterdir()} if (home / "samples" / manifest.sample_id).exists() else {}
    return {
        "n_sections": n_sections,
        "spots_per_section": spots_per_section,
        "image_px": image_px,
        "n_spots": n_spots,
        "pixel_size_um": cfg.pixel_size_um,
        "device": device,
        "success": bool(result.success),
        "failures": failures,
        "generate_s": gen_s,
        "generate_peak_rss_mb": gen_rss.peak_mb,
        "total_s": total_s,
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "peak_rss_mb": rss.peak_mb,
        "ru_maxrss_mb": ru1.ru_maxrss / 1024.0,  # Linux: KiB; includes generation
        "assets": assets,
        "disk_mb": disk,
    }


def _du(p: Path) -> float:
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def default_image_px(spots_per_section: int) -> int:
    """~3000 px for 5000 spots (about 4 um/px, Visium-like pitch), proportionally smaller below."""
    return int(max(600, min(3000, round(3000 * math.sqrt(spots_per_section / 5000) / 100) * 100)))


def run_in_child(n_sections: int, spots: int, image_px: int | None, device: str, out_dir: Path, run_config: dict | None) -> dict:
    """Run one size in a fresh interpreter so peak memory is per size."""
    res = out_dir / "result.json"
    cmd = [sys.executable, __file__, "--child", "--sections", str(n_sections), "--spots", str(n_sections * spots), "--device", device, "--out", str(out_dir)]
    if image_px:
        cmd += ["--image-px", str(image_px)]
    if run_config:
        cmd += ["--run-config", json.dumps(run_config)]
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
    ap.add_argument("--results", type=Path, default=None, help="also save/load the JSON results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    run_config = json.loads(args.run_config) if args.run_config else None

    if args.child:
        r = run_one(args.sections, args.spots // args.sections, args.image_px, args.device, args.out, run_config)
        (args.out / "result.json").write_text(json.dumps(r, indent=1))
        return

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="asign-scale-")
        args.out = Path(tmp.name)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] if args.sweep else [(args.sections, args.spots // args.sections)]
    results = []
    for n_sec, per in sizes:
        print(f"\n=== {n_sec} sections x {per} spots ===", flush=True)
        r = run_in_child(n_sec, per, args.image_px, args.device, args.out / f"{n_sec}x{per}", run_config)
        print(summary(r), flush=True)
        results.append(r)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    if len(results) > 1:
        print("\n" + table(results))
    if args.write_docs:
        from benchmarks.scale_docs import write_docs  # noqa: PLC0415

        write_docs(results, ROOT / "docs")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
