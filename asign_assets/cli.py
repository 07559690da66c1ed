"""The `asign` command: demo, import, run, ui, viewer, validate."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from asign_assets.errors import AsignError


def _set_home(home: str | None) -> str:
    """ASIGN_HOME from the flag or the environment; DAGSTER_HOME defaults under it."""
    from asign_assets.storage import default_home

    if home:
        os.environ["ASIGN_HOME"] = str(Path(home).expanduser().resolve()) if "://" not in home else home
    asign_home = default_home()
    local = asign_home if "://" not in asign_home else str(Path("~/.asign").expanduser())
    os.environ.setdefault("DAGSTER_HOME", str(Path(local) / "dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return asign_home


def _run_config(args: argparse.Namespace) -> dict:
    ops: dict = {}
    if getattr(args, "encoder", None):
        ops["embeddings"] = {"config": {"encoder": args.encoder}}
    if getattr(args, "preset", None):
        ops["model"] = {"config": {"preset": args.preset}}
    if getattr(args, "epochs", None):
        ops.setdefault("model", {"config": {}})["config"]["epochs"] = args.epochs
    return {"ops": ops} if ops else {}


def materialise_sample(manifest_or_id: str, device: str = "auto", run_config: dict | None = None) -> str:
    """Register the sample, add its partition and run every asset through Dagster."""
    import dagster as dg

    from asign_assets.definitions import build_definitions
    from asign_assets.manifest import load_manifest
    from asign_assets.storage import Storage

    storage = Storage()
    candidate = Path(manifest_or_id).expanduser()
    if candidate.suffix.lower() in (".yaml", ".yml") or candidate.exists():
        manifest = load_manifest(candidate)
        storage.register(manifest)
        sample_id = manifest.sample_id
    else:
        sample_id = manifest_or_id
        storage.load_registered(sample_id)  # clear error if unknown
    defs = build_definitions(storage_root=storage.root, device=device)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("samples", [sample_id])
    job = defs.resolve_job_def("full_sample")
    print(f"asign: materialising sample {sample_id!r} (storage {storage.root}, device {device})", file=sys.stderr)
    t0 = time.perf_counter()
    result = job.execute_in_process(partition_key=sample_id, instance=instance, raise_on_error=False, run_config=run_config or {})
    if not result.success:
        messages = []
        for ev in result.all_events:
            if ev.is_step_failure and ev.step_failure_data and ev.step_failure_data.error:
                err = ev.step_failure_data.error
                while err.cause is not None and "dagster" in err.cls_name.lower():
                    err = err.cause
                messages.append(f"{ev.step_key}: {err.message.strip()}")
            elif ev.event_type_value == "ASSET_CHECK_EVALUATION":
                data = ev.event_specific_data
                if data is not None and not data.passed:
                    messages.append(f"check {data.check_name} failed on {data.asset_key.to_user_string()}: {data.description or ''}")
        raise AsignError("run failed:\n  " + "\n  ".join(messages or ["see the Dagster logs above"]))
    print(f"asign: sample {sample_id!r} done in {time.perf_counter() - t0:.1f} s; outputs in {storage.sample_uri(sample_id)}", file=sys.stderr)
    return sample_id


def cmd_demo(args: argparse.Namespace) -> None:
    from asign_assets.demo import DemoConfig, make_demo_stack
    from asign_assets.storage import default_local_state

    home = _set_home(args.home)
    out = Path(args.out) if args.out else Path(default_local_state()) / "demo-data" / args.sample_id
    cfg = DemoConfig(n_sections=args.sections, spots_per_section=args.spots, image_px=args.image_px, seed=args.seed)
    t0 = time.perf_counter()
    stack = make_demo_stack(out, cfg, sample_id=args.sample_id)
    print(f"asign: demo stack of {cfg.n_sections} sections written to {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    materialise_sample(str(stack.manifest_path), device=args.device, run_config=_run_config(args))
    print(f"asign: open the viewer with `asign viewer` (ASIGN_HOME={home})", file=sys.stderr)
    print(stack.manifest_path)


def cmd_import_her2st(args: argparse.Namespace) -> None:
    from asign_assets.her2st import manifest_from_her2st

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    out = Path(args.out) if args.out else Path.cwd() / f"{args.sample_id or 'her2st_' + args.patient}.yaml"
    path, report = manifest_from_her2st(
        Path(args.data_dir), patient=args.patient, sections=sections, measured=args.measured,
        with_truth=args.with_truth, sample_id=args.sample_id, out=out, z_step_um=args.z_step_um,
    )
    for line in report:
        print(f"asign: {line}", file=sys.stderr)
    print(path)


def cmd_run(args: argparse.Namespace) -> None:
    _set_home(args.home)
    materialise_sample(args.target, device=args.device, run_config=_run_config(args))


def cmd_register(args: argparse.Namespace) -> None:
    """Register a manifest and add its partition, for runs launched elsewhere (`dagster job execute`)."""
    import dagster as dg

    from asign_assets.manifest import load_manifest
    from asign_assets.storage import Storage

    _set_home(args.home)
    manifest = load_manifest(args.manifest)
    Storage().register(manifest)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("samples", [manifest.sample_id])
    print(manifest.sample_id)


def cmd_validate(args: argparse.Namespace) -> None:
    from asign_assets.manifest import load_manifest
    from asign_assets.sections import prepare_sections

    manifest = load_manifest(args.manifest)
    prep = prepare_sections(manifest)
    for r in prep.records:
        print(f"{r.name}: {r.n_spots} spots ({r.n_virtual} virtual), tissue {r.tissue_area_mm2:.2f} mm2{' [measured]' if r.measured else ''}")
    if prep.join_report:
        print(prep.join_report.summary())
    print(f"{args.manifest}: OK")


def _viewer_proc(host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dash_app", "--host", host, "--port", str(port)])


def cmd_viewer(args: argparse.Namespace) -> None:
    home = _set_home(args.home)
    from dash_app.app import run_viewer

    run_viewer(home, host=args.host, port=args.port)


def cmd_ui(args: argparse.Namespace) -> None:
    _set_home(args.home)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "asign_assets.definitions", "-h", args.host, "-p", str(args.port)],
        )
    ]
    if not args.no_viewer:
        procs.append(_viewer_proc(args.host, args.viewer_port))
    print(f"asign: Dagster UI on http://{args.host}:{args.port}, viewer on http://{args.host}:{args.viewer_port}", file=sys.stderr)

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asign", description="Impute a 3D gene-expression volume from serial H&E sections and one measured ST section (ASIGN).")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, device: bool = True) -> None:
        sp.add_argument("--home", help="storage root (default: $ASIGN_HOME or ~/.asign); DAGSTER_HOME defaults to <home>/dagster")
        if device:
            sp.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
            sp.add_argument("--encoder", help="image encoder: histology (default) or torchscript:/path/model.pt")
            sp.add_argument("--preset", help="model size preset: cpu (default), gpu, gpu-large")
            sp.add_argument("--epochs", type=int, help="override the preset's training epochs")

    d = sub.add_parser("demo", help="create a synthetic demo sample and materialise every asset")
    common(d)
    d.add_argument("--out", help="where to write the demo stack (default <home>/demo-data/<sample-id>)")
    d.add_argument("--sample-id", default="demo")
    d.add_argument("--sections", type=int, default=5)
    d.add_argument("--spots", type=int, default=220, help="approximate spots per section")
    d.add_argument("--image-px", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    h = sub.add_parser("import-her2st", help="write a manifest for a HER2ST (legacy ST) patient stack")
    h.add_argument("data_dir", help="folder with ST-cnts/, ST-spotfiles/, ST-imgs/")
    h.add_argument("--patient", required=True, help="patient letter, e.g. C")
    h.add_argument("--sections", required=True, help="comma-separated sections in stack order, e.g. C2,C3,C4,C5,C6")
    h.add_argument("--measured", required=True, help="the section whose counts are the input")
    h.add_argument("--with-truth", action="store_true", help="attach the other sections' counts as truth (used only by evaluation)")
    h.add_argument("--sample-id", help="sample id (default her2st_<patient>)")
    h.add_argument("--out", help="manifest path (default ./<sample-id>.yaml)")
    h.add_argument("--z-step-um", type=float, default=16.0, help="distance between consecutive sections (default 16)")
    h.set_defaults(func=cmd_import_her2st)

    r = sub.add_parser("run", help="register a manifest (or a known sample id) and materialise all its assets")
    common(r)
    r.add_argument("target", help="manifest .yaml path or registered sample id")
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
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (AsignError, ValueError, FileNotFoundError) as exc:
        print(f"asign: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
