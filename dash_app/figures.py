"""Plotly figures as plain dicts (no plotly validation: a 100k-spot figure builds in ms).

Numeric arrays travel as plotly typed-array specs (base64 float32), which plotly.js
decodes natively; this keeps a 100k-value colour update at ~0.5 MB and a few ms.
"""

from __future__ import annotations

import base64

import numpy as np

from dash_app.data import Volume

GENE_SCALE = "Viridis"
ERROR_SCALE = "RdBu_r"
MEASURED_SYMBOL = "circle-open"


def typed_array(values: np.ndarray) -> dict:
    """A plotly typed-array spec (float32, base64)."""
    arr = np.ascontiguousarray(values, dtype="<f4")
    return {"dtype": "f4", "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_typed_array(spec) -> np.ndarray:
    """Inverse of typed_array (also accepts a plain list); used by tests and benchmarks."""
    if isinstance(spec, dict) and "bdata" in spec:
        dtype = {"f4": "<f4", "f8": "<f8", "i4": "<i4", "u1": "u1"}[spec["dtype"]]
        return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=dtype)
    return np.asarray(spec, dtype=np.float64)


def message_figure(text: str) -> dict:
    """An empty figure that says why there is nothing to show."""
    return {
        "data": [],
        "layout": {
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}],
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        },
    }


def aspect_ratio(xyz: np.ndarray, z_stretch: float) -> dict:
    """Scene aspect in true proportions, z multiplied by the stretch slider."""
    if len(xyz) == 0:
        return {"x": 1, "y": 1, "z": 1}
    span = np.nanmax(xyz, axis=0) - np.nanmin(xyz, axis=0)
    sx = max(float(span[0]), 1e-6)
    return {
        "x": 1.0,
        "y": max(float(span[1]) / sx, 0.05),
        "z": max(float(span[2]) * float(z_stretch) / sx, 0.05),
    }


def colorbar(title: str) -> dict:
    return {"title": {"text": title}, "thickness": 14, "len": 0.8}


def volume_figure(vol: Volume, gene: str, values: np.ndarray, z_stretch: float) -> dict:
    """Every spot of every section in the common frame; trace 0 is coloured by the gene,
    trace 1 outlines the measured (ST) section's spots."""
    cmin, cmax = _range(values)
    names = np.asarray(vol.sections, dtype=object)[vol.section_code]
    text = (names + ":" + vol.spot_id).tolist()
    xyz = vol.xyz_um
    traces = [
        {
            "type": "scatter3d",
            "mode": "markers",
            "name": "spots (colour = gene)",
            "x": typed_array(xyz[:, 0]),
            "y": typed_array(xyz[:, 1]),
            "z": typed_array(xyz[:, 2]),
            "text": text,
            "hovertemplate": "%{text}<br>value %{marker.color:.3f}<extra></extra>",
            "marker": {
                "size": 2.5,
                "color": typed_array(values),
                "cmin": cmin,
                "cmax": cmax,
                "colorscale": GENE_SCALE,
                "colorbar": colorbar(gene),
                "showscale": True,
            },
        }
    ]
    m = vol.measured
    if m.any():
        traces.append(
            {
                "type": "scatter3d",
                "mode": "markers",
                "name": "measured section (ST)",
                "x": typed_array(xyz[m, 0]),
                "y": typed_array(xyz[m, 1]),
                "z": typed_array(xyz[m, 2]),
                "hoverinfo": "skip",
                "marker": {"size": 4, "symbol": MEASURED_SYMBOL, "color": "rgba(20,20,20,0.55)", "line": {"width": 1}},
            }
        )
    return {
        "data": traces,
        "layout": {
            "uirevision": vol.sample,
            "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
            "legend": {"x": 0, "y": 1},
            "scene": {
                "aspectmode": "manual",
                "aspectratio": aspect_ratio(xyz, z_stretch),
                "xaxis": {"title": {"text": "x (um)"}},
                "yaxis": {"title": {"text": "y (um)"}, "autorange": "reversed"},
                "zaxis": {"title": {"text": "z (um)"}},
            },
            "title": {"text": f"{vol.sample}: {gene}", "x": 0.5},
        },
    }


def _range(values: np.ndarray) -> tuple[float, float]:
    from dash_app.data import value_range

    return value_range(values)


PANEL_TITLES = {
    "imputed": "imputed",
    "measured": "measured",
    "truth": "truth",
    "error": "error (imputed - truth)",
}


def section_figure(
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    gene: str,
    crange: tuple[float, float],
    err_abs: float,
    image: dict | None,
    size_px: tuple[float, float] | None,
) -> dict:
    """Side-by-side panels over the section's thumbnail.

    panels: (kind, x_thumb_px, y_thumb_px, values) per panel; kind in PANEL_TITLES.
    image: {"source": url} of the thumbnail; size_px: its (width, height) in thumbnail px.
    """
    k = max(len(panels), 1)
    gap = 0.02
    width = (1.0 - gap * (k - 1)) / k
    data, layout = [], {
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "showlegend": False,
        "images": [],
        "annotations": [],
        "plot_bgcolor": "white",
    }
    for i, (kind, x, y, v) in enumerate(panels):
        ax = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        is_err = kind == "error"
        data.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "name": kind,
                "xaxis": f"x{ax}",
                "yaxis": f"y{ax}",
                "x": typed_array(x),
                "y": typed_array(y),
                "hovertemplate": f"{kind} %{{marker.color:.3f}}<extra></extra>",
                "marker": {
                    "size": 6,
                    "color": typed_array(v),
                    "cmin": -err_abs if is_err else crange[0],
                    "cmax": err_abs if is_err else crange[1],
                    "colorscale": ERROR_SCALE if is_err else GENE_SCALE,
                    "showscale": is_err or i == 0,
                    "colorbar": {
                        "title": {"text": "error" if is_err else gene},
                        "x": x0 + width if is_err else -0.02,
                        "xanchor": "left" if is_err else "right",
                        "thickness": 10,
                        "len": 0.6,
                    },
                },
            }
        )
        w, h = size_px if size_px else (float(np.nanmax(x, initial=1)), float(np.nanmax(y, initial=1)))
        layout[f"xaxis{ax}"] = {
            "domain": [x0, x0 + width],
            "range": [0, w],
            "visible": False,
            "anchor": f"y{ax}",
        }
        layout[f"yaxis{ax}"] = {
            "range": [h, 0],
            "visible": False,
            "anchor": f"x{ax}",
            "scaleanchor": f"x{ax}",
        }
        if image is not None:
            layout["images"].append(
                {
                    "source": image["source"],
                    "xref": f"x{ax}",
                    "yref": f"y{ax}",
                    "x": 0,
                    "y": 0,
                    "sizex": w,
                    "sizey": h,
                    "xanchor": "left",
                    "yanchor": "top",
                    "sizing": "stretch",
                    "layer": "below",
                    "opacity": 0.9,
                }
            )
        layout["annotations"].append(
            {
                "text": PANEL_TITLES.get(kind, kind),
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": x0 + width / 2,
                "y": 1.0,
                "yanchor": "bottom",
            }
        )
    return {"data": data, "layout": layout}
