"""What each callback does, as plain functions of (home, browser values).

The Dash wiring in `register_callbacks` only forwards to these, so tests call them
directly. Every function validates what came from the browser and turns a missing or
broken asset into a message in the page (never a traceback).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from dash import Patch, dash_table, html

from asign_assets.errors import AsignError
from dash_app import data, figures

log = logging.getLogger("asign.viewer")

PANEL_KINDS = ("imputed", "measured", "truth", "error", "uncertainty")
DEFAULT_OPACITY = 0.9
DEFAULT_ISO_PCT = 80.0
MAX_ISO_VOXELS = 150_000  # the isosurface uses the finest pyramid level under this size
# Shown as the legend of the per-gene accuracy table and as tooltips of the metrics table.
METHOD_HELP = {
    "asign": "ASIGN: MSAGNet network + cross-layer propagation, blended per gene (the imputed values shown)",
    "asign_network": "ASIGN's network output alone (no label propagation)",
    "asign_propagation": "ASIGN's label propagation alone over the 3D spot graph",
    "mean": "baseline: every spot gets the measured sections' mean profile",
    "overlap": "baseline (paper's Overlap): propagation over within-section + registration-overlap edges only",
    "similarity": "baseline (paper's Similarity): propagation over within-section + image-similarity edges only",
    "gauss_knn": "baseline: Gaussian-weighted k nearest measured spots in the registered xy (registration only)",
    "image_2d": "baseline: ridge regression from the spot's image embedding (2D, no 3D context)",
}
ROUTE = "/_asign"  # Flask routes serving thumbnails and the overlay


class ViewerMessage(Exception):
    """Something the page shows as a note (nothing to plot, not an error)."""


def describe(exc: BaseException) -> str:
    """A one-line, user-facing description of why something could not be shown."""
    if isinstance(exc, (AsignError, ViewerMessage)):
        return str(exc)
    if isinstance(exc, (OSError, ValueError, KeyError)):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}: {exc}); see the viewer's log"


def note(text: str | None, kind: str = "warning") -> Any:
    if not text:
        return None
    return html.Div(text, className=f"note note-{kind}", role="status")


def _safe(fallback: Callable[[str], Any]):
    """Run a callback body; on failure return fallback(message) instead of raising."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # the page must show a message, not a traceback
                if not isinstance(e, (AsignError, ViewerMessage, OSError, ValueError, KeyError)):
                    log.exception("viewer callback %s failed", fn.__name__)
                return fallback(describe(e))

        return wrapper

    return deco


# --------------------------------------------------------------------------- samples


def sample_overview(home: str | os.PathLike) -> tuple[list[dict], str | None, Any]:
    """Dropdown options (viewable samples first), default sample, and the asset table."""
    samples = data.list_samples(home)
    if not samples:
        msg = f"no samples under {Path(home) / 'samples'}: register a manifest and materialise the pipeline"
        return [], None, note(msg)
    options = [
        {
            "label": s.sample if s.viewable else f"{s.sample} (outputs from different manifests)" if s.mixed else f"{s.sample} (no imputed_volume yet)",
            "value": s.sample,
        }
        for s in samples
    ]
    default = next((s.sample for s in samples if s.viewable), None)
    names = list(data.ASSETS)
    header = html.Tr([html.Th("sample")] + [html.Th(n) for n in names])
    rows = [
        html.Tr(
            [html.Td(s.sample)]
            + [html.Td("yes" if s.present[n] else "-", className="present" if s.present[n] else "absent") for n in names]
        )
        for s in samples
    ]
    table = html.Table([html.Thead(header), html.Tbody(rows)], id="assets-table", className="assets")
    return options, default, table


def _select_sample_error(msg: str):
    return [], None, [], None, figures.message_figure(msg), _panel_options(False, False), ["imputed"], note(msg, "error")


def _panel_options(has_truth: bool, has_measured: bool, has_uncertainty: bool = False) -> list[dict]:
    return [
        {"label": "imputed", "value": "imputed"},
        {"label": "measured", "value": "measured", "disabled": not has_measured},
        {"label": "truth" if has_truth else "truth (no evaluation_truth.zarr)", "value": "truth", "disabled": not has_truth},
        {"label": "error" if has_truth else "error (no truth)", "value": "error", "disabled": not has_truth},
        {"label": "uncertainty" if has_uncertainty else "uncertainty (no layer)", "value": "uncertainty", "disabled": not has_uncertainty},
    ]


@_safe(_select_sample_error)
def select_sample(home: str | os.PathLike, sample: object, gene: object = None, z_stretch: object = None):
    """Everything that depends on the sample only: gene and section pickers, the 3D figure.

    Returns (gene_options, gene, section_options, section, figure_3d, panel_options,
    panel_value, note).
    """
    if sample is None:
        raise ViewerMessage("pick a sample")
    vol = data.load_volume(home, sample)  # validates the id
    if not vol.genes:
        raise ViewerMessage(f"{vol.path}: var_names is empty")
    if gene not in vol.gene_index:
        gene = vol.genes[0]
    values = data.gene_values(home, sample, gene)
    fig = figures.volume_figure(vol, gene, values, _stretch(z_stretch, vol.xyz_um), data.value_unit(home, sample))
    try:
        has_truth = data.load_truth(home, sample) is not None
        truth_msg = None if has_truth else "no evaluation_truth.zarr: truth and error views are disabled"
    except AsignError as e:
        has_truth, truth_msg = False, f"truth unavailable: {e}"
    has_measured = bool(vol.measured.any())
    sections = list(vol.sections)
    measured_sections = {vol.sections[c] for c in np.unique(vol.section_code[vol.measured])}
    section_opts = [{"label": f"{s} (measured)" if s in measured_sections else s, "value": s} for s in sections]
    # Default to a non-measured section with truth: that is where imputation can be judged.
    section = next((s for s in sections if s not in measured_sections), sections[0] if sections else None)
    panels = ["imputed", "truth"] if has_truth else ["imputed"]
    return (
        list(vol.genes),
        gene,
        section_opts,
        section,
        fig,
        _panel_options(has_truth, has_measured, data.uncertainty_values(home, sample, gene) is not None),
        panels,
        note(truth_msg, "info"),
    )


def _stretch(z: object, xyz: np.ndarray) -> float:
    """The typed z stretch, clipped; empty or invalid: the default that separates the sections."""
    default = figures.default_stretch(xyz)
    try:
        z = float(z)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return float(np.clip(z, 0.1, 1000.0)) if np.isfinite(z) else default


# --------------------------------------------------------------------------- gene switch (hot path)


def _gene_error(msg: str):
    return Patch(), note(msg, "error")


@_safe(_gene_error)
def switch_gene(home: str | os.PathLike, sample: object, gene: object):
    """Recolour the 3D view: only marker colours and limits travel to the browser."""
    if sample is None or gene is None:
        return Patch(), None
    values = data.gene_values(home, sample, gene)  # validates sample and gene, one zarr chunk
    cmin, cmax = data.value_range(values)
    p = Patch()
    p["data"][0]["marker"]["color"] = figures.typed_array(values)
    p["data"][0]["marker"]["cmin"] = cmin
    p["data"][0]["marker"]["cmax"] = cmax
    unit = data.value_unit(home, sample)
    p["data"][0]["marker"]["colorbar"]["title"]["text"] = f"{gene}<br><sub>{unit}</sub>" if unit else gene
    p["layout"]["title"]["text"] = f"{sample}: {gene}"
    return p, None


@_safe(lambda msg: Patch())
def set_z_stretch(home: str | os.PathLike, sample: object, z_stretch: object):
    if sample is None:
        return Patch()
    vol = data.load_volume(home, sample)
    p = Patch()
    p["layout"]["scene"]["aspectratio"] = figures.aspect_ratio(vol.xyz_um, _stretch(z_stretch, vol.xyz_um))
    return p


# --------------------------------------------------------------------------- section view


def _section_error(msg: str):
    return figures.message_figure(msg), note(msg, "error")


def thumbnail_url(sample: str, section: str, path: Path, prefix: str = "/") -> str:
    v = path.stat().st_mtime_ns
    return f"{prefix.rstrip('/')}{ROUTE}/thumbnail/{quote(sample)}/{quote(section)}.png?v={v}"


@_safe(_section_error)
def section_view(
    home: str | os.PathLike,
    sample: object,
    section: object,
    gene: object,
    panels: object,
    prefix: str = "/",
    opacity: object = DEFAULT_OPACITY,
):
    """One section in its own pixels over its thumbnail, chosen panels side by side."""
    if sample is None or section is None or gene is None:
        return figures.message_figure("pick a sample, a section and a gene"), None
    vol = data.load_volume(home, sample)
    s = vol.check_section(section)
    vol.check_gene(gene)
    wanted = [k for k in PANEL_KINDS if isinstance(panels, (list, tuple)) and k in panels] or ["imputed"]
    notes: list[str] = []

    values = data.gene_values(home, sample, gene)
    crange = data.value_range(values)
    rows = np.flatnonzero(vol.section_code == s)

    # Thumbnail and scale: spot pixels * thumb_scale = thumbnail pixels.
    image, size, scale = None, None, 1.0
    try:
        rec = data.section_record(home, sample, section)
        scale = float(rec.get("thumb_scale", 1.0))
        tpath = data.thumbnail_path(home, sample, section)
        size = data.image_size(tpath)
        image = {"source": thumbnail_url(str(sample), str(section), tpath, prefix)}
    except AsignError as e:
        notes.append(f"no H&E thumbnail ({e}); spots drawn in full-resolution pixels")
        scale = 1.0 if size is None else scale
    xy = vol.xy_px * scale

    truth_rows = truth_vals = None
    if "truth" in wanted or "error" in wanted:
        try:
            tv = data.truth_values(home, sample, gene)
        except AsignError as e:
            tv = None
            notes.append(str(e))
        if tv is None:
            notes.append(f"no truth for {gene}: truth/error panels hidden")
        elif len(tv[0]) != len(tv[1]) or (len(tv[0]) and (tv[0].min() < 0 or tv[0].max() >= vol.n_spots)):
            notes.append(f"evaluation_truth.zarr: obs 'row' does not index the {vol.n_spots} volume spots")
        else:
            truth_rows, truth_vals = tv

    out: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    err_abs = 1.0
    unc = data.uncertainty_values(home, sample, gene) if "uncertainty" in wanted else None
    unc_max = max(float(np.nanmax(unc, initial=0.0)), 1e-6) if unc is not None else 1.0
    for kind in wanted:
        if kind == "imputed":
            r, v = rows, values[rows]
        elif kind == "uncertainty":
            if unc is None:
                notes.append("imputed_volume has no uncertainty layer: re-materialise it")
                continue
            r, v = rows, unc[rows]
        elif kind == "measured":
            r = rows[vol.measured[rows]]
            if r.size == 0:
                notes.append(f"section {section} has no measured spots")
                continue
            v = values[r]
        else:
            if truth_rows is None:
                continue
            sel = vol.section_code[truth_rows] == s
            r = truth_rows[sel]
            if r.size == 0:
                notes.append(f"section {section} has no truth spots")
                continue
            if not np.isfinite(truth_vals[sel]).any():
                notes.append(f"{gene} was not measured on section {section} (not in its truth's gene panel)")
                continue
            if kind == "truth":
                v = truth_vals[sel]
            else:
                v = values[r] - truth_vals[sel]
                all_err = values[truth_rows] - truth_vals
                err_abs = max(float(np.nanmax(np.abs(all_err), initial=0.0)), 1e-6)
        out.append((kind, xy[r, 0], xy[r, 1], v))
    if not out:
        raise ViewerMessage("; ".join(notes) or "nothing to show")
    fig = figures.section_figure(out, str(gene), crange, err_abs, image, size, data.value_unit(home, sample), _opacity(opacity), unc_max)
    return fig, note("; ".join(notes), "info") if notes else None


def _opacity(v: object) -> float:
    try:
        v = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_OPACITY
    return float(np.clip(v, 0.05, 1.0)) if np.isfinite(v) else DEFAULT_OPACITY


# --------------------------------------------------------------------------- dense volume: slices and isosurface


def _dense_or_message(home, sample, gene):
    vol = data.load_volume(home, sample)
    vol.check_gene(gene)
    ov = data.load_dense(home, sample)
    if ov is None:
        raise ViewerMessage("no expression_volume yet: materialise the expression_volume asset for slices and isosurfaces")
    return vol, ov


def _slider(ov) -> dict:
    zs = [s["z_um"] for s in ov.attrs.get("sections", [])]
    names = [s["name"] for s in ov.attrs.get("sections", [])]
    z = ov.grid.axis(0)
    return {"min": float(z[0]), "max": float(z[-1]), "marks": {float(v): n for v, n in zip(zs, names)}}


def _slice_controls_error(msg: str):
    return 0.0, 1.0, None, {}, note(msg, "info")


@_safe(_slice_controls_error)
def slice_controls(home: str | os.PathLike, sample: object):
    """(min, max, value, marks, note) of the z slider: the volume's z range, marks at the sections."""
    if sample is None:
        raise ViewerMessage("pick a sample")
    data.load_volume(home, sample)
    ov = data.load_dense(home, sample)
    if ov is None:
        raise ViewerMessage("no expression_volume yet: materialise the expression_volume asset for slices and isosurfaces")
    sl = _slider(ov)
    marks = {k: {"label": v, "style": {"fontSize": "11px"}} for k, v in sl["marks"].items()}
    return sl["min"], sl["max"], (sl["min"] + sl["max"]) / 2.0, marks, None


def _interp_plane(v: np.ndarray, t: np.ndarray, z_um: float, grid) -> np.ndarray:
    """xy plane at any z: tissue-weighted linear interpolation of the two nearest planes
    (the rule the volume itself uses between sections); NaN outside the tissue."""
    f = float(np.clip((z_um - grid.origin_um[0]) / grid.voxel_um[0], 0, grid.shape[0] - 1))
    i = min(int(np.floor(f)), grid.shape[0] - 1)
    j = min(i + 1, grid.shape[0] - 1)
    w = f - i
    ta, tb = (1 - w) * t[i], w * t[j]
    den = ta + tb
    num = ta * v[i] + tb * v[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den >= 0.5, num / den, np.nan)


def _point(point: object, grid) -> tuple[float, float]:
    """A clicked (x, y) um inside the grid; anything else: the grid centre."""
    cx = grid.origin_um[2] + grid.voxel_um[2] * (grid.shape[2] - 1) / 2
    cy = grid.origin_um[1] + grid.voxel_um[1] * (grid.shape[1] - 1) / 2
    if isinstance(point, dict):
        try:
            x, y = float(point["x"]), float(point["y"])
        except (KeyError, TypeError, ValueError):
            return cx, cy
        if np.isfinite(x) and np.isfinite(y):
            return x, y
    return cx, cy


@_safe(_section_error)
def slice_view(home: str | os.PathLike, sample: object, gene: object, z_um: object, point: object = None):
    """Orthogonal slices of the dense volume: xy at ``z_um`` (any z), xz and yz through ``point``."""
    if sample is None or gene is None:
        return figures.message_figure("pick a sample and a gene"), None
    vol, ov = _dense_or_message(home, sample, gene)
    g = ov.grid
    v = data.dense_gene(home, sample, gene)
    t = data.dense_tissue(home, sample).astype(np.float32)
    try:
        z = float(z_um)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        z = float(g.axis(0).mean())
    z = float(np.clip(z, g.axis(0)[0], g.axis(0)[-1])) if np.isfinite(z) else float(g.axis(0).mean())
    px, py = _point(point, g)
    iy, ix = (int(i) for i in g.index_of(np.array([[g.origin_um[0], py, px]]))[0, 1:])
    inside = t > 0
    xy = _interp_plane(v, t, z, g)
    xz = np.where(inside[:, iy, :], v[:, iy, :], np.nan)
    yz = np.where(inside[:, :, ix], v[:, :, ix], np.nan)
    crange = data.value_range(data.gene_values(home, sample, gene))
    zt = ([s["z_um"] for s in ov.attrs.get("sections", [])], [s["name"] for s in ov.attrs.get("sections", [])])
    fig = figures.slice_figure(xy, xz, yz, g, z, (px, py), str(gene), crange, data.value_unit(home, sample), zt)
    return fig, None


@_safe(_section_error)
def iso_view(home: str | os.PathLike, sample: object, gene: object, pct: object = DEFAULT_ISO_PCT, z_stretch: object = None):
    """Isosurface of the gene at the ``pct`` percentile of its in-tissue voxels (coarse pyramid level)."""
    if sample is None or gene is None:
        return figures.message_figure("pick a sample and a gene"), None
    vol, ov = _dense_or_message(home, sample, gene)
    level = next((i for i, a in enumerate(ov.levels) if int(np.prod(a.shape[1:])) <= MAX_ISO_VOXELS), len(ov.levels) - 1)
    v = data.dense_gene(home, sample, gene, level=level)
    t = data.dense_tissue(home, sample, level=level)
    if not t.any():
        raise ViewerMessage("the volume has no tissue voxels")
    try:
        q = float(np.clip(float(pct), 1.0, 99.9))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        q = DEFAULT_ISO_PCT
    inside = v[t]
    thr = float(np.percentile(inside, q))
    crange = (float(inside.min()), float(max(inside.max(), inside.min() + 1e-6)))
    g = ov.grid
    f = 2**level
    axes = (g.axis(0), g.origin_um[1] + np.arange(v.shape[1]) * g.voxel_um[1] * f, g.origin_um[2] + np.arange(v.shape[2]) * g.voxel_um[2] * f)
    zt = ([s["z_um"] for s in ov.attrs.get("sections", [])], [s["name"] for s in ov.attrs.get("sections", [])])
    fig = figures.isosurface_figure(v, t, axes, thr, crange, str(gene), data.value_unit(home, sample), _stretch(z_stretch, vol.xyz_um), zt)
    return fig, note(f"threshold {thr:.3g} = {q:.0f}th percentile of the gene in tissue (pyramid level {level})", "info")


# --------------------------------------------------------------------------- per-gene accuracy, legends


def _accuracy_error(msg: str):
    return note(msg, "info")


@_safe(_accuracy_error)
def gene_accuracy(home: str | os.PathLike, sample: object, gene: object):
    """The shown gene's PCC across spots, per section with truth, for ASIGN and every baseline,
    with a legend explaining the methods."""
    if sample is None or gene is None:
        return None
    data.load_volume(home, sample).check_gene(gene)
    df = data.read_gene_accuracy(home, sample, str(gene))
    if df is None:
        raise ViewerMessage("no evaluation_genes.parquet: per-gene accuracy needs truth (materialise evaluation with truth)")
    if len(df) == 0:
        raise ViewerMessage(f"no truth for {gene} on any section")
    wide = df.pivot_table(index="section", columns="method", values="value", aggfunc="mean", sort=False).reset_index()
    methods = [m for m in METHOD_HELP if m in wide.columns] + [m for m in wide.columns if m not in METHOD_HELP and m != "section"]
    cols = ["section", *methods]
    records = wide[cols].to_dict("records")
    table = _table("gene-accuracy-table", cols, records)
    table.tooltip_header = {m: METHOD_HELP.get(m, m) for m in methods}
    legend = html.Ul([html.Li([html.B(m), ": ", METHOD_HELP.get(m, "")]) for m in methods], className="method-legend",
                     style={"fontSize": "12px", "color": "#444"})
    return html.Div([html.Div(f"{gene}: PCC across the spots of each section (gene_pcc), imputed vs truth", style={"margin": "4px 0"}), table, legend])


def _extras_error(msg: str):
    return note(msg, "error"), None


@_safe(_extras_error)
def sample_extras(home: str | os.PathLike, sample: object, prefix: str = "/"):
    """(registration overlay legend, training curves image) for a sample."""
    if sample is None:
        return None, None
    d = data.sample_dir(home, sample)
    legend = None
    try:
        recs = data.read_sections(d)
    except AsignError:
        recs = []
    if recs:
        from asign_assets.registration.overlay import overlay_colour

        legend = html.Div(
            [html.Span([html.Span(style={"display": "inline-block", "width": "14px", "height": "14px", "marginRight": "4px", "verticalAlign": "middle",
                                         "background": "rgb({},{},{})".format(*overlay_colour(i))}), r["name"]],
                       style={"marginRight": "14px"}) for i, r in enumerate(recs)],
            id="overlay-legend", style={"margin": "6px 0"},
        )
    cp = data.curves_path(home, sample)
    curves = (
        note("no model/curves.png yet: materialise the model asset", "info")
        if cp is None
        else html.Img(src=f"{prefix.rstrip('/')}{ROUTE}/curves/{quote(str(sample))}.png?v={cp.stat().st_mtime_ns}", id="curves-img", style={"maxWidth": "100%"})
    )
    return legend, curves


def sample_from_url(home: str | os.PathLike, search: object, current: object):
    """``?sample=<id>`` (the Dagster asset pages link here) selects that sample when it exists."""
    from urllib.parse import parse_qs

    from dash import no_update

    if not isinstance(search, str) or not search:
        return no_update
    wanted = parse_qs(search.lstrip("?")).get("sample", [None])[0]
    if wanted is None or wanted == current:
        return no_update
    try:
        data.sample_dir(home, wanted)
    except AsignError:
        return no_update
    return wanted


# --------------------------------------------------------------------------- reports


def _reports_error(msg: str):
    return note(msg, "error"), None, None


@_safe(_reports_error)
def reports(home: str | os.PathLike, sample: object, prefix: str = "/"):
    """(metrics table, registration overlay, registration QC table) for a sample."""
    if sample is None:
        return None, None, None
    data.sample_dir(home, sample)
    try:
        df = data.read_evaluation(home, sample)
        if df is None:
            metrics = note("no evaluation.parquet yet: materialise the evaluation asset", "info")
        else:
            cols, records = data.metrics_table(df)
            metrics = _table("metrics-table", cols, records)
            metrics.tooltip_data = [{"method": METHOD_HELP.get(str(r.get("method")), "")} for r in records]
    except AsignError as e:
        metrics = note(str(e), "error")

    ov = data.overlay_path(home, sample)
    if ov is None:
        overlay = note("no registrations/overlay.png yet: materialise the registrations asset", "info")
    else:
        src = f"{prefix.rstrip('/')}{ROUTE}/overlay/{quote(str(sample))}.png?v={ov.stat().st_mtime_ns}"
        overlay = html.Img(src=src, id="overlay-img", style={"maxWidth": "100%", "maxHeight": "600px"})

    try:
        qc_df = data.read_registration_qc(home, sample)
        qc = note("no registrations/qc.parquet", "info") if qc_df is None else _table("qc-table", [str(c) for c in qc_df.columns], qc_df.to_dict("records"))
    except AsignError as e:
        qc = note(str(e), "error")
    return metrics, overlay, qc


def _table(table_id: str, cols: list[str], records: list[dict]):
    numeric = {c for c in cols if records and all(isinstance(r.get(c), (int, float, np.number)) for r in records)}
    columns = [
        {"name": c, "id": c, "type": "numeric", "format": {"specifier": ".4g"}} if c in numeric else {"name": c, "id": c}
        for c in cols
    ]
    return dash_table.DataTable(
        id=table_id,
        columns=columns,
        data=records,
        sort_action="native",
        filter_action="native",
        page_size=25,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "sans-serif", "fontSize": "13px", "padding": "4px"},
    )


# --------------------------------------------------------------------------- download


def _download_error(msg: str):
    return None, note(msg, "error")


@_safe(_download_error)
def download_gene(home: str | os.PathLike, sample: object, gene: object):
    """dcc.Download payload: the gene's imputed value at every spot, with 3D coordinates."""
    if sample is None or gene is None:
        raise ViewerMessage("pick a sample and a gene first")
    content = data.gene_csv(home, sample, gene)  # validates sample and gene
    safe_gene = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(gene))
    return {"content": content, "filename": f"{sample}_{safe_gene}.csv", "type": "text/csv"}, None


# --------------------------------------------------------------------------- wiring


def register_callbacks(app, home: Path) -> None:
    import dash
    from dash import Input, Output, State

    prefix = app.config.requests_pathname_prefix or "/"

    @app.callback(
        Output("gene", "options"),
        Output("gene", "value"),
        Output("section", "options"),
        Output("section", "value"),
        Output("graph-3d", "figure"),
        Output("panels", "options"),
        Output("panels", "value"),
        Output("sample-note", "children"),
        Input("sample", "value"),
        State("gene", "value"),
        State("z-stretch", "value"),
    )
    def _on_sample(sample, gene, z):
        return select_sample(home, sample, gene, z)

    @app.callback(
        Output("graph-3d", "figure", allow_duplicate=True),
        Output("gene-note", "children"),
        Input("gene", "value"),
        State("sample", "value"),
        prevent_initial_call=True,
    )
    def _on_gene(gene, sample):
        return switch_gene(home, sample, gene)

    @app.callback(
        Output("graph-3d", "figure", allow_duplicate=True),
        Input("z-stretch", "value"),
        State("sample", "value"),
        prevent_initial_call=True,
    )
    def _on_stretch(z, sample):
        return set_z_stretch(home, sample, z)

    @app.callback(
        Output("graph-section", "figure"),
        Output("section-note", "children"),
        Input("sample", "value"),
        Input("section", "value"),
        Input("gene", "value"),
        Input("panels", "value"),
        Input("spot-opacity", "value"),
    )
    def _on_section(sample, section, gene, panels, opacity):
        return section_view(home, sample, section, gene, panels, prefix, opacity)

    @app.callback(Output("sample", "value"), Input("url", "search"), State("sample", "value"))
    def _on_url(search, sample):
        return sample_from_url(home, search, sample)

    @app.callback(
        Output("slice-z", "min"),
        Output("slice-z", "max"),
        Output("slice-z", "value"),
        Output("slice-z", "marks"),
        Output("slice-note", "children"),
        Input("sample", "value"),
    )
    def _on_slice_sample(sample):
        return slice_controls(home, sample)

    @app.callback(Output("slice-point", "data"), Input("graph-slices", "clickData"), prevent_initial_call=True)
    def _on_slice_click(click):
        pts = (click or {}).get("points") or [{}]
        p = pts[0]
        return {"x": p.get("x"), "y": p.get("y")} if p.get("curveNumber") == 0 else dash.no_update

    @app.callback(
        Output("graph-slices", "figure"),
        Output("slice-view-note", "children"),
        Input("sample", "value"),
        Input("gene", "value"),
        Input("slice-z", "value"),
        Input("slice-point", "data"),
    )
    def _on_slices(sample, gene, z, point):
        return slice_view(home, sample, gene, z, point)

    @app.callback(
        Output("graph-iso", "figure"),
        Output("iso-note", "children"),
        Input("sample", "value"),
        Input("gene", "value"),
        Input("iso-pct", "value"),
        Input("z-stretch", "value"),
    )
    def _on_iso(sample, gene, pct, z):
        return iso_view(home, sample, gene, pct, z)

    @app.callback(Output("gene-accuracy", "children"), Input("sample", "value"), Input("gene", "value"))
    def _on_accuracy(sample, gene):
        return gene_accuracy(home, sample, gene)

    @app.callback(Output("overlay-legend-box", "children"), Output("curves", "children"), Input("sample", "value"))
    def _on_extras(sample):
        return sample_extras(home, sample, prefix)

    @app.callback(
        Output("metrics", "children"),
        Output("overlay", "children"),
        Output("qc", "children"),
        Input("sample", "value"),
    )
    def _on_reports(sample):
        return reports(home, sample, prefix)

    @app.callback(
        Output("download", "data"),
        Output("download-note", "children"),
        Input("download-btn", "n_clicks"),
        State("sample", "value"),
        State("gene", "value"),
        prevent_initial_call=True,
    )
    def _on_download(_n, sample, gene):
        return download_gene(home, sample, gene)
