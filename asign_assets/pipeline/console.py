"""What `asign run` prints: one line per materialised asset, a summary table, and Dagster's
DEBUG stream in a log file instead of the terminal.

The ``asign_cli`` logger is attached to the definitions; with its defaults (no file, no
progress) it does nothing, so UI and daemon runs are unaffected.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import dagster as dg

from asign_assets.storage.layout import LAYOUT


@dataclass(frozen=True)
class AssetLine:
    asset: str
    seconds: float
    figure: str
    value: Any

    @property
    def detail(self) -> str:
        v = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{self.figure} {v}" if self.figure else ""

    def text(self) -> str:
        return f"  {self.asset:<18} {self.seconds:7.1f} s   {self.detail}"


def asset_line(asset: str, metadata: Mapping[str, Any]) -> AssetLine:
    """The line of a materialisation from its metadata (MetadataValue or plain values)."""
    plain = {k: getattr(v, "value", v) for k, v in metadata.items()}
    figure = LAYOUT[asset].key_figure if asset in LAYOUT else ""
    return AssetLine(asset, float(plain.get("seconds", float("nan"))), figure, plain.get(figure, ""))


def summary_table(ran: list[AssetLine], skipped: Mapping[str, str]) -> str:
    """Plain-text table: every asset of the sample, ran (seconds, figure) or skipped (why)."""
    rows = [(a.asset, "ran", f"{a.seconds:.1f}", a.detail) for a in ran]
    rows += [(name, "skipped", "", why) for name, why in skipped.items()]
    widths = [max(len(r[i]) for r in rows + [("asset", "status", "seconds", "detail")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(("asset", "status", "seconds", "detail")), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


class _ProgressHandler(logging.Handler):
    """Prints one line per asset materialisation as it happens."""

    def __init__(self, stream: TextIO):
        super().__init__(logging.DEBUG)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is None or event.event_type_value != "ASSET_MATERIALIZATION":
            return
        mat = event.event_specific_data.materialization
        print(asset_line(mat.asset_key.to_user_string(), mat.metadata).text(), file=self.stream, flush=True)


class CliLoggerConfig(dg.Config):
    log_file: str = ""  # Dagster's whole event stream (DEBUG) is appended here
    progress: bool = False  # one line per materialised asset on stderr


@dg.logger(config_schema=CliLoggerConfig.to_config_schema(), description="asign run: DEBUG stream to a file, one line per asset")
def asign_cli_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    cfg = CliLoggerConfig(**init_context.logger_config)
    log = logging.getLogger(f"asign_cli.{id(init_context)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.handlers.clear()
    if cfg.log_file:
        fh = logging.FileHandler(cfg.log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    if cfg.progress:
        log.addHandler(_ProgressHandler(sys.stderr))
    return log


def cli_run_config(log_file: str) -> dict:
    """Run-config loggers for `asign run`: the console only shows errors, the file gets everything."""
    return {"loggers": {"console": {"config": {"log_level": "ERROR"}}, "asign_cli": {"config": {"log_file": log_file, "progress": True}}}}
