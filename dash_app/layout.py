"""Page layout (a function: the sample list is re-read on every page load)."""

from __future__ import annotations

from pathlib import Path

from dash import dcc, html

from dash_app.callbacks import DEFAULT_Z_STRETCH, _panel_options, sample_overview

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
                        html.Label("z stretch"),
                        dcc.Slider(
                            id="z-stretch",
                            min=1,
                            max=50,
                            step=1,
                            value=DEFAULT_Z_STRETCH,
                            marks={v: str(v) for v in (1, 5, 10, 20, 30, 40, 50)},
                        ),
                    ],
                    style={"maxWidth": "520px"},
                ),
                dcc.Loading(dcc.Graph(id="graph-3d", style={"height": "640px"}, config={"displaylogo": False})),
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
                    ],
                    style=CSS["row"],
                ),
                html.Div(id="section-note"),
                dcc.Graph(id="graph-section", style={"height": "520px"}, config={"displaylogo": False}),
            ),
            section("Evaluation metrics (per section and method)", html.Div(id="metrics")),
            section("Registration overlay", html.Div(id="overlay")),
            section("Registration QC", html.Div(id="qc")),
        ],
        style=CSS["page"],
    )
