"""The Dash viewer of an ASIGN result tree: create_app / run_viewer."""

from __future__ import annotations

import logging
import os

import dash
from flask import abort, send_file

from asign_assets.errors import AsignError
from dash_app import callbacks, data
from dash_app.layout import make_layout

log = logging.getLogger("asign.viewer")

_CSS = """
.note { padding: 6px 10px; margin: 6px 0; border-radius: 4px; }
.note-error { background: #fde8e8; color: #8a1c1c; }
.note-warning { background: #fff4e0; color: #7a4b00; }
.note-info { background: #eef4fb; color: #1f4a7a; }
table.assets { border-collapse: collapse; }
table.assets td, table.assets th { border: 1px solid #ddd; padding: 2px 8px; text-align: center; }
table.assets td.present { color: #1a7f37; }
table.assets td.absent { color: #aaa; }
"""


def create_app(asign_home: str | os.PathLike | None = None) -> dash.Dash:
    """A Dash app over `asign_home` (default $ASIGN_HOME or ~/.asign); reads, never computes."""
    home = data.resolve_home(asign_home)
    app = dash.Dash(__name__, title="ASIGN viewer", update_title=None, suppress_callback_exceptions=False)
    app.index_string = app.index_string.replace("</head>", f"<style>{_CSS}</style></head>")
    app.layout = lambda: make_layout(home)
    callbacks.register_callbacks(app, home)

    @app.server.route(f"{callbacks.ROUTE}/thumbnail/<sample>/<section>.png")
    def _thumbnail(sample: str, section: str):
        try:
            path = data.thumbnail_path(home, sample, section)
        except AsignError:
            abort(404)
        return send_file(path, mimetype="image/png", max_age=3600)

    def _png_route(kind: str, find) -> None:
        """/<kind>/<sample>.png: a per-sample image the result assets may or may not hold."""

        def serve(sample: str):
            try:
                path = find(home, sample)
            except AsignError:
                abort(404)
            if path is None:
                abort(404)
            return send_file(path, mimetype="image/png", max_age=3600)

        app.server.add_url_rule(f"{callbacks.ROUTE}/{kind}/<sample>.png", f"asign_{kind}", serve)

    _png_route("overlay", data.overlay_path)
    _png_route("curves", data.curves_path)

    app.asign_home = home  # type: ignore[attr-defined]
    return app


def run_viewer(
    asign_home: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
) -> None:
    """Serve the viewer (loopback only unless `host` says otherwise)."""
    app = create_app(asign_home)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("viewer bound to %s: anyone who can reach this address can read the results", host)
    print(f"ASIGN viewer on http://{host}:{port}/ (storage root {app.asign_home})", flush=True)  # type: ignore[attr-defined]
    app.run(host=host, port=port, debug=debug)
