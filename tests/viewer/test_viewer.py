"""The viewer's callbacks, called as plain functions on a small fake result tree."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # until the package is installed
from viewer_fixtures import write_fake_result  # noqa: E402

from dash_app import callbacks as cb  # noqa: E402
from dash_app import data  # noqa: E402
from dash_app.figures import decode_typed_array  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_caches():
    data.clear_caches()
    yield
    data.clear_caches()


@pytest.fixture
def fake(tmp_path):
    return write_fake_result(tmp_path / "home")


def _patch_ops(patch) -> dict[tuple, object]:
    return {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}


def _note_text(note) -> str:
    return "" if note is None else str(note.children)


# ----------------------------------------------------------------------------- data layer


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_gene_values_read_one_column_from_zarr(tmp_path, zarr_format):
    r = write_fake_result(tmp_path / "h", zarr_format=zarr_format, write_h5ad=False)
    for j in (0, 5, len(r.genes) - 1):
        np.testing.assert_array_equal(data.gene_values(r.home, r.sample, r.genes[j]), r.X[:, j])
    vol = data.load_volume(r.home, r.sample)
    assert vol.kind == "zarr"
    assert vol.sections == tuple(r.sections)  # stack order from sections.json, not the categorical order
    np.testing.assert_array_equal(np.asarray(vol.sections)[vol.section_code], r.section)
    np.testing.assert_allclose(vol.xyz_um, r.xyz_um)
    np.testing.assert_array_equal(vol.measured, r.measured)


def test_h5ad_fallback_when_zarr_absent(fake):
    import shutil

    shutil.rmtree(fake.home / "samples" / fake.sample / "imputed_volume.zarr")
    vals = data.gene_values(fake.home, fake.sample, fake.genes[3])
    assert data.load_volume(fake.home, fake.sample).kind == "h5ad"
    np.testing.assert_array_equal(vals, fake.X[:, 3])


def test_rematerialised_volume_is_reread(fake):
    g = fake.genes[2]
    np.testing.assert_array_equal(data.gene_values(fake.home, fake.sample, g), fake.X[:, 2])
    import shutil

    shutil.rmtree(fake.home / "samples" / fake.sample)
    r2 = write_fake_result(fake.home, seed=7)
    np.testing.assert_array_equal(data.gene_values(fake.home, fake.sample, g), r2.X[:, 2])


@pytest.mark.parametrize(
    "bad",
    ["../S1", "..", "S1/../S1", "/etc", "", ".hidden", "a" * 65, "S1\x00", None, 3, ["S1"], "missing"],
)
def test_sample_id_validation(fake, bad):
    with pytest.raises(data.InputError):
        data.sample_dir(fake.home, bad)


def test_gene_and_section_validation(fake):
    vol = data.load_volume(fake.home, fake.sample)
    for bad in ("NOPE", "../GENE000", None, 1, "x" * 500):
        with pytest.raises(data.InputError):
            vol.check_gene(bad)
    with pytest.raises(data.InputError):
        data.thumbnail_path(fake.home, fake.sample, "../../../etc/passwd")
    with pytest.raises(data.InputError):
        data.thumbnail_path(fake.home, fake.sample, "notasection")
    assert data.thumbnail_path(fake.home, fake.sample, "sec0").name == "sec0.png"


def test_list_samples_reports_assets(tmp_path):
    home = tmp_path / "home"
    write_fake_result(home, sample="full")
    write_fake_result(home, sample="bare", with_truth=False, with_evaluation=False, with_overlay=False)
    (home / "samples" / "bare" / "imputed_volume.zarr").rename(home / "samples" / "bare" / "x.zarr")
    (home / "samples" / "bare" / "imputed_volume.h5ad").unlink()
    (home / "samples" / "bad id!").mkdir()
    got = {s.sample: s.present for s in data.list_samples(home)}
    assert set(got) == {"full", "bare"}
    assert got["full"]["imputed_volume"] and got["full"]["evaluation"] and got["full"]["truth"] and got["full"]["overlay"]
    assert got["full"]["sections"] and not got["full"]["model"]
    assert not got["bare"]["imputed_volume"] and not got["bare"]["evaluation"] and not got["bare"]["truth"]
    options, default, _table = cb.sample_overview(home)
    assert default == "full"
    assert {o["value"]: o["label"] for o in options} == {"bare": "bare (no imputed_volume yet)", "full": "full"}
    # a sample without a volume still opens: its reports show, the 3D view says what is missing
    out = cb.select_sample(home, "bare")
    assert out[4]["data"] == [] and "materialise the imputed_volume" in _note_text(out[-1])
    metrics, overlay, _ = cb.reports(home, "bare")
    assert "evaluation.parquet" in _note_text(metrics)


# ----------------------------------------------------------------------------- callbacks


def test_select_sample_builds_3d_figure(fake):
    genes, gene, sec_opts, section, fig, panel_opts, panels, note = cb.select_sample(fake.home, fake.sample, "GENE004")
    assert genes == fake.genes and gene == "GENE004"
    assert [o["value"] for o in sec_opts] == fake.sections
    assert section == "sec0"  # first non-measured section
    assert "(measured)" in sec_opts[1]["label"]
    assert panels == ["imputed", "truth"] and note is None
    assert not any(o.get("disabled") for o in panel_opts)
    t0 = fig["data"][0]
    np.testing.assert_array_equal(decode_typed_array(t0["marker"]["color"]), fake.X[:, 4])
    np.testing.assert_allclose(decode_typed_array(t0["z"]), fake.xyz_um[:, 2])
    assert t0["marker"]["cmin"] == pytest.approx(fake.X[:, 4].min())
    assert t0["marker"]["cmax"] == pytest.approx(fake.X[:, 4].max())
    # the measured section is a separate, labelled trace of exactly its spots
    t1 = fig["data"][1]
    assert t1["name"].startswith("measured") and t1["marker"]["symbol"] == "circle-open"
    np.testing.assert_allclose(decode_typed_array(t1["z"]), fake.xyz_um[fake.measured, 2])
    # unknown previous gene falls back to the first gene
    assert cb.select_sample(fake.home, fake.sample, "NOPE")[1] == fake.genes[0]


def test_switch_gene_patches_only_colours(fake):
    cb.select_sample(fake.home, fake.sample)
    patch, note = cb.switch_gene(fake.home, fake.sample, "GENE007")
    assert note is None
    ops = _patch_ops(patch)
    assert set(ops) == {
        ("data", 0, "marker", "color"),
        ("data", 0, "marker", "cmin"),
        ("data", 0, "marker", "cmax"),
        ("data", 0, "marker", "colorbar", "title", "text"),
        ("layout", "title", "text"),
    }
    np.testing.assert_array_equal(decode_typed_array(ops[("data", 0, "marker", "color")]), fake.X[:, 7])
    assert ops[("data", 0, "marker", "cmax")] == pytest.approx(fake.X[:, 7].max())
    # shared colour scale: the same limits whatever section is viewed
    fig, _ = cb.section_view(fake.home, fake.sample, "sec2", "GENE007", ["imputed"])
    assert fig["data"][0]["marker"]["cmin"] == ops[("data", 0, "marker", "cmin")]
    assert fig["data"][0]["marker"]["cmax"] == ops[("data", 0, "marker", "cmax")]


@pytest.mark.parametrize("sample,gene", [("../x", "GENE000"), ("S1", "NOPE"), ("S1", "../../etc/passwd"), ("nosuch", "GENE000")])
def test_switch_gene_rejects_bad_input_with_message(fake, sample, gene):
    patch, note = cb.switch_gene(fake.home, sample, gene)
    assert _patch_ops(patch) == {}
    assert "sample" in _note_text(note) or "gene" in _note_text(note)


def test_z_stretch_scales_aspect(fake):
    cb.select_sample(fake.home, fake.sample)
    a1 = _patch_ops(cb.set_z_stretch(fake.home, fake.sample, 1))[("layout", "scene", "aspectratio")]
    a10 = _patch_ops(cb.set_z_stretch(fake.home, fake.sample, 10))[("layout", "scene", "aspectratio")]
    span = fake.xyz_um.max(0) - fake.xyz_um.min(0)
    assert a10["z"] == pytest.approx(10 * span[2] / span[0])
    assert a10["z"] == pytest.approx(10 * a1["z"]) and a10["y"] == a1["y"]


def test_section_view_panels_and_thumbnail_pixels(fake):
    fig, note = cb.section_view(fake.home, fake.sample, "sec2", "GENE005", ["imputed", "truth", "error"])
    assert note is None
    kinds = [t["name"] for t in fig["data"]]
    assert kinds == ["imputed", "truth", "error"]
    rows = np.flatnonzero(fake.section == "sec2")
    imp, tru, err = fig["data"]
    np.testing.assert_allclose(decode_typed_array(imp["x"]), fake.xy_px[rows, 0] * fake.thumb_scale, rtol=1e-6)
    np.testing.assert_allclose(decode_typed_array(imp["y"]), fake.xy_px[rows, 1] * fake.thumb_scale, rtol=1e-6)
    np.testing.assert_array_equal(decode_typed_array(imp["marker"]["color"]), fake.X[rows, 5])
    sel = fake.section[fake.truth_rows] == "sec2"
    np.testing.assert_allclose(decode_typed_array(tru["marker"]["color"]), fake.truth_X[sel, 5])
    np.testing.assert_allclose(
        decode_typed_array(err["marker"]["color"]), fake.X[fake.truth_rows[sel], 5] - fake.truth_X[sel, 5], atol=1e-5
    )
    assert err["marker"]["cmin"] == -err["marker"]["cmax"]
    # side by side, each panel with the thumbnail behind it, in thumbnail pixels
    lay = fig["layout"]
    assert lay["xaxis"]["domain"][1] < lay["xaxis2"]["domain"][0] < lay["xaxis3"]["domain"][0]
    assert [im["xref"] for im in lay["images"]] == ["x", "x2", "x3"]
    assert lay["images"][0]["source"].startswith("/_asign/thumbnail/S1/sec2.png")
    assert (lay["images"][0]["sizex"], lay["images"][0]["sizey"]) == (200, 160)
    assert lay["yaxis"]["range"] == [160, 0]


def test_section_view_measured_panel(fake):
    fig, _ = cb.section_view(fake.home, fake.sample, "sec1", "GENE001", ["measured"])
    rows = np.flatnonzero(fake.measured)
    np.testing.assert_array_equal(decode_typed_array(fig["data"][0]["marker"]["color"]), fake.X[rows, 1])
    fig, note = cb.section_view(fake.home, fake.sample, "sec0", "GENE001", ["measured"])
    assert fig["data"] == [] and "no measured spots" in _note_text(note)


def test_truth_absent_disables_toggles_with_note(tmp_path):
    r = write_fake_result(tmp_path / "h", with_truth=False)
    *_, panel_opts, panels, note = cb.select_sample(r.home, r.sample)
    disabled = {o["value"] for o in panel_opts if o.get("disabled")}
    assert disabled == {"truth", "error"} and panels == ["imputed"]
    assert "evaluation_truth.zarr" in _note_text(note)
    fig, note = cb.section_view(r.home, r.sample, "sec0", r.genes[0], ["imputed", "truth"])
    assert [t["name"] for t in fig["data"]] == ["imputed"]
    assert "no truth" in _note_text(note)


def test_missing_thumbnail_falls_back_to_full_res_pixels(tmp_path):
    r = write_fake_result(tmp_path / "h", with_thumbnails=False)
    fig, note = cb.section_view(r.home, r.sample, "sec0", r.genes[0], ["imputed"])
    assert "thumbnail" in _note_text(note) and fig["layout"]["images"] == []
    rows = np.flatnonzero(r.section == "sec0")
    np.testing.assert_allclose(decode_typed_array(fig["data"][0]["x"]), r.xy_px[rows, 0], rtol=1e-6)


def test_missing_and_corrupt_volume_give_messages(tmp_path):
    r = write_fake_result(tmp_path / "h", write_h5ad=False)
    store = r.home / "samples" / r.sample / "imputed_volume.zarr"
    import shutil

    shutil.rmtree(store / "obsm")  # partial asset
    out = cb.select_sample(r.home, r.sample)
    assert out[4]["data"] == [] and "imputed_volume.zarr" in _note_text(out[-1])
    shutil.rmtree(store)
    data.clear_caches()
    out = cb.select_sample(r.home, r.sample)
    assert "materialise the imputed_volume" in _note_text(out[-1])
    fig, note = cb.section_view(r.home, r.sample, "sec0", "GENE000", ["imputed"])
    assert "materialise" in _note_text(note)
    assert "materialise" in _note_text(cb.download_gene(r.home, r.sample, "GENE000")[1])


def test_reports_metrics_table_and_overlay(fake):
    metrics, overlay, qc = cb.reports(fake.home, fake.sample)
    df = pd.read_parquet(fake.home / "samples" / fake.sample / "evaluation.parquet")
    recs = {(r["section"], r["method"]): r for r in metrics.data}
    assert len(recs) == 4
    for row in df.itertuples():
        assert recs[(row.section, row.method)][row.metric] == pytest.approx(row.value)
    assert overlay.src.startswith("/_asign/overlay/S1.png") and "qc.parquet" in _note_text(qc)


def test_reports_absent_assets(tmp_path):
    r = write_fake_result(tmp_path / "h", with_evaluation=False, with_overlay=False)
    metrics, overlay, _ = cb.reports(r.home, r.sample)
    assert "evaluation.parquet" in _note_text(metrics) and "overlay.png" in _note_text(overlay)
    (r.home / "samples" / r.sample / "evaluation.parquet").write_bytes(b"not parquet")
    metrics, _, _ = cb.reports(r.home, r.sample)
    assert "cannot read" in _note_text(metrics)


def test_download_csv_has_every_spot(fake):
    payload, note = cb.download_gene(fake.home, fake.sample, "GENE009")
    assert note is None and payload["filename"] == "S1_GENE009.csv"
    df = pd.read_csv(io.StringIO(payload["content"]), dtype={"spot_id": str})
    assert list(df.columns) == ["section", "spot_id", "x_um", "y_um", "z_um", "value"]
    assert len(df) == len(fake.X)
    np.testing.assert_array_equal(df["section"], fake.section)
    np.testing.assert_array_equal(df["spot_id"], fake.spot_id)
    np.testing.assert_allclose(df["value"], fake.X[:, 9], rtol=1e-6)
    np.testing.assert_allclose(df[["x_um", "y_um", "z_um"]], fake.xyz_um, rtol=1e-6)
    assert cb.download_gene(fake.home, fake.sample, "../x")[0] is None


# ----------------------------------------------------------------------------- app and routes


def test_app_layout_routes_and_callback_over_http(fake):
    from dash_app import create_app

    app = create_app(fake.home)
    client = app.server.test_client()
    page = client.get("/")
    assert page.status_code == 200
    layout = client.get("/_dash-layout").get_json()
    assert json.dumps(layout).count('"sample"') >= 1 and "S1" in json.dumps(layout)
    assert client.get("/_asign/thumbnail/S1/sec0.png").data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/_asign/overlay/S1.png").status_code == 200
    png = b"\x89PNG\r\n\x1a\n"
    for bad in (
        "/_asign/thumbnail/S1/..%2F..%2Fsections.png",
        "/_asign/thumbnail/..%2FS1/sec0.png",
        "/_asign/thumbnail/S1/nosection.png",
        "/_asign/overlay/nosuch.png",
        "/_asign/overlay/..%2FS1.png",
    ):
        resp = client.get(bad)  # a 404, or Dash's index page when the path no longer matches the route
        assert resp.status_code == 404 or not resp.data.startswith(png), bad
    assert client.get("/_asign/thumbnail/S1/nosection.png").status_code == 404
    # the gene-switch callback through Dash's HTTP endpoint
    body = {
        "output": "..graph-3d.figure@" ,
        "outputs": [{"id": "graph-3d", "property": "figure@"}, {"id": "gene-note", "property": "children"}],
        "inputs": [{"id": "gene", "property": "value", "value": "GENE002"}],
        "state": [{"id": "sample", "property": "value", "value": "S1"}],
        "changedPropIds": ["gene.value"],
    }
    cbs = {c["output"]: c for c in client.get("/_dash-dependencies").get_json()}
    body["output"] = next(k for k in cbs if k.startswith("..graph-3d.figure@") and "gene-note" in k)
    body["outputs"][0]["property"] = body["output"].split("graph-3d.")[1].split("...")[0]
    resp = client.post("/_dash-update-component", json=body)
    assert resp.status_code == 200, resp.data[:500]
    ops = resp.get_json()["response"]["graph-3d"]
    ops = next(iter(ops.values()))["operations"]
    color = next(o for o in ops if o["location"] == ["data", 0, "marker", "color"])["params"]["value"]
    np.testing.assert_array_equal(decode_typed_array(color), fake.X[:, 2])


def test_import_is_light():
    code = "import sys, dash_app.app, dash_app.callbacks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_truth_rows_out_of_range_is_a_note(tmp_path):
    import anndata as ad

    r = write_fake_result(tmp_path / "h")
    path = r.home / "samples" / r.sample / "evaluation_truth.zarr"
    t = ad.read_zarr(path)
    t.obs["row"] = t.obs["row"] + 10_000
    import shutil

    shutil.rmtree(path)
    t.write_zarr(path)
    fig, note = cb.section_view(r.home, r.sample, "sec0", r.genes[0], ["imputed", "truth"])
    assert [d["name"] for d in fig["data"]] == ["imputed"] and "does not index" in _note_text(note)


# ----------------------------------------------------------------------------- 3D readability, dense volume views


def test_default_stretch_separates_sections_and_z_ticks_are_section_names(fake):
    fig = cb.select_sample(fake.home, fake.sample)[4]
    scene = fig["layout"]["scene"]
    assert scene["aspectratio"]["z"] >= 0.3 * max(scene["aspectratio"]["x"], scene["aspectratio"]["y"])
    assert scene["zaxis"]["ticktext"] == fake.sections
    assert scene["zaxis"]["tickvals"] == pytest.approx([0.0, 20.0, 40.0])
    # an empty box means the default; a typed value applies as is
    auto = _patch_ops(cb.set_z_stretch(fake.home, fake.sample, None))[("layout", "scene", "aspectratio")]
    assert auto == scene["aspectratio"]
    typed = _patch_ops(cb.set_z_stretch(fake.home, fake.sample, 2))[("layout", "scene", "aspectratio")]
    span = fake.xyz_um.max(0) - fake.xyz_um.min(0)
    assert typed["z"] == pytest.approx(2 * span[2] / span[0])


def test_colour_bars_carry_the_unit_from_the_normalisation(fake):
    fig = cb.select_sample(fake.home, fake.sample)[4]
    assert "log1p CP10k" in fig["data"][0]["marker"]["colorbar"]["title"]["text"]
    ops = _patch_ops(cb.switch_gene(fake.home, fake.sample, "GENE004")[0])
    assert ops[("data", 0, "marker", "colorbar", "title", "text")] == "GENE004<br><sub>log1p CP10k</sub>"
    sec, _ = cb.section_view(fake.home, fake.sample, "sec0", "GENE004", ["imputed"])
    assert "log1p CP10k" in sec["data"][0]["marker"]["colorbar"]["title"]["text"]


def test_section_view_markers_opacity_and_uncertainty_panel(fake):
    fig, note = cb.section_view(fake.home, fake.sample, "sec2", "GENE003", ["imputed", "uncertainty"], "/", 0.4)
    assert note is None and [d["name"] for d in fig["data"]] == ["imputed", "uncertainty"]
    m0, m1 = fig["data"][0]["marker"], fig["data"][1]["marker"]
    assert m0["size"] >= 10 and m0["line"]["color"] == "white" and m0["opacity"] == 0.4
    assert m0["colorscale"] != "Viridis"
    rows = np.flatnonzero(fake.section == "sec2")
    vol = data.load_volume(fake.home, fake.sample)
    import anndata as ad

    unc = ad.read_zarr(fake.home / "samples" / fake.sample / "imputed_volume.zarr").layers["uncertainty"]
    order = np.flatnonzero(vol.section_code == vol.sections.index("sec2"))
    np.testing.assert_allclose(decode_typed_array(m1["color"]), unc[order, 3], rtol=1e-6)
    assert len(order) == len(rows)
    # bad opacity from the browser falls back to the default
    fig2, _ = cb.section_view(fake.home, fake.sample, "sec2", "GENE003", ["imputed"], "/", "nan")
    assert fig2["data"][0]["marker"]["opacity"] == cb.DEFAULT_OPACITY


def _dense(fake):
    from asign_assets.results.volume import open_ome_zarr

    return open_ome_zarr(fake.home / "samples" / fake.sample / "expression_volume" / "expression.ome.zarr")


def test_slice_controls_span_the_volume_with_section_marks(fake):
    lo, hi, val, marks, note = cb.slice_controls(fake.home, fake.sample)
    assert (lo, hi) == (0.0, 40.0) and lo < val < hi and note is None
    assert [m["label"] for m in marks.values()] == fake.sections


def test_xy_slice_between_sections_interpolates_and_xz_yz_go_through_the_point(fake):
    ov = _dense(fake)
    g = ov.grid
    v = np.asarray(ov.levels[0][ov.channel_index("GENE005")])
    t = np.asarray(ov.tissue[:], bool)
    fig, note = cb.slice_view(fake.home, fake.sample, "GENE005", 25.0, None)  # between sec1 (20) and sec2 (40)
    assert note is None
    xy = np.array(fig["data"][0]["z"], dtype=float)
    both = t[1] & t[2]
    want = 0.75 * v[1] + 0.25 * v[2]
    np.testing.assert_allclose(xy[both], want[both], atol=2e-4)
    assert np.isnan(xy[~(t[1] | t[2])]).all()
    # at a section's z the slice is that section's plane
    at, _ = cb.slice_view(fake.home, fake.sample, "GENE005", 20.0, None)
    np.testing.assert_allclose(np.array(at["data"][0]["z"], dtype=float)[t[1]], v[1][t[1]], atol=2e-4)
    # xz at the clicked y, yz at the clicked x
    px, py = g.axis(2)[5], g.axis(1)[7]
    fig, _ = cb.slice_view(fake.home, fake.sample, "GENE005", 0.0, {"x": px, "y": py})
    xz = np.array(fig["data"][1]["z"], dtype=float)
    yz = np.array(fig["data"][2]["z"], dtype=float)
    np.testing.assert_allclose(xz[t[:, 7, :]], v[:, 7, :][t[:, 7, :]], atol=2e-4)
    np.testing.assert_allclose(yz[t[:, :, 5]], v[:, :, 5][t[:, :, 5]], atol=2e-4)
    assert fig["data"][3]["x"] == [px] and fig["data"][3]["y"] == [py]
    assert fig["layout"]["yaxis2"]["ticktext"] == fake.sections


def test_isosurface_threshold_is_the_percentile_of_tissue_voxels(fake):
    ov = _dense(fake)
    v = np.asarray(ov.levels[0][ov.channel_index("GENE002")])
    t = np.asarray(ov.tissue[:], bool)
    for pct in (60, 90):
        fig, _ = cb.iso_view(fake.home, fake.sample, "GENE002", pct)
        tr = fig["data"][0]
        assert tr["type"] == "isosurface"
        assert tr["isomin"] == pytest.approx(np.percentile(v[t], pct), rel=1e-5)
        vals = decode_typed_array(tr["value"])
        assert len(vals) == v.size and (vals[~t.ravel()] < v[t].min()).all()


def test_dense_views_say_when_the_volume_is_missing(tmp_path):
    r = write_fake_result(tmp_path / "h", with_dense=False)
    fig, note = cb.slice_view(r.home, r.sample, r.genes[0], 0.0)
    assert fig["data"] == [] and "expression_volume" in _note_text(note)
    assert "expression_volume" in _note_text(cb.slice_controls(r.home, r.sample)[-1])
    assert "evaluation_genes" in _note_text(cb.gene_accuracy(r.home, r.sample, r.genes[0]))
    assert _panel_disabled(cb.select_sample(r.home, r.sample)[5], "uncertainty")


def _panel_disabled(options, value) -> bool:
    return next(o for o in options if o["value"] == value)["disabled"]


def test_gene_accuracy_shows_the_gene_per_section_with_method_legend(fake):
    out = cb.gene_accuracy(fake.home, fake.sample, "GENE004")
    table = out.children[1]
    assert [c["id"] for c in table.columns] == ["section", "asign", "mean", "overlap"]
    assert [r["section"] for r in table.data] == ["sec0", "sec2"]
    assert table.data[0]["asign"] == pytest.approx(0.64) and table.data[0]["overlap"] == pytest.approx(0.24)
    assert set(table.tooltip_header) == {"asign", "mean", "overlap"}
    assert "baseline" in str(out.children[2])
    assert "not in var_names" in _note_text(cb.gene_accuracy(fake.home, fake.sample, "../x"))


def test_overlay_legend_curves_and_deep_link(fake):
    legend, curves = cb.sample_extras(fake.home, fake.sample)
    spans = legend.children
    assert [s.children[1] for s in spans] == fake.sections
    assert spans[0].children[0].style["background"] == "rgb(230,25,75)"
    assert curves.src.startswith("/_asign/curves/S1.png")
    assert cb.sample_from_url(fake.home, "?sample=S1", None) == "S1"
    from dash import no_update

    assert cb.sample_from_url(fake.home, "?sample=..%2F..", None) is no_update
    assert cb.sample_from_url(fake.home, "?sample=S1", "S1") is no_update
