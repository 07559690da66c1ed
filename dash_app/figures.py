"""Plotly figures as plain dicts (no plotly validation: a 100k-spot figure builds in ms).

Numeric arrays travel as plotly typed-array specs (base64 float32), which plotly.js
decodes natively; this keeps a 100k-value colour update at ~0.5 MB and a few ms.
"""

from __future__ import annotations

import base64

import numpy as np

from dash_app.data import Volume

GENE_SCALE = "Viridis"
# On H&E (pink/purple) dark viridis spots vanish: the section view uses a scale without purple,
# white-outlined markers and an opacity control.
SECTION_SCALE = "YlOrRd"
UNCERTAINTY_SCALE = "Greys"
ERROR_SCALE = "RdBu_r"
MEASURED_SYMBOL = "circle-open"
Z_SHARE = 0.4  # default z stretch: the stack's z extent drawn at 40% of its x/y extent


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


def default_stretch(xyz: np.ndarray) -> float:
    """The z stretch that draws the z extent at ``Z_SHARE`` of the larger x/y extent."""
    if len(xyz) == 0:
        return 10.0
    span = np.nanmax(xyz, axis=0) - np.nanmin(xyz, axis=0)
    if span[2] <= 0:
        return 10.0
    return float(np.clip(round(Z_SHARE * max(span[0], span[1]) / span[2]), 1, 1000))


def colorbar(title: str, unit: str = "") -> dict:
    text = f"{title}<br><sub>{unit}</sub>" if unit else title
    return {"title": {"text": text}, "thickness": 14, "len": 0.8}


def section_z(vol: Volume) -> tuple[list[float], list[str]]:
    """Each section's z (mean over its spots) and name, for the z axis ticks."""
    n = len(vol.sections)
    cnt = np.bincount(vol.section_code, minlength=n)
    z = np.bincount(vol.section_code, weights=vol.xyz_um[:, 2], minlength=n) / np.maximum(cnt, 1)
    keep = cnt > 0
    return [float(v) for v in z[keep]], [str(sname) for sname, k in zip(vol.sections, keep) if k]


def volume_figure(vol: Volume, gene: str, values: np.ndarray, z_stretch: float, unit: str = "") -> dict:
    """Every spot of every section in the common frame; trace 0 is coloured by the gene,
    trace 1 outlines the measured (ST) section's spots. The z ticks are the section names."""
    zt, zn = section_z(vol)
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
                "colorbar": colorbar(gene, unit),
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
                "name": "measured sections (ST)" if len(np.unique(vol.section_code[m])) > 1 else "measured section (ST)",
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
                "zaxis": {"title": {"text": "section (z)"}, "tickvals": zt, "ticktext": zn, "tickfont": {"size": 10}},
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
    "uncertainty": "uncertainty (SD)",
}


def section_figure(
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    gene: str,
    crange: tuple[float, float],
    err_abs: float,
    image: dict | None,
    size_px: tuple[float, float] | None,
    unit: str = "",
    opacity: float = 0.9,
    unc_max: float = 1.0,
) -> dict:
    """Side-by-side panels over the section's thumbnail.

    panels: (kind, x_thumb_px, y_thumb_px, values) per panel; kind in PANEL_TITLES.
    image: {"source": url} of the thumbnail; size_px: its (width, height) in thumbnail px.
    Markers are large and white-outlined, ``opacity`` is the markers' opacity.
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
        is_unc = kind == "uncertainty"
        own_bar = is_err or is_unc
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
                    "size": 11,
                    "opacity": float(opacity),
                    "line": {"width": 1, "color": "white"},
                    "color": typed_array(v),
                    "cmin": -err_abs if is_err else (0.0 if is_unc else crange[0]),
                    "cmax": err_abs if is_err else (unc_max if is_unc else crange[1]),
                    "colorscale": ERROR_SCALE if is_err else (UNCERTAINTY_SCALE if is_unc else SECTION_SCALE),
                    "showscale": own_bar or i == 0,
                    "colorbar": {
                        "title": {"text": (("error" if is_err else "uncertainty") if own_bar else gene) + (f"<br><sub>{unit}</sub>" if unit else "")},
                        "x": x0 + width if own_bar else -0.02,
                        "xanchor": "left" if own_bar else "right",
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


# --------------------------------------------------------------------------- dense volume views


def _heatmap(z: np.ndarray, x0: float, dx: float, y0: float, dy: float, axis: str, crange, unit: str, gene: str, show_scale: bool) -> dict:
    ax = "" if axis == "1" else axis
    return {
        "type": "heatmap",
        "z": np.where(np.isfinite(z), np.round(z, 4), None).tolist(),
        "x0": x0, "dx": dx, "y0": y0, "dy": dy,
        "xaxis": f"x{ax}", "yaxis": f"y{ax}",
        "zmin": crange[0], "zmax": crange[1], "colorscale": GENE_SCALE, "showscale": show_scale,
        "colorbar": colorbar(gene, unit), "hoverongaps": False,
        "hovertemplate": "x %{x:.0f} um<br>y %{y:.0f} um<br>value %{z:.3f}<extra></extra>" if axis == "1" else "%{x:.0f} um, z %{y:.1f} um<br>value %{z:.3f}<extra></extra>",
    }


def slice_figure(
    xy: np.ndarray, xz: np.ndarray, yz: np.ndarray, grid, z_um: float, point_xy: tuple[float, float],
    gene: str, crange: tuple[float, float], unit: str, zt: tuple[list[float], list[str]],
) -> dict:
    """Three orthogonal slices (NaN outside tissue): xy at ``z_um`` (left, large), xz at the
    point's y and yz at the point's x (right, stacked); the point is marked with a cross."""
    z0, y0, x0 = grid.origin_um
    vz, vy, vx = grid.voxel_um
    px, py = point_xy
    data = [
        _heatmap(xy, x0, vx, y0, vy, "1", crange, unit, gene, True),
        _heatmap(xz, x0, vx, z0, vz, "2", crange, unit, gene, False),
        _heatmap(yz, y0, vy, z0, vz, "3", crange, unit, gene, False),
        {"type": "scatter", "mode": "markers", "x": [px], "y": [py], "xaxis": "x", "yaxis": "y", "hoverinfo": "skip",
         "marker": {"symbol": "x-thin", "size": 14, "line": {"width": 2, "color": "red"}}, "showlegend": False},
    ]
    ztick = {"tickvals": zt[0], "ticktext": zt[1], "tickfont": {"size": 9}}
    layout = {
        "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        "showlegend": False,
        "xaxis": {"domain": [0.0, 0.52], "title": {"text": "x (um)"}, "constrain": "domain"},
        "yaxis": {"domain": [0.0, 1.0], "autorange": "reversed", "scaleanchor": "x", "title": {"text": "y (um)"}},
        "xaxis2": {"domain": [0.64, 1.0], "anchor": "y2", "title": {"text": "x (um)"}},
        "yaxis2": {"domain": [0.58, 1.0], "anchor": "x2", "title": {"text": "z"}, **ztick},
        "xaxis3": {"domain": [0.64, 1.0], "anchor": "y3", "title": {"text": "y (um)"}},
        "yaxis3": {"domain": [0.0, 0.42], "anchor": "x3", "title": {"text": "z"}, **ztick},
        "annotations": [
            {"text": f"xy at z = {z_um:.1f} um", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.26, "y": 1.0, "yanchor": "bottom"},
            {"text": f"xz at y = {py:.0f} um", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.82, "y": 1.0, "yanchor": "bottom"},
            {"text": f"yz at x = {px:.0f} um", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.82, "y": 0.43, "yanchor": "bottom"},
        ],
        "title": {"text": f"{gene}: orthogonal slices of the dense volume (click the xy slice to move the cross)", "x": 0.5, "font": {"size": 13}},
        "uirevision": "slices",
    }
    return {"data": data, "layout": layout}


def isosurface_figure(values: np.ndarray, tissue: np.ndarray, grid_axes: tuple[np.ndarray, np.ndarray, np.ndarray], threshold: float,
                      crange: tuple[float, float], gene: str, unit: str, z_stretch: float, zt: tuple[list[float], list[str]]) -> dict:
    """plotly Isosurface of one gene (voxels >= ``threshold``) over [nz, ny, nx] values;
    outside the tissue the field is set below the range so surfaces close at the tissue edge."""
    zc, yc, xc = grid_axes
    Z, Y, X = np.meshgrid(zc, yc, xc, indexing="ij")
    v = np.where(tissue, values, crange[0] - 1.0)
    span_x = max(float(xc[-1] - xc[0]), 1e-6)
    aspect = {"x": 1.0, "y": max(float(yc[-1] - yc[0]) / span_x, 0.05), "z": max(float(zc[-1] - zc[0]) * float(z_stretch) / span_x, 0.05)}
    return {
        "data": [{
            "type": "isosurface",
            "x": typed_array(X.ravel()), "y": typed_array(Y.ravel()), "z": typed_array(Z.ravel()),
            "value": typed_array(v.ravel()),
            "isomin": float(threshold), "isomax": float(crange[1]),
            "surface": {"count": 3}, "caps": {"x": {"show": False}, "y": {"show": False}, "z": {"show": False}},
            "colorscale": GENE_SCALE, "cmin": crange[0], "cmax": crange[1], "opacity": 0.6,
            "colorbar": colorbar(gene, unit),
            "hovertemplate": "value %{value:.3f}<extra></extra>",
        }],
        "layout": {
            "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
            "title": {"text": f"{gene} >= {threshold:.3g} ({unit})" if unit else f"{gene} >= {threshold:.3g}", "x": 0.5, "font": {"size": 13}},
            "scene": {
                "aspectmode": "manual", "aspectratio": aspect,
                "xaxis": {"title": {"text": "x (um)"}},
                "yaxis": {"title": {"text": "y (um)"}, "autorange": "reversed"},
                "zaxis": {"title": {"text": "section (z)"}, "tickvals": zt[0], "ticktext": zt[1]},
            },
            "uirevision": "iso",
        },
    }
