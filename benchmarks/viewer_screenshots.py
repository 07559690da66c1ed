"""README screenshots of the viewer's slice and isosurface views, from a real result tree.

    ASIGN_HOME=... .venv/bin/python benchmarks/viewer_screenshots.py --sample her2st_C --gene ERBB2 [--out docs]

Serves the viewer on a free local port, opens ``/?sample=<id>`` in headless Chromium
(Debian `chromium` + `chromium-driver`), picks the gene through the gene search box, waits
until the slices and the isosurface are drawn and saves docs/viewer_slices.png and
docs/viewer_isosurface.png (element screenshots). The result tree is read, never written.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def _wait(driver, js: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = driver.execute_script(js)
        if got:
            return got
        time.sleep(0.3)
    raise TimeoutError(js)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True)
    ap.add_argument("--gene", required=True)
    ap.add_argument("--home", default=None, help="storage root (default $ASIGN_HOME)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    a = ap.parse_args(argv)

    from werkzeug.serving import make_server

    from dash_app import create_app

    app = create_app(a.home)
    port = _free_port()
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = _driver()
    try:
        driver.get(f"http://127.0.0.1:{port}/?sample={a.sample}")
        _wait(driver, "return document.querySelector('#graph-slices .js-plotly-plot .heatmaplayer') !== null")
        driver.find_element("css selector", "#gene").click()
        search = driver.find_element("css selector", ".dash-dropdown-search")
        search.send_keys(a.gene)
        opt = _wait(driver, "return Array.from(document.querySelectorAll('.dash-dropdown-option'))"
                            f".find(e => e.textContent.trim() === {a.gene!r}) || null")
        opt.click()
        title_js = ("const gd = document.querySelector('#graph-slices .js-plotly-plot');"
                    f"return gd && gd.layout && gd.layout.title.text.startsWith({a.gene!r} + ':');")
        _wait(driver, title_js)
        _wait(driver, "const gd = document.querySelector('#graph-iso .js-plotly-plot');"
                      f"return gd && gd.data && gd.data.length && gd.data[0].type === 'isosurface' && gd.layout.title.text.startsWith({a.gene!r});")
        time.sleep(2.0)  # WebGL draw
        a.out.mkdir(parents=True, exist_ok=True)
        for section_id, name in (("graph-slices", "viewer_slices.png"), ("graph-iso", "viewer_isosurface.png")):
            el = driver.find_element("css selector", f"#{section_id}").find_element("xpath", "./ancestor::section")
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", el)
            time.sleep(1.0)
            el.screenshot(str(a.out / name))
            print(f"wrote {a.out / name}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
