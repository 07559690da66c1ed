"""Page layout (a function: the sample list is re-read on every page load)."""

from __future__ import annotations

from pathlib import Path

from dash import dcc, html

from dash_app.callbacks import DEFAULT_ISO_PCT, DEFAULT_OPACITY, _panel_options, sample_overview

CSS = {
    "page": {"fontFamily": "sans-serif", "margin": "12px 18px", "fontSize": "14px"},
    "row": {"display": "flex", "gap": "16px", "alignItems": "flex-end", "flexWrap": "wrap"},
    "ctl": {"minWidth": "260px"},
}


def make_layout(home: Path):
    options, default, assets_table = sample_overview(home)

    def section(title: str, *children, **kw):
        return html.Section([html.H3(title, style={"margin": "14px 0 6px"}), *children], **kw)

    return html.Div(
        [
            dcc.Location(id="url", refresh=False),
            html.H2("ASIGN 3D gene-expression viewer", style={"marginBottom": "2px"}),
            html.Div(f"storage root: {home}", className="home", style={"color": "#666"}),
            section("Samples", html.Div(assets_table, id="sample-assets")),
            html.Div(
                [
                    html.Div(
                        [html.Label("sample", htmlFor="sample"), dcc.Dropdown(id="sample", options=options, value=default, clearable=False)],
                        style=CSS["ctl"],
                    ),
                    html.Div(
                        [
                            html.Label("gene (type to search)", htmlFor="gene"),
                            dcc.Dropdown(id="gene", options=[], value=None, searchable=True, clearable=False),
                        ],
                        style=CSS["ctl"],
                    ),
                    html.Div(
                        [html.Button("Download gene CSV", id="download-btn", n_clicks=0), dcc.Download(id="download")],
                    ),
                ],
                style=CSS["row"],
            ),
            html.Div(id="sample-note"),
            html.Div(id="gene-note"),
            html.Div(id="download-note"),
            section(
                "3D volume",
                html.Div(
                    [
                        html.Label("z stretch (empty: z drawn at 40% of the x/y extent) ", htmlFor="z-stretch"),
                        dcc.Input(id="z-stretch", type="number", min=0.1, max=1000, step="any", value=None, debounce=False,
                                  placeholder="auto", style={"width": "90px"}),
                    ],
                ),
                dcc.Loading(dcc.Graph(id="graph-3d", style={"height": "640px"}, config={"displaylogo": False})),
            ),
            section(
                "Slices of the dense volume (expression_volume)",
                html.Div(id="slice-note"),
                html.Div(
                    [html.Label("z of the xy slice (um; marks: sections; between sections: interpolated)"),
                     dcc.Slider(id="slice-z", min=0, max=1, step=0.5, value=None, marks={}, tooltip={"placement": "bottom"})],
                    style={"maxWidth": "720px"},
                ),
                dcc.Store(id="slice-point"),
                html.Div(id="slice-view-note"),
                dcc.Graph(id="graph-slices", style={"height": "560px"}, config={"displaylogo": False}),
            ),
            section(
                "Isosurface",
                html.Div(
                    [html.Label("threshold (percentile of the gene's in-tissue voxels)"),
                     dcc.Slider(id="iso-pct", min=50, max=99, step=1, value=DEFAULT_ISO_PCT, marks={v: str(v) for v in (50, 60, 70, 80, 90, 95, 99)})],
                    style={"maxWidth": "520px"},
                ),
                html.Div(id="iso-note"),
                dcc.Loading(dcc.Graph(id="graph-iso", style={"height": "560px"}, config={"displaylogo": False})),
            ),
            section(
                "Section view",
                html.Div(
                    [
                        html.Div(
                            [html.Label("section", htmlFor="section"), dcc.Dropdown(id="section", options=[], value=None, clearable=False)],
                            style=CSS["ctl"],
                        ),
                        dcc.Checklist(id="panels", options=_panel_options(False, False), value=["imputed"], inline=True),
                        html.Div(
                            [html.Label("spot opacity"),
                             dcc.Slider(id="spot-opacity", min=0.1, max=1.0, step=0.05, value=DEFAULT_OPACITY, marks={0.1: "0.1", 0.5: "0.5", 1.0: "1"})],
                            style={"width": "240px"},
                        ),
                    ],
                    style=CSS["row"],
                ),
                html.Div(id="section-note"),
                dcc.Graph(id="graph-section", style={"height": "520px"}, config={"displaylogo": False}),
            ),
            section("Accuracy of the gene shown (per section, vs the baselines)", html.Div(id="gene-accuracy")),
            section("Evaluation metrics (per section and method)", html.Div(id="metrics")),
            section("Registration overlay", html.Div(id="overlay-legend-box"), html.Div(id="overlay")),
            section("Registration QC", html.Div(id="qc")),
            section("Training curves", html.Div(id="curves")),
        ],
        style=CSS["page"],
    )
