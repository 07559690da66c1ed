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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # until the package is installed
from viewer_fixtures import write_fake_result  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
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
