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

PANEL_KINDS = ("imputed", "measured", "truth", "error")
DEFAULT_Z_STRETCH = 10.0
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


def _panel_options(has_truth: bool, has_measured: bool) -> list[dict]:
    return [
        {"label": "imputed", "value": "imputed"},
        {"label": "measured", "value": "measured", "disabled": not has_measured},
        {"label": "truth" if has_truth else "truth (no evaluation_truth.zarr)", "value": "truth", "disabled": not has_truth},
        {"label": "error" if has_truth else "error (no truth)", "value": "error", "disabled": not has_truth},
    ]


@_safe(_select_sample_error)
def select_sample(home: str | os.PathLike, sample: object, gene: object = None, z_stretch: float = DEFAULT_Z_STRETCH):
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
    fig = figures.volume_figure(vol, gene, values, _stretch(z_stretch))
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
        _panel_options(has_truth, has_measured),
        panels,
        note(truth_msg, "info"),
    )


def _stretch(z: object) -> float:
    try:
        z = float(z)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_Z_STRETCH
    return float(np.clip(z, 0.1, 1000.0)) if np.isfinite(z) else DEFAULT_Z_STRETCH


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
    p["data"][0]["marker"]["colorbar"]["title"]["text"] = gene
    p["layout"]["title"]["text"] = f"{sample}: {gene}"
    return p, None


@_safe(lambda msg: Patch())
def set_z_stretch(home: str | os.PathLike, sample: object, z_stretch: object):
    if sample is None:
        return Patch()
    vol = data.load_volume(home, sample)
    p = Patch()
    p["layout"]["scene"]["aspectratio"] = figures.aspect_ratio(vol.xyz_um, _stretch(z_stretch))
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
    for kind in wanted:
        if kind == "imputed":
            r, v = rows, values[rows]
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
            if kind == "truth":
                v = truth_vals[sel]
            else:
                v = values[r] - truth_vals[sel]
                all_err = values[truth_rows] - truth_vals
                err_abs = max(float(np.nanmax(np.abs(all_err), initial=0.0)), 1e-6)
        out.append((kind, xy[r, 0], xy[r, 1], v))
    if not out:
        raise ViewerMessage("; ".join(notes) or "nothing to show")
    fig = figures.section_figure(out, str(gene), crange, err_abs, image, size)
    return fig, note("; ".join(notes), "info") if notes else None


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
    )
    def _on_section(sample, section, gene, panels):
        return section_view(home, sample, section, gene, panels, prefix)

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
