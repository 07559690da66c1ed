"""python -m dash_app --home DIR --host 127.0.0.1 --port 8050"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dash_app", description="ASIGN result viewer")
    p.add_argument("--home", default=None, help="storage root (default $ASIGN_HOME or ~/.asign)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    from dash_app.app import run_viewer

    run_viewer(a.home, host=a.host, port=a.port, debug=a.debug)


if __name__ == "__main__":
    main()
