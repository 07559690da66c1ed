"""Several measured sections through the whole asset graph (issue #13, item 5).

A 5-section synthetic stack with S01 and S05 measured. S01's counts have genes A boosted
and S05's genes B, so the imputed values show which measured section they came from.
"""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import polars as pl
import pytest
import yaml

from asign_assets.errors import InputError

FAST_RUN_CONFIG = {"ops": {"model": {"config": {"epochs": 30}}}}
GENES_A = [f"G{i:04d}" for i in range(0, 8)]  # boosted in S01's counts
GENES_B = [f"G{i:04d}" for i in range(8, 16)]  # boosted in S05's counts
Z_STEP = 40.0


def _boost(path, genes: list[str], factor: int = 8) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().rstrip("\n").split("\n")
    header = lines[0].split("\t")
    cols = {header.index(g) for g in genes}
    out = ["\t".join(header)]
    for line in lines[1:]:
        cells = line.split("\t")
        out.append("\t".join(str(int(v) * factor) if j in cols else v for j, v in enumerate(cells)))
    path.write_bytes(gzip.compress(("\n".join(out) + "\n").encode(), mtime=0))


@pytest.fixture(scope="module")
def two_measured_run(tmp_path_factory):
    """(store, sample id, result, stack dir) of the 5-section stack, S01 + S05 measured."""
    import dagster as dg

    from asign_assets.pipeline.definitions import build_definitions
    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    out = tmp_path_factory.mktemp("two_measured")
    cfg = DemoConfig(n_sections=5, spots_per_section=90, image_px=480, n_genes=120, seed=3, z_step_um=Z_STEP, measured_indices=(0, 4))
    stack = make_demo_stack(out / "stack", cfg, sample_id="two")
    _boost(out / "stack" / "counts" / "S01.tsv.gz", GENES_A)
    _boost(out / "stack" / "counts" / "S05.tsv.gz", GENES_B)
    manifest = load_manifest(stack.manifest_path)
    store = Storage(out / "home")
    store.register(manifest)
    defs = build_definitions(storage_root=str(out / "home"), device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [manifest.sample_id])
    result = defs.resolve_job_def("full_sample").execute_in_process(
        partition_key=manifest.sample_id, instance=instance, run_config=FAST_RUN_CONFIG, raise_on_error=False,
    )
    return store, manifest.sample_id, result, out / "stack"


def _metadata(result, asset: str) -> dict:
    return next(
        e.event_specific_data.materialization.metadata for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.to_user_string() == asset
    )


def test_demo_manifest_marks_both_sections(two_measured_run):
    from asign_assets.ingest.manifest import load_manifest

    *_, stack = two_measured_run
    m = load_manifest(stack / "manifest.yaml")
    assert [s.name for s in m.measured_sections] == ["S01", "S05"] and m.measured_indices == (0, 4)
    assert all(s.truth is not None for s in m.sections if not s.measured)
    assert m.reference_index == 0  # S01 and S05 are equally far from the middle: the first


def test_both_measured_sections_are_known_in_training(two_measured_run):
    from asign_assets.storage.stack_inputs import StackInputs

    store, sid, result, _ = two_measured_run
    assert result.success
    expr = ad.read_h5ad(store.local_path(sid, "expression.h5ad"))
    assert list(expr.uns["sections"]) == ["S01", "S05"]
    per = expr.obs["section"].value_counts().to_dict()
    assert set(per) == {"S01", "S05"} and min(per.values()) >= 20
    # genes are selected over the spots of both sections: both boosted sets are in
    assert set(GENES_A + GENES_B) <= set(expr.var_names)
    inp = StackInputs.load(store, sid)
    sec = inp.spots["section"].to_numpy()[inp.measured_idx]
    assert {s: int((sec == s).sum()) for s in ("S01", "S05")} == per
    # the training inputs are the measured values of both sections, row by row
    keys = (inp.spots["section"] + ":" + inp.spots["spot_id"]).to_numpy()[inp.measured_idx]
    np.testing.assert_array_equal(keys, expr.obs_names)
    assert _metadata(result, "model")["measured_spots"].value == expr.n_obs
    vol = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    known = vol.obs[vol.obs["known"]]
    assert known["section"].value_counts()[["S01", "S05"]].to_dict() == per and len(known) == expr.n_obs
    np.testing.assert_allclose(np.asarray(vol[expr.obs_names].X), np.asarray(expr.X), rtol=1e-6)
    assert list(vol.uns["asign"]["measured_sections"]) == ["S01", "S05"]
    assert set(vol.obs.loc[vol.obs["measured"], "section"]) == {"S01", "S05"}


def test_propagation_next_to_each_measured_section_comes_from_it(two_measured_run):
    from asign_assets.graph.edge_types import EDGE_OVERLAP
    from asign_assets.storage.stack_inputs import StackInputs

    store, sid, _, _ = two_measured_run
    vol = ad.read_h5ad(store.local_path(sid, "imputed_volume.h5ad"))
    a = [vol.var_names.get_loc(g) for g in GENES_A]
    b = [vol.var_names.get_loc(g) for g in GENES_B]
    prop = np.asarray(vol.layers["propagation"])
    contrast = prop[:, a].mean(1) - prop[:, b].mean(1)  # > 0: S01-like, < 0: S05-like
    sec = vol.obs["section"].astype(str).to_numpy()
    measured = {s: contrast[sec == s].mean() for s in ("S01", "S05")}
    assert measured["S01"] > 1.0 and measured["S05"] < -1.0  # the boost is visible in the measured values
    # spots with an overlap edge to a measured spot of S01 (S05): all in S02 (S04)
    g = StackInputs.load(store, sid).graph
    src, dst = g.edge_index.numpy()
    ov = g.edge_type.numpy() == EDGE_OVERLAP
    known = vol.obs["known"].to_numpy()
    next_to = {m: np.unique(dst[ov & known[src] & (sec[src] == m) & ~known[dst]]) for m in ("S01", "S05")}
    assert set(sec[next_to["S01"]]) == {"S02", "S03"} and set(sec[next_to["S05"]]) == {"S03", "S04"}  # 2 sections reach
    # share of S01 in a spot's signature: 1 = S01's mean, 0 = S05's (propagation is a weighted mean of both)
    share = (contrast - measured["S05"]) / (measured["S01"] - measured["S05"])
    s02 = share[next_to["S01"][sec[next_to["S01"]] == "S02"]]
    s04 = share[next_to["S05"][sec[next_to["S05"]] == "S04"]]
    assert len(s02) > 40 and len(s04) > 40
    assert np.median(s02) > 0.6 and np.median(s04) < 0.4
    assert (s02 > 0.5).mean() > 0.85 and (s04 < 0.5).mean() > 0.85, (s02, s04)
    # S03, equally far from both, lies between its neighbours
    assert share[sec == "S04"].mean() < share[sec == "S03"].mean() < share[sec == "S02"].mean()


def test_evaluation_reports_distance_to_nearest_measured_section(two_measured_run):
    store, sid, result, _ = two_measured_run
    ev = pl.read_parquet(store.local_path(sid, "evaluation.parquet"))
    assert ev.columns == ["method", "section", "metric", "value", "dz_nearest_um"]
    assert set(ev["section"]) == {"S02", "S03", "S04", "pooled"}  # measured sections are not scored
    dz = dict(ev.filter(pl.col("section") != "pooled").select("section", "dz_nearest_um").unique().iter_rows())
    assert dz == {"S02": Z_STEP, "S03": 2 * Z_STEP, "S04": Z_STEP}
    assert ev.filter(pl.col("section") == "pooled")["dz_nearest_um"].is_null().all()
    table = _metadata(result, "evaluation")["sections"].value
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(lines) == {"S02", "S03", "S04"} and lines["S03"].split("|")[2].strip() == "80"


def test_gauss_knn_sigma_comes_from_one_section_pitch(two_measured_run):
    """Both measured sections lie in one common frame: their pooled nearest-neighbour distance
    is a registration error, not the pitch (100 um in the demo)."""
    from asign_assets.evaluation.sample import measured_pitch_um
    from asign_assets.storage.stack_inputs import StackInputs
    from asign_assets.results.volume import spot_pitch_um

    store, sid, _, _ = two_measured_run
    inp = StackInputs.load(store, sid)
    assert measured_pitch_um(inp) == pytest.approx(100.0, rel=0.05)
    assert spot_pitch_um(inp.graph.pos[:, :2].numpy()[inp.measured_idx]) < 70.0


def test_volume_and_registration_with_two_measured_sections(two_measured_run):
    store, sid, result, _ = two_measured_run
    qc = pl.read_parquet(store.local_path(sid, "registrations") / "qc.parquet")
    assert qc.height == 5 and (qc["dice_after"] >= 0.85).all()
    meta = _metadata(result, "sections")
    assert meta["measured_sections"].value == "S01, S05"
    assert (store.local_path(sid, "expression_volume") / "expression.ome.zarr").exists()


def test_viewer_shows_both_measured_sections(two_measured_run):
    from dash_app import data, figures

    store, sid, _, _ = two_measured_run
    vol = data.load_volume(str(store.root), sid)
    assert {vol.sections[c] for c in np.unique(vol.section_code[vol.measured])} == {"S01", "S05"}
    traces = figures.volume_figure(vol, vol.genes[0], np.zeros(len(vol.measured), np.float32), 1.0)["data"]
    assert any(t.get("name") == "measured sections (ST)" for t in traces)
    from dash_app import callbacks

    metrics, _, _ = callbacks.reports(str(store.root), sid)
    dz = {r["section"]: r["dz_nearest_um"] for r in metrics.data if r["method"] == "asign" and r["section"] != "pooled"}
    assert dz == {"S02": Z_STEP, "S03": 2 * Z_STEP, "S04": Z_STEP}


def test_manifest_without_measured_section_is_refused(two_measured_run, tmp_path):
    from asign_assets.ingest.manifest import load_manifest

    *_, stack = two_measured_run
    data = yaml.safe_load((stack / "manifest.yaml").read_text())
    for s in data["sections"]:
        s.pop("measured", None)
        s.pop("counts", None)
    for k in ("image", "spots", "truth"):
        for s in data["sections"]:
            if s.get(k):
                s[k] = str((stack / s[k]).resolve())
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"sections\[\]\.measured.*no section has measured: true"):
        load_manifest(tmp_path / "none.yaml")


@pytest.mark.parametrize("flags", [["--measured", "A", "--measured", "C"], ["--measured", "C,A"], ["--measured", "A,", "--measured", " C"]])
def test_import_visium_takes_several_measured_sections(tmp_path, flags):
    import contextlib
    import io

    from _spaceranger import make_outs

    from asign_assets.cli import main
    from asign_assets.ingest.manifest import load_manifest

    for seed, name in enumerate("ABC"):
        make_outs(tmp_path / name / "outs", seed=seed)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["import-visium", *(str(tmp_path / n / "outs") for n in "ABC"), *flags, "--with-truth", "--out", str(tmp_path / "m.yaml")])
    assert rc == 0
    m = load_manifest(buf.getvalue().strip().splitlines()[-1])
    assert [s.name for s in m.measured_sections] == ["A", "C"] and m.sample_id == "visium_A_C"
    assert all(s.counts is not None and s.truth is None for s in m.measured_sections)
    assert m.sections[1].truth is not None and m.sections[1].counts is None


def test_import_help_documents_several_measured_sections(capsys):
    from asign_assets.cli import main

    for cmd in ("import-her2st", "import-visium"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "repeat the option or separate names by commas" in " ".join(capsys.readouterr().out.split())


def test_every_measured_section_is_checked_before_any_output(tmp_path):
    """A bad value or a bad spot table in the second measured section is refused by `sections`."""
    import dataclasses

    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.ingest.sections import prepare_sections

    cfg = DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60, measured_indices=(0, 2))
    stack = make_demo_stack(tmp_path / "s", cfg, sample_id="chk")
    m = load_manifest(stack.manifest_path)
    prep = prepare_sections(m)
    assert set(prep.join_reports) == {"S01", "S03"} and all(jr.n_joined == jr.n_spots for jr in prep.join_reports.values())
    assert set(prep.spots.filter(pl.col("measured"))["section"]) == {"S01", "S03"}
    assert {r.name for r in prep.records if r.measured} == {"S01", "S03"}
    assert all("spots_on_tissue" in prep.plausibility[n] for n in ("S01", "S03"))
    # a non-integer count in S03's counts
    c3 = tmp_path / "s" / "counts" / "S03.tsv.gz"
    lines = gzip.decompress(c3.read_bytes()).decode().split("\n")
    cells = lines[1].split("\t")
    cells[1] = "2.5"
    lines[1] = "\t".join(cells)
    bad = tmp_path / "bad.tsv.gz"
    bad.write_bytes(gzip.compress("\n".join(lines).encode()))
    m_bad = dataclasses.replace(m, sections=tuple(dataclasses.replace(s, counts=bad) if s.name == "S03" else s for s in m.sections))
    with pytest.raises(InputError, match=r"bad.tsv.gz.*non-integer values"):
        prepare_sections(m_bad)
    # S03's spot table in um instead of px: most spots fall off the tissue
    spots = pl.read_csv(m.sections[2].spots, separator="\t")
    px = m.sections[2].pixel_size_um
    in_um = tmp_path / "S03_um.tsv"
    spots.with_columns(pl.col("x_px") * px, pl.col("y_px") * px).write_csv(in_um, separator="\t")
    m_um = dataclasses.replace(m, sections=tuple(dataclasses.replace(s, spots=in_um) if s.name == "S03" else s for s in m.sections))
    with pytest.raises(InputError, match=r"section S03"):
        prepare_sections(m_um)
