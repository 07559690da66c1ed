"""The viewer in a real (headless) Chromium: pick a sample and a gene, read the plotted colours.

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver)
and dash[testing]. No pytest flags are needed: the `dash_duo` fixture is overridden here
to run headless with the options this machine needs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # until the package is installed
from viewer_fixtures import write_fake_result  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"
CHROME = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROME is None or DRIVER is None,
        reason="needs chromium and chromedriver on PATH (apt-get install -y chromium chromium-driver)",
    ),
]

try:
    from dash.testing.application_runners import ThreadedRunner
    from dash.testing.composite import DashComposite
except ImportError:  # pragma: no cover - dash[testing] missing
    pytestmark.append(pytest.mark.skip(reason="dash[testing] is not installed"))


def _chrome_options():
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    opts.binary_location = CHROME
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,2200",
    ):
        opts.add_argument(arg)
    return opts


@pytest.fixture
def dash_duo(tmp_path):
    """dash.testing's dash_duo, always headless with our Chromium options (no CLI flags)."""
    with ThreadedRunner() as server:
        with DashComposite(
            server=server,
            browser="Chrome",
            headless=False,  # --headless=new is in the options already
            options=[_chrome_options()],
            download_path=str(tmp_path / "download"),
            percy_run=False,
        ) as dc:
            yield dc


JS_READ_COLOURS = """
const gd = document.getElementById(arguments[0]).querySelector('.js-plotly-plot');
if (!gd || !gd.data || !gd.data.length) { return null; }
const c = gd.data[0].marker.color;
if (c && c.bdata !== undefined) { return {bdata: c.bdata, dtype: c.dtype}; }
const title = gd.layout.title && gd.layout.title.text;
return {values: Array.from(c), title: title};
"""


def _plotted(dash_duo, graph_id: str):
    got = dash_duo.driver.execute_script(JS_READ_COLOURS, graph_id)
    if got is None:
        return None, None
    if "bdata" in got:
        from dash_app.figures import decode_typed_array

        return decode_typed_array(got), None
    return np.asarray(got["values"], dtype=np.float64), got.get("title")


def _wait_for_colours(dash_duo, graph_id: str, expected: np.ndarray, timeout: float = 20.0):
    import time

    deadline = time.time() + timeout
    vals = None
    while time.time() < deadline:
        vals, _ = _plotted(dash_duo, graph_id)
        if vals is not None and vals.shape == expected.shape and np.allclose(vals, expected, rtol=1e-6):
            return vals
        time.sleep(0.2)
    return vals


def test_pick_sample_and_gene_in_browser(dash_duo, tmp_path):
    from dash_app import create_app
    from dash_app import data

    data.clear_caches()
    home = tmp_path / "home"
    write_fake_result(home, sample="A_other", seed=3, n_genes=6)
    r = write_fake_result(home, sample="S1", n_genes=12)
    app = create_app(home)
    dash_duo.start_server(app)
    dash_duo.wait_for_element("#graph-3d .js-plotly-plot", timeout=30)

    # pick the sample (A_other is the default: first viewable) and then a gene via search
    dash_duo.select_dcc_dropdown("#sample", value="S1")
    first = _wait_for_colours(dash_duo, "graph-3d", r.X[:, 0])
    np.testing.assert_allclose(first, r.X[:, 0], rtol=1e-6)

    # gene picker: type in the search box, only the matching gene remains, pick it
    gene = "GENE007"
    dash_duo.find_element("#gene").click()
    search = dash_duo.find_element(".dash-dropdown-search")
    search.send_keys("007")
    dash_duo.wait_for_text_to_equal(".dash-dropdown-options", gene, timeout=10)
    dash_duo.find_element(".dash-dropdown-option").click()
    vals = _wait_for_colours(dash_duo, "graph-3d", r.X[:, 7])
    assert vals is not None, "no figure in the page"
    np.testing.assert_allclose(vals, r.X[:, 7], rtol=1e-6)

    # the section view shows the same gene on the default (non-measured) section
    rows = np.flatnonzero(r.section == "sec0")
    sec_vals = _wait_for_colours(dash_duo, "graph-section", r.X[rows, 7])
    np.testing.assert_allclose(sec_vals, r.X[rows, 7], rtol=1e-6)

    # CSV download of the current gene
    download = tmp_path / "download"
    download.mkdir(exist_ok=True)
    dash_duo.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download)})
    dash_duo.find_element("#download-btn").click()
    csv = download / f"S1_{gene}.csv"
    import time

    deadline = time.time() + 15
    while not csv.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert csv.exists(), f"no download in {download}: {list(download.iterdir())}"
    import pandas as pd

    df = pd.read_csv(csv)
    np.testing.assert_allclose(df["value"], r.X[:, 7], rtol=1e-6)

    dash_duo.wait_for_element("#metrics-table", timeout=10)
    assert dash_duo.get_logs() == [], "browser console errors"
    ARTIFACTS.mkdir(exist_ok=True)
    dash_duo.driver.save_screenshot(str(ARTIFACTS / "viewer.png"))
    assert (ARTIFACTS / "viewer.png").stat().st_size > 10_000


JS_TRACES = """
const el = document.getElementById(arguments[0]);
const gd = el && el.querySelector('.js-plotly-plot');
if (!gd || !gd.data || !gd.data.length) { return null; }
return gd.data.map(t => ({type: t.type, name: t.name || null, isomin: t.isomin === undefined ? null : t.isomin,
                          z: t.type === 'heatmap' ? t.z : null, x: t.type === 'scatter' ? Array.from(t.x) : null,
                          y: t.type === 'scatter' ? Array.from(t.y) : null}));
"""


def _wait_traces(dash_duo, graph_id: str, ok, timeout: float = 20.0):
    import time

    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = dash_duo.driver.execute_script(JS_TRACES, graph_id)
        if got and ok(got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"{graph_id}: condition not met, last traces {str(got)[:300]}")


def _grid(z) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)


def test_slices_isosurface_and_uncertainty_in_browser(dash_duo, tmp_path):
    """Deep link ?sample=, orthogonal slices (click moves xz/yz), isosurface, uncertainty panel."""
    from dash_app import callbacks as cb
    from dash_app import create_app
    from dash_app import data

    data.clear_caches()
    home = tmp_path / "home"
    write_fake_result(home, sample="A_other", seed=3, n_genes=6)
    r = write_fake_result(home, sample="S1", n_genes=12)
    app = create_app(home)
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/?sample=S1")  # the link Dagster's asset pages carry
    dash_duo.wait_for_element("#graph-slices .js-plotly-plot", timeout=30)
    gene = r.genes[0]

    # xy slice at the slider's start value (mid z = sec1) equals the callback's plane for S1
    want, _ = cb.slice_view(home, "S1", gene, 20.0, None)
    traces = _wait_traces(dash_duo, "graph-slices", lambda t: len(t) == 4 and t[0]["z"] is not None
                          and np.allclose(_grid(t[0]["z"]), _grid(want["data"][0]["z"]), equal_nan=True, atol=1e-4))
    before = (traces[3]["x"][0], traces[3]["y"][0])

    # a click on the xy slice (plotly's click event, as a mouse click on a cell emits it)
    # moves the cross; xz/yz then go through the clicked point
    from asign_assets.results.volume import open_ome_zarr

    g = open_ome_zarr(home / "samples" / "S1" / "expression_volume" / "expression.ome.zarr").grid
    point = {"x": float(g.axis(2)[5]), "y": float(g.axis(1)[7])}
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#graph-slices .js-plotly-plot');"
        "gd.emit('plotly_click', {points: [{curveNumber: 0, pointNumber: [7, 5], x: arguments[0], y: arguments[1]}]});",
        point["x"], point["y"],
    )
    moved = _wait_traces(dash_duo, "graph-slices", lambda t: len(t) == 4 and (t[3]["x"][0], t[3]["y"][0]) != before)
    assert (moved[3]["x"][0], moved[3]["y"][0]) == pytest.approx((point["x"], point["y"]))
    ref, _ = cb.slice_view(home, "S1", gene, 20.0, point)
    np.testing.assert_allclose(_grid(moved[1]["z"]), _grid(ref["data"][1]["z"]), atol=1e-4)
    np.testing.assert_allclose(_grid(moved[2]["z"]), _grid(ref["data"][2]["z"]), atol=1e-4)

    # the isosurface of the gene at the default threshold
    iso, _ = cb.iso_view(home, "S1", gene)
    got = _wait_traces(dash_duo, "graph-iso", lambda t: t[0]["type"] == "isosurface")
    assert got[0]["isomin"] == pytest.approx(iso["data"][0]["isomin"], rel=1e-6)
    dash_duo.wait_for_element("#graph-iso canvas", timeout=10)

    # uncertainty toggle in the section view
    dash_duo.find_element("#panels input[value='uncertainty']").click()
    sec = _wait_traces(dash_duo, "graph-section", lambda t: any(x["name"] == "uncertainty" for x in t))
    assert [x["name"] for x in sec][-1] == "uncertainty"
    dash_duo.wait_for_element("#overlay-legend", timeout=10)
    dash_duo.wait_for_element("#gene-accuracy-table", timeout=10)
    assert dash_duo.get_logs() == [], "browser console errors"
    ARTIFACTS.mkdir(exist_ok=True)
    dash_duo.driver.save_screenshot(str(ARTIFACTS / "viewer_dense.png"))
