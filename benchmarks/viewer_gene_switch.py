"""Server time of the viewer's gene-switch callback on a 100k-spot x 250-gene volume,
the dense volume build (asign_assets.results.volume) and the dense views' gene/slice changes.

    .venv/bin/python benchmarks/viewer_gene_switch.py [--spots 100000] [--genes 250] [--repeats 7]

Builds a fake result tree in a temp dir (tests/viewer_fixtures.py), then times
`dash_app.callbacks.switch_gene` (read one gene column from imputed_volume.zarr, build the
Patch) and the same callback through Dash's HTTP endpoint (adds JSON serialisation):
cold = gene not yet in the viewer's cache (one zarr chunk read), warm = cached.

Then builds the OME-Zarr expression volume of that result at the default resolution
(timed, with peak RSS: budget <= 30 s and <= 2 GB) and times, per view, a gene switch
(section view, slices, isosurface; cold caches) and a slice change (warm gene).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _ms(f, *a) -> float:
    t = time.perf_counter()
    f(*a)
    return (time.perf_counter() - t) * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--sections", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--volume-child", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.volume_child is not None:
        build_volume_child(a.volume_child)
        return

    from viewer_fixtures import write_fake_result

    from dash_app import callbacks as cb
    from dash_app import data
    from dash_app.app import create_app

    grid = math.ceil(math.sqrt(a.spots / a.sections))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = write_fake_result(
            Path(tmp), n_sections=a.sections, grid=grid, n_genes=a.genes, with_layers=False, write_h5ad=False, with_dense=False
        )
        n = len(r.X)
        print(f"built {n} spots x {a.genes} genes in {time.perf_counter() - t:.1f} s")
        home, s = r.home, r.sample
        genes = r.genes

        t_meta = _ms(data.load_volume, home, s)
        t_sample = _ms(cb.select_sample, home, s, genes[0])
        print(f"first load of the volume metadata: {t_meta:.0f} ms; sample switch (full 3D figure): {t_sample:.0f} ms")

        picks = [genes[(7 * i + 3) % len(genes)] for i in range(a.repeats)]
        cold = []
        for g in picks:
            data._gene_column.cache_clear()
            cold.append(_ms(cb.switch_gene, home, s, g))
        warm = [_ms(cb.switch_gene, home, s, g) for g in picks]

        # The same callback through Dash's HTTP endpoint (validation + Patch serialisation).
        app = create_app(home)
        client = app.server.test_client()
        deps = client.get("/_dash-dependencies").get_json()
        out = next(d["output"] for d in deps if d["output"].startswith("..graph-3d.figure@") and "gene-note" in d["output"])
        fig_prop = out.split("graph-3d.")[1].split("...")[0]

        def post(g: str) -> None:
            body = {
                "output": out,
                "outputs": [{"id": "graph-3d", "property": fig_prop}, {"id": "gene-note", "property": "children"}],
                "inputs": [{"id": "gene", "property": "value", "value": g}],
                "state": [{"id": "sample", "property": "value", "value": s}],
                "changedPropIds": ["gene.value"],
            }
            resp = client.post("/_dash-update-component", json=body)
            assert resp.status_code == 200
            payload_sizes.append(len(resp.data))

        payload_sizes: list[int] = []
        http_cold = []
        for g in picks:
            data._gene_column.cache_clear()
            http_cold.append(_ms(post, g))
        http_warm = [_ms(post, g) for g in picks]

        # Sample switch through HTTP: the full 3D figure (all coordinates, hover text).
        sdep = next(d for d in deps if d["output"].startswith("..gene.options"))
        outs = [dict(zip(("id", "property"), o.rsplit(".", 1))) for o in sdep["output"].strip(".").split("...")]
        sbody = {
            "output": sdep["output"],
            "outputs": outs,
            "inputs": [{"id": "sample", "property": "value", "value": s}],
            "state": [{"id": "gene", "property": "value", "value": genes[1]}, {"id": "z-stretch", "property": "value", "value": 10}],
            "changedPropIds": ["sample.value"],
        }
        t = time.perf_counter()
        resp = client.post("/_dash-update-component", json=sbody)
        t_sample_http = (time.perf_counter() - t) * 1e3
        assert resp.status_code == 200, resp.data[:300]
        print(f"sample switch, Dash HTTP request: {t_sample_http:.0f} ms; response {len(resp.data) / 1e6:.1f} MB")

        med = statistics.median
        print(f"gene switch, callback function: cold median {med(cold):.1f} ms (max {max(cold):.1f}), "
              f"warm median {med(warm):.2f} ms")
        print(f"gene switch, Dash HTTP request:  cold median {med(http_cold):.1f} ms (max {max(http_cold):.1f}), "
              f"warm median {med(http_warm):.1f} ms; response {payload_sizes[0] / 1e6:.2f} MB")
        ok = med(http_cold) <= 200
        print(f"target <= 200 ms server time: {'met' if ok else 'NOT met'}")
        dense_views(r, picks, a.repeats)


def build_volume_child(folder: Path) -> None:
    """The volume build alone in this (fresh) process, as the asset does it; prints time and peak RSS."""
    import resource

    import numpy as np

    from asign_assets.results.volume import gridding_operator, spearman_columns, write_gridded

    xyz, code, x = (np.load(folder / f"{k}.npy") for k in ("xyz", "code", "x"))
    genes = (folder / "genes.txt").read_text().split()
    sections = json.loads((folder / "sections.json").read_text())
    out = folder / "expression_volume"
    t, cpu = time.perf_counter(), time.process_time()
    op = gridding_operator(xyz, code)
    t_op = time.perf_counter() - t
    out.mkdir()
    at = write_gridded(out / "expression.ome.zarr", op, x, genes, attrs={"unit": "log1p_cp10k", "sections": sections})
    t_expr = time.perf_counter() - t
    agree = spearman_columns(at, x)
    del at
    write_gridded(out / "uncertainty.ome.zarr", op, 0.1 * x, genes, "uncertainty", attrs={"sections": sections})
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"volume build: {len(x)} spots x {len(genes)} genes -> grid {op.grid.shape} (z, y, x) at "
          f"{tuple(round(v, 1) for v in op.grid.voxel_um)} um: operator {t_op:.1f} s, expression volume written at "
          f"{t_expr:.1f} s, + uncertainty volume: {total:.1f} s wall, {cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f}); peak RSS of the process {peak:.0f} MB "
          f"(inputs {x.nbytes / 1e6:.0f} MB); on disk {size_mb:.0f} MB; spot agreement median Spearman {np.nanmedian(agree):.3f}")
    print(f"volume budget <= 30 s and <= 2 GB: {'met' if total <= 30 and peak <= 2048 else 'NOT met'}")


def dense_views(r, picks: list[str], repeats: int) -> None:
    """Volume build at default resolution (child process), then gene switch / slice change in the dense views."""
    import subprocess

    import numpy as np

    from dash_app import callbacks as cb
    from dash_app import data

    folder = r.home / "samples" / r.sample
    bench = r.home / "volume_bench"  # the child's inputs, outside the result tree
    bench.mkdir()
    np.save(bench / "xyz.npy", r.xyz_um)
    np.save(bench / "code.npy", np.unique(r.section, return_inverse=True)[1])
    np.save(bench / "x.npy", r.X)
    (bench / "genes.txt").write_text("\n".join(r.genes))
    (bench / "sections.json").write_text(json.dumps([{"name": n, "z_um": float(i * 20.0), "measured": False} for i, n in enumerate(r.sections)]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, "--volume-child", str(bench)], check=True, env=env)
    (bench / "expression_volume").rename(folder / "expression_volume")

    home, s = r.home, r.sample
    med = statistics.median
    sec = r.sections[len(r.sections) // 2]
    lo, hi, z_mid, _, _ = cb.slice_controls(home, s)
    views = {
        "section view": lambda g: cb.section_view(home, s, sec, g, ["imputed"]),
        "slices": lambda g: cb.slice_view(home, s, g, z_mid, None),
        "isosurface": lambda g: cb.iso_view(home, s, g),
    }
    for name, f in views.items():
        cold = []
        for g in picks:
            data._gene_column.cache_clear()
            data._dense_channel.cache_clear()
            cold.append(_ms(f, g))
        print(f"gene switch, {name}: cold median {med(cold):.1f} ms (max {max(cold):.1f})")
    zs = [lo + (hi - lo) * (i + 0.5) / repeats for i in range(repeats)]
    cb.slice_view(home, s, picks[0], zs[0], None)
    change = [_ms(cb.slice_view, home, s, picks[0], z, {"x": 1000.0 + 50 * i, "y": 1200.0}) for i, z in enumerate(zs)]
    print(f"slice change (z and point, warm gene): median {med(change):.1f} ms (max {max(change):.1f}); target <= 300 ms")


if __name__ == "__main__":
    main()
