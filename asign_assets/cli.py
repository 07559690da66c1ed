"""The `asign` command: demo, import, run, ui, viewer, validate."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from asign_assets.errors import AsignError, InputError, RunInterrupted

EXIT_INTERRUPTED = 130


class _InterruptWatch:
    """Silences stderr the moment SIGINT arrives, so Ctrl-C gives one line, not tracebacks.

    Dagster installs its own SIGINT handler during a run; ``signal.set_wakeup_fd`` still
    sees every signal (at C level), and a thread at once disables logging (Dagster's event
    log and tracebacks go through it) and redirects fd 2 to /dev/null (Dagster's compute-log
    capture may later restore fd 2, hence both). Both are restored on exit, for the one
    line the CLI prints.
    """

    def __init__(self) -> None:
        self.fired = threading.Event()

    def __enter__(self) -> "_InterruptWatch":
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._saved = os.dup(2)
        self._prev = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        while True:
            try:
                got = os.read(self._r, 64)
            except OSError:
                return
            if not got:
                return
            if signal.SIGINT in got and not self.fired.is_set():
                logging.disable(logging.CRITICAL)
                sys.stderr.flush()
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
                self.fired.set()

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._prev)
        os.close(self._w)  # ends the thread
        if self.fired.is_set():
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(self._saved, 2)
            logging.disable(logging.NOTSET)
        os.close(self._saved)
        os.close(self._r)


_WATCH: _InterruptWatch | None = None


def _interrupted() -> bool:
    return _WATCH is not None and _WATCH.fired.is_set()


def storage_error(exc: BaseException) -> str | None:
    """A one-line message for an unwritable or full ASIGN_HOME / DAGSTER_HOME, else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST):
            path = e.filename or os.environ.get("ASIGN_HOME", "")
            return f"cannot write to {path}: {e.strerror} (check ASIGN_HOME={os.environ.get('ASIGN_HOME', '')} and DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '')})"
        text = str(e).lower()
        if type(e).__name__ == "OperationalError" and any(
            k in text for k in ("readonly database", "read-only", "disk is full", "unable to open database", "disk i/o error")
        ):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"Dagster's database under DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '')} is not writable: {first[:200]}"
        e = e.__cause__ or e.__context__
    return None


DAGSTER_YAML = """# written by asign (delete to regenerate); Dagster's settings for this DAGSTER_HOME
telemetry:
  enabled: false
"""


def _set_home(home: str | None) -> str:
    """ASIGN_HOME from the flag or the environment, exported with ASIGN_DEVICE (default auto) for
    the resources' ``dg.EnvVar``s; DAGSTER_HOME defaults under it and gets a dagster.yaml
    (telemetry off) when it has none."""
    from asign_assets.runtime.home import default_home

    if home:
        os.environ["ASIGN_HOME"] = str(Path(home).expanduser().resolve()) if "://" not in home else home
    asign_home = default_home()
    os.environ["ASIGN_HOME"] = asign_home
    os.environ.setdefault("ASIGN_DEVICE", "auto")
    local = asign_home if "://" not in asign_home else str(Path("~/.asign").expanduser())
    os.environ.setdefault("DAGSTER_HOME", str(Path(local) / "dagster"))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    return asign_home


def _run_config(args: argparse.Namespace) -> dict:
    ops: dict = {}
    if getattr(args, "encoder", None):
        from asign_assets.imaging.encoder_names import ENCODER_KINDS

        kind, _, path = args.encoder.strip().partition(":")
        if kind not in ENCODER_KINDS or (kind == "torchscript") != bool(path):
            raise InputError(None, f"unknown encoder {args.encoder!r}; use 'histology' or 'torchscript:/path/model.pt'", field="--encoder")
        ops["embeddings"] = {"config": {"encoder": kind, "encoder_path": path or None}}
    if getattr(args, "preset", None):
        ops["model"] = {"config": {"preset": args.preset}}
    if getattr(args, "epochs", None):
        ops.setdefault("model", {"config": {}})["config"]["epochs"] = args.epochs
    return {"ops": ops} if ops else {}


def cmd_demo(args: argparse.Namespace) -> None:
    from asign_assets.pipeline.run import materialise_sample

    from asign_assets.importers.demo import DemoConfig, make_demo_stack
    from asign_assets.runtime.home import default_local_state

    home = _set_home(args.home)
    out = Path(args.out) if args.out else Path(default_local_state()) / "demo-data" / args.sample_id
    cfg = DemoConfig(n_sections=args.sections, spots_per_section=args.spots, image_px=args.image_px, seed=args.seed)
    t0 = time.perf_counter()
    stack = make_demo_stack(out, cfg, sample_id=args.sample_id)
    print(f"asign: demo stack of {cfg.n_sections} sections written to {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    materialise_sample(str(stack.manifest_path), device=args.device, run_config=_run_config(args), replace=args.replace, interrupted=_interrupted)
    print(f"asign: open the viewer with `asign viewer` (ASIGN_HOME={home})", file=sys.stderr)
    print(stack.manifest_path)


def _parse_z(text: str | None) -> dict[str, float]:
    """``C3=116,C4=132`` -> {"C3": 116.0, "C4": 132.0}."""

    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, val = item.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise InputError(None, f"expected SECTION=UM, got {item!r}", field="--z") from None
        if not sep:
            raise InputError(None, f"expected SECTION=UM, got {item!r}", field="--z")
    return out


def _names(values: list[str]) -> list[str]:
    """Repeated and/or comma-separated section names (``--measured C2 --measured C6``, ``--measured C2,C6``)."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def cmd_import_her2st(args: argparse.Namespace) -> None:
    from asign_assets.importers.her2st import manifest_from_her2st

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    out = Path(args.out) if args.out else Path.cwd() / f"{args.sample_id or 'her2st_' + args.patient}.yaml"
    path, report = manifest_from_her2st(
        Path(args.data_dir), patient=args.patient, sections=sections, measured=_names(args.measured),
        with_truth=args.with_truth, sample_id=args.sample_id, out=out, z_step_um=args.z_step_um,
        z_um=_parse_z(args.z),
    )
    for line in report:
        print(f"asign: {line}", file=sys.stderr)
    print(path)


def cmd_import_visium(args: argparse.Namespace) -> None:
    from asign_assets.importers.visium import manifest_from_visium

    path, report = manifest_from_visium(
        args.dirs, measured=_names(args.measured), with_truth=args.with_truth, sample_id=args.sample_id,
        out=Path(args.out) if args.out else None, z_step_um=args.z_step_um,
    )
    for line in report:
        print(f"asign: {line}", file=sys.stderr)
    print(path)


def cmd_run(args: argparse.Namespace) -> None:
    from asign_assets.pipeline.run import materialise_sample

    _set_home(args.home)
    materialise_sample(args.target, device=args.device, run_config=_run_config(args), replace=args.replace, force=args.force, interrupted=_interrupted)


def cmd_register(args: argparse.Namespace) -> None:
    """Register a manifest and add its partition, for runs launched elsewhere (`dagster job execute`)."""
    import dagster as dg

    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.storage.store import Storage

    _set_home(args.home)
    manifest = load_manifest(args.manifest)
    Storage().register(manifest)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("samples", [manifest.sample_id])
    print(manifest.sample_id)


def cmd_validate(args: argparse.Namespace) -> None:
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.ingest.sections import prepare_sections

    manifest = load_manifest(args.manifest)
    prep = prepare_sections(manifest)
    for r in prep.records:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in prep.plausibility.get(r.name, {}).items())
        print(
            f"{r.name}: {r.n_spots} spots ({r.n_virtual} virtual), tissue {r.tissue_area_mm2:.2f} mm2"
            f"{' [measured]' if r.measured else ''}{'; ' + figures if figures else ''}"
        )
    for name, jr in prep.join_reports.items():
        print(f"{name}: {jr.summary()}")
    print(f"{args.manifest}: OK")


def cmd_viewer(args: argparse.Namespace) -> None:
    home = _set_home(args.home)
    from dash_app.app import run_viewer

    run_viewer(home, host=args.host, port=args.port)


CODE_LOCATION = "asign"
WORKSPACE_YAML = f"""# written by `asign ui`: the code location, named {CODE_LOCATION!r} in the UI
load_from:
  - python_module:
      module_name: asign_assets.definitions
      location_name: {CODE_LOCATION}
"""


def _ui_commands(args: argparse.Namespace) -> list[list[str]]:
    workspace = Path(os.environ["DAGSTER_HOME"]) / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    cmds = [[sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]]
    if not args.no_viewer:
        cmds.append([sys.executable, "-m", "dash_app", "--host", args.host, "--port", str(args.viewer_port)])
    return cmds


UI_STOP_TIMEOUT_S = 10.0


def run_children(cmds: list[list[str]], stop_timeout: float = UI_STOP_TIMEOUT_S) -> int:
    """Run ``cmds`` in their own sessions until SIGINT/SIGTERM/SIGHUP or one exits; stop all."""
    from asign_assets.runtime.proctree import ChildGroup

    group = ChildGroup()
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        for cmd in cmds:
            group.start(cmd)
        while not stopping.is_set() and group.first_exited() is None:
            stopping.wait(0.5)
    finally:
        exited = group.first_exited()
        survivors = group.stop(stop_timeout)
    if survivors:
        print(f"asign: error: processes {survivors} did not stop within {stop_timeout:.0f} s", file=sys.stderr)
        return 1
    if received:
        print(f"asign: stopped on {signal.Signals(received[0]).name}; every child process ended", file=sys.stderr)
        return 0
    code = exited.returncode if exited is not None else 0
    print(f"asign: {' '.join(exited.args[1:4]) if exited is not None else 'a child'} exited with code {code}; stopped the others", file=sys.stderr)
    return 1 if code else 0


def cmd_ui(args: argparse.Namespace) -> int:
    _set_home(args.home)
    print(f"asign: Dagster UI on http://{args.host}:{args.port}, viewer on http://{args.host}:{args.viewer_port}", file=sys.stderr)
    return run_children(_ui_commands(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asign", description="Impute a 3D gene-expression volume from serial H&E sections and one or more measured ST sections (ASIGN).")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, device: bool = True) -> None:
        sp.add_argument("--home", help="storage root (default: $ASIGN_HOME or ~/.asign); DAGSTER_HOME defaults to <home>/dagster")
        if device:
            sp.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
            sp.add_argument("--encoder", help="image encoder: histology (default) or torchscript:/path/model.pt")
            sp.add_argument("--preset", help="model size preset: cpu (default), gpu, gpu-large")
            sp.add_argument("--epochs", type=int, help="override the preset's training epochs")

    def importer(sp: argparse.ArgumentParser, measured_help: str, default_id: str, z_step_um: float | None, z_help: str | None = None) -> None:
        sp.add_argument("--measured", required=True, action="append", metavar="NAME[,NAME...]",
                        help=measured_help + "; several measured sections: repeat the option or separate names by commas")
        sp.add_argument("--with-truth", action="store_true", help="attach the other sections' counts as truth (used only by evaluation)")
        sp.add_argument("--sample-id", help=f"sample id (default {default_id})")
        sp.add_argument("--out", help="manifest path (default ./<sample-id>.yaml)")
        sp.add_argument("--z-step-um", type=float, default=z_step_um, help=z_help or f"distance between consecutive sections (default {z_step_um:g})")

    d = sub.add_parser("demo", help="create a synthetic demo sample and materialise every asset")
    common(d)
    d.add_argument("--out", help="where to write the demo stack (default <home>/demo-data/<sample-id>)")
    d.add_argument("--sample-id", default="demo")
    d.add_argument("--sections", type=int, default=5)
    d.add_argument("--spots", type=int, default=220, help="approximate spots per section")
    d.add_argument("--image-px", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--replace", action="store_true", help="replace an existing sample of this id made with other settings")
    d.set_defaults(func=cmd_demo)

    h = sub.add_parser("import-her2st", help="write a manifest for a HER2ST (legacy ST) patient stack")
    h.add_argument("data_dir", help="folder with ST-cnts/, ST-spotfiles/, ST-imgs/")
    h.add_argument("--patient", required=True, help="patient letter, e.g. C")
    h.add_argument("--sections", required=True, help="comma-separated sections in stack order, e.g. C2,C3,C4,C5,C6")
    importer(h, "the section(s) whose counts are the input", "her2st_<patient>", None,
             "uniform distance between consecutive sections (default: the block layout, see asign_assets/importers/her2st.py)")
    h.add_argument("--z", help="per-section depth overrides in um, e.g. C3=116,C4=132")
    h.set_defaults(func=cmd_import_her2st)

    vi = sub.add_parser("import-visium", help="write a manifest for a stack of Visium (Space Ranger outs/) folders")
    vi.add_argument("dirs", nargs="+", metavar="DIR", help="Space Ranger outs/ folders (with spatial/), in stack order")
    importer(vi, "the section(s) whose counts are the input (folder name; the parent's for outs/)", "visium_<measured>", 10.0)
    vi.set_defaults(func=cmd_import_visium)

    r = sub.add_parser("run", help="register a manifest (or a known sample id) and materialise all its assets")
    common(r)
    r.add_argument("target", help="manifest .yaml path or registered sample id")
    r.add_argument("--replace", action="store_true", help="the sample id is registered with other content: remove its outputs and start afresh")
    r.add_argument("--force", action="store_true", help="recompute every asset, even those that are up to date")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("register", help="register a manifest and add its sample partition, without running anything")
    common(g, device=False)
    g.add_argument("manifest")
    g.set_defaults(func=cmd_register)

    v = sub.add_parser("validate", help="check a manifest and its files without writing anything")
    v.add_argument("manifest")
    v.set_defaults(func=cmd_validate)

    u = sub.add_parser("ui", help="start the Dagster webserver + daemon and the viewer")
    common(u, device=False)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.add_argument("--viewer-port", type=int, default=8050)
    u.add_argument("--no-viewer", action="store_true")
    u.set_defaults(func=cmd_ui)

    w = sub.add_parser("viewer", help="start the 3D gene-map viewer alone")
    common(w, device=False)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8050)
    w.set_defaults(func=cmd_viewer)
    return p


def main(argv: list[str] | None = None) -> int:
    global _WATCH
    args = build_parser().parse_args(argv)
    watch = _InterruptWatch() if args.command in ("run", "demo") and threading.current_thread() is threading.main_thread() else None
    message, code = None, 0
    try:
        with watch if watch is not None else contextlib.nullcontext():
            _WATCH = watch
            try:
                code = args.func(args) or 0
            except RunInterrupted as exc:
                message, code = str(exc), EXIT_INTERRUPTED
            except KeyboardInterrupt:
                message, code = "interrupted; nothing is half-written (outputs are replaced atomically)", EXIT_INTERRUPTED
            except (AsignError, ValueError, FileNotFoundError) as exc:
                if _interrupted():
                    message, code = "interrupted; nothing is half-written (outputs are replaced atomically)", EXIT_INTERRUPTED
                else:
                    message, code = f"error: {storage_error(exc) or exc}", 1
            except Exception as exc:  # noqa: BLE001 - storage failures become one line; the rest propagate
                line = storage_error(exc)
                if line is None:
                    raise
                message, code = f"error: {line}", 1
    finally:
        _WATCH = None
    if message is not None:
        print(f"asign: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
