"""The bad-input corpus: every case is generated from a small valid demo stack.

Each case copies the stack, breaks one thing, registers the broken manifest for a sample
that already has good outputs, and materialises through Dagster. A bad input must fail
with an :class:`InputError` naming the file and the problem, before anything is written:
the earlier outputs stay byte-identical and readable. Inputs that can be accepted
(greyscale, RGBA, 16-bit images; a partial spot/count match) must work. The table of
cases is docs/bad_inputs.md.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image

from asign_assets.pipeline.assets import expression, graph_3d, registrations, sections, tiles
from asign_assets.pipeline.definitions import build_definitions
from asign_assets.importers.demo import DemoConfig, make_demo_stack
from asign_assets.errors import InputError
from asign_assets.ingest.manifest import load_manifest, write_manifest
from asign_assets.storage.store import Storage

CFG = DemoConfig(n_sections=3, spots_per_section=60, image_px=320, n_genes=60)
SID = "bad"
MEASURED = "S02"  # the demo's middle section


# --------------------------------------------------------------------------- helpers


def _edit_manifest(d: Path, fn: Callable[[dict], None]) -> None:
    p = d / "manifest.yaml"
    data = yaml.safe_load(p.read_text())
    fn(data)
    p.write_text(yaml.safe_dump(data, sort_keys=False))


def _section(data: dict, name: str) -> dict:
    return next(s for s in data["sections"] if s["name"] == name)


def _read_table(p: Path) -> list[list[str]]:
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [line.split("\t") for line in raw.decode().rstrip("\n").split("\n")]


def _write_table(p: Path, rows: list[list[str]]) -> None:
    text = "\n".join("\t".join(r) for r in rows) + "\n"
    p.write_bytes(gzip.compress(text.encode(), mtime=0) if p.name.endswith(".gz") else text.encode())


def _edit_table(p: Path, fn: Callable[[list[list[str]]], list[list[str]] | None]) -> None:
    rows = _read_table(p)
    out = fn(rows)
    _write_table(p, rows if out is None else out)


def _counts(d: Path) -> Path:
    return d / "counts" / f"{MEASURED}.tsv.gz"


def _image(d: Path, name: str) -> Path:
    return d / "images" / f"{name}.jpg"


def _rgb(d: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(_image(d, name)).convert("RGB"))


def _replace_image(d: Path, name: str, im: Image.Image, suffix: str, **save) -> None:
    """Save ``im`` as images/<name><suffix> and point the manifest at it."""
    _image(d, name).unlink()
    new = d / "images" / f"{name}{suffix}"
    im.save(new, **save)
    _edit_manifest(d, lambda m: _section(m, name).__setitem__("image", f"images/{name}{suffix}"))


def _set_cell(row: int, col: int, value: str) -> Callable[[Path], None]:
    return lambda d: _edit_table(_counts(d), lambda rows: rows[row].__setitem__(col, value))


def _rename_count_rows(frac: float) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        def fn(rows):
            n = len(rows) - 1
            for r in rows[1 : 1 + int(round(frac * n))]:
                r[0] = "zz" + r[0]

        _edit_table(_counts(d), fn)

    return mutate


# ---------------------------------------------------------------- mutations (images)


def corrupt_jpeg(d: Path) -> None:
    p = _image(d, "S03")
    b = bytearray(p.read_bytes())
    b[2:400] = np.random.default_rng(0).integers(0, 256, 398, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(b))


def corrupt_jpeg_data(d: Path) -> None:
    p = _image(d, "S01")
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid : mid + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(b))


def huge_image_header(d: Path) -> None:
    """A PNG whose header claims 40000 x 40000 px (1600 Mpx, ~6400 MB as RGB): refused before decoding."""
    import struct
    import zlib

    p = d / "images" / "S03.png"
    Image.new("L", (8, 8), 128).save(p)
    b = bytearray(p.read_bytes())
    b[16:24] = struct.pack(">II", 40_000, 40_000)  # IHDR width, height
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    p.write_bytes(bytes(b))
    _image(d, "S03").unlink()
    _edit_manifest(d, lambda m: _section(m, "S03").__setitem__("image", "images/S03.png"))


def truncated_jpeg(d: Path) -> None:
    p = _image(d, MEASURED)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def zero_byte_image(d: Path) -> None:
    _image(d, "S01").write_bytes(b"")


def greyscale_jpeg(d: Path) -> None:
    Image.fromarray(_rgb(d, "S01")).convert("L").save(_image(d, "S01"), quality=92)


def rgba_png(d: Path) -> None:
    rgb = _rgb(d, MEASURED)
    alpha = np.where(rgb.min(-1) > 225, 0, 255).astype(np.uint8)  # transparent background, as exports do
    _replace_image(d, MEASURED, Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), ".png")


def grey16_png(d: Path) -> None:
    g = np.asarray(Image.fromarray(_rgb(d, "S03")).convert("L")).astype(np.uint16) * 257
    _replace_image(d, "S03", Image.fromarray(g), ".png")


def rgb16_tiff(d: Path) -> None:
    import tifffile

    rgb = _rgb(d, "S01").astype(np.uint16) * 257
    _image(d, "S01").unlink()
    tifffile.imwrite(d / "images" / "S01.tif", rgb)
    _edit_manifest(d, lambda m: _section(m, "S01").__setitem__("image", "images/S01.tif"))


def image_too_small(d: Path) -> None:
    im = Image.open(_image(d, "S03"))
    im.resize((im.width // 4, im.height // 4)).save(_image(d, "S03"), quality=92)


def blank_image(d: Path) -> None:
    Image.new("RGB", (CFG.image_px, CFG.image_px), (244, 244, 244)).save(_image(d, "S01"), quality=92)


def pure_noise_image(d: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (CFG.image_px, CFG.image_px, 3), dtype=np.uint8)
    Image.fromarray(noise).save(_image(d, "S03"), quality=92)


def unregistrable_image(d: Path) -> None:
    """Stained random blobs: tissue is found, but its shape matches no other section."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    n = CFG.image_px
    field_ = ndimage.gaussian_filter(rng.normal(size=(n, n)), 12)
    blob = field_ > np.quantile(field_, 0.6)
    rgb = np.where(blob[..., None], [200, 120, 170], [245, 245, 245]) + rng.normal(0, 8, (n, n, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(_image(d, "S03"), quality=92)


# ---------------------------------------------------------------- mutations (tables)


def truncated_counts(d: Path) -> None:
    p = _counts(d)
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])


def empty_counts(d: Path) -> None:
    _counts(d).write_bytes(b"")


def duplicate_count_spot(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: rows[6].__setitem__(0, rows[5][0]))


def duplicate_spot_table_id(d: Path) -> None:
    _edit_table(d / "spots" / f"{MEASURED}.tsv", lambda rows: rows[8].__setitem__(0, rows[7][0]))


def duplicate_gene(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: rows[0].__setitem__(3, rows[0][2]))


def spots_missing_column(d: Path) -> None:
    _edit_table(d / "spots" / f"{MEASURED}.tsv", lambda rows: [r[:2] for r in rows])


def spots_nan_coordinate(d: Path) -> None:
    _edit_table(d / "spots" / "S01.tsv", lambda rows: rows[3].__setitem__(2, "NaN"))


def truncated_spot_table(d: Path) -> None:
    p = d / "spots" / f"{MEASURED}.tsv"
    text = p.read_text()
    p.write_text(text[: text.rfind("\t") - 3])  # cut inside the last row's x_px


def transposed_counts(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: [list(col) for col in zip(*rows)])


def zero_padded_numeric_ids(d: Path) -> None:
    """Spot ids like "007" look numeric; they must stay text so spots and counts still join."""
    for p in [_counts(d), d / "spots" / f"{MEASURED}.tsv"]:
        _edit_table(p, lambda rows: [rows[0]] + [[r[0].replace("s", "")] + r[1:] for r in rows[1:]])


def counts_unknown_format(d: Path) -> None:
    _counts(d).rename(d / "counts" / "S02.xlsx")
    _edit_manifest(d, lambda m: _section(m, MEASURED).__setitem__("counts", "counts/S02.xlsx"))


def _scale_spots(name: str, factor: float) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        _edit_table(d / "spots" / f"{name}.tsv", lambda rows: [rows[0]] + [[r[0], str(float(r[1]) * factor), str(float(r[2]) * factor)] for r in rows[1:]])

    return mutate


def spots_transposed(d: Path) -> None:
    _edit_table(d / "spots" / f"{MEASURED}.tsv", lambda rows: [rows[0]] + [[r[0], r[2], r[1]] + r[3:] for r in rows[1:]])


def spots_of_another_section(d: Path) -> None:
    _edit_manifest(d, lambda m: _section(m, "S03").__setitem__("spots", "spots/S01.tsv"))


def duplicate_gene_after_quotes(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: rows[0].__setitem__(3, f' "{rows[0][2]}"'))


def fifo_counts(d: Path) -> None:
    _counts(d).unlink()
    os.mkfifo(_counts(d))


def directory_as_image(d: Path) -> None:
    _image(d, "S01").unlink()
    _image(d, "S01").mkdir()


def dev_zero_as_image(d: Path) -> None:
    _edit_manifest(d, lambda m: _section(m, "S03").__setitem__("image", "/dev/zero"))


def declared_normalised_counts(d: Path) -> None:
    _set_cell(4, 7, "2.5")(d)
    _edit_manifest(d, lambda m: m.__setitem__("checks", {"counts_normalised": True}))


# ---------------------------------------------------------------- mutations (manifests)


def no_measured(d: Path) -> None:
    _edit_manifest(d, lambda m: _section(m, MEASURED).__setitem__("measured", False))


def all_measured(d: Path) -> None:
    def fn(m):
        for s in m["sections"]:
            if not s.get("measured"):
                s["measured"] = True
                s["counts"] = s.pop("truth")

    _edit_manifest(d, fn)


def measured_panels_disjoint(d: Path) -> None:
    """S01 measured too, but its counts name other genes than S02's."""
    def fn(m):
        s = _section(m, "S01")
        s["measured"] = True
        s["counts"] = s.pop("truth")

    _edit_manifest(d, fn)
    _edit_table(d / "truth" / "S01.tsv.gz", lambda rows: [[rows[0][0]] + [f"X{g}" for g in rows[0][1:]]] + rows[1:])


def unknown_key(d: Path) -> None:
    _edit_manifest(d, lambda m: _section(m, "S03").__setitem__("stain", "H&E"))


def missing_file(d: Path) -> None:
    (d / "spots" / "S03.tsv").unlink()


def one_section(d: Path) -> None:
    _edit_manifest(d, lambda m: m.__setitem__("sections", [_section(m, MEASURED)]))


def _scale_pixel_size(factor: float) -> Callable[[Path], None]:
    def fn(m: dict) -> None:
        for s in m["sections"]:
            s["pixel_size_um"] = s["pixel_size_um"] * factor

    return lambda d: _edit_manifest(d, fn)


def same_image_twice(d: Path) -> None:
    _edit_manifest(d, lambda m: _section(m, "S03").__setitem__("image", "images/S01.jpg"))


def near_identical_image(d: Path) -> None:
    """S01 re-encoded as S03: other bytes, same slide."""
    Image.open(_image(d, "S01")).save(_image(d, "S03"), quality=80)


def identical_images_allowed(d: Path) -> None:
    same_image_twice(d)
    _edit_manifest(d, lambda m: m.__setitem__("checks", {"allow_identical_images": True}))


# Manifest files the strict loader refuses (checked by load_manifest and `asign validate`).
def _raw_manifest(edit: Callable[[str], str]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        p = d / "manifest.yaml"
        p.write_text(edit(p.read_text()))

    return mutate


yaml_alias_bomb = _raw_manifest(
    lambda t: t + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9) if i else 'lol'}]\n" for i in range(9))
)
duplicate_manifest_key = _raw_manifest(lambda t: t + "sample_id: other\n")
manifest_over_1mb = _raw_manifest(lambda t: t + "# " + "x" * (1 << 20) + "\n")


def manifest_is_fifo(d: Path) -> None:
    (d / "manifest.yaml").unlink()
    os.mkfifo(d / "manifest.yaml")


# ---------------------------------------------------------------- mutations (thin data)


def few_measured_spots(d: Path) -> None:
    _edit_table(d / "spots" / f"{MEASURED}.tsv", lambda rows: rows[:16])  # header + 15 spots


def all_spots_below_min_counts(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: [rows[0]] + [[r[0]] + [str(int(v) // 200) for v in r[1:]] for r in rows[1:]])


def all_zero_genes(d: Path) -> None:
    _edit_table(_counts(d), lambda rows: [rows[0]] + [[r[0]] + ["0"] * (len(r) - 1) for r in rows[1:]])


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """``stage`` fails with ``phrase`` and ``file`` in the message; stage "ok"/"warn" must succeed."""

    id: str
    mutate: Callable[[Path], None]
    stage: str
    file: str = ""
    phrase: str = ""
    expression_config: dict = field(default_factory=dict)
    plausibility: bool = False  # raised by prepare_sections' plausibility checks, not the loader


CASES = [
    # images
    Case("corrupt_jpeg", corrupt_jpeg, "sections", "S03.jpg", "not a readable image"),
    Case("corrupt_jpeg_data", corrupt_jpeg_data, "sections", "S01.jpg", "corrupt or truncated"),
    Case("huge_image_header", huge_image_header, "sections", "S03.png", "over the decode budget of 3000 MB"),
    Case("truncated_jpeg", truncated_jpeg, "sections", "S02.jpg", "corrupt or truncated"),
    Case("zero_byte_image", zero_byte_image, "sections", "S01.jpg", "empty (0 bytes)"),
    Case("image_far_too_small", image_too_small, "sections", "S03.tsv", "far smaller than the spot coordinates imply"),
    Case("blank_image", blank_image, "sections", "S01.jpg", "no tissue found"),
    Case("pure_noise_image", pure_noise_image, "sections", "S03.jpg", "no tissue found"),
    # count and spot tables
    Case("truncated_counts_gz", truncated_counts, "sections", "S02.tsv.gz", "corrupt or truncated gzip"),
    Case("empty_counts", empty_counts, "sections", "S02.tsv.gz", "file is empty"),
    Case("negative_counts", _set_cell(4, 7, "-3"), "sections", "S02.tsv.gz", "negative values"),
    Case("nan_counts", _set_cell(4, 7, "nan"), "sections", "S02.tsv.gz", "NaN"),
    Case("empty_count_cell", _set_cell(4, 7, ""), "sections", "S02.tsv.gz", "NaN, empty or infinite values"),
    Case("non_integer_counts", _set_cell(4, 7, "2.5"), "sections", "S02.tsv.gz", "non-integer values: 1 entry, first 2.5 at spot"),
    Case("non_numeric_counts", _set_cell(4, 7, "many"), "sections", "S02.tsv.gz", "non-numeric values"),
    Case("duplicate_spot_ids_in_counts", duplicate_count_spot, "sections", "S02.tsv.gz", "duplicate spot ids"),
    Case("duplicate_spot_ids_in_spot_table", duplicate_spot_table_id, "sections", "S02.tsv", "duplicate spot ids"),
    Case("duplicate_gene_names", duplicate_gene, "sections", "S02.tsv.gz", "duplicate gene names"),
    Case("duplicate_gene_after_quote_stripping", duplicate_gene_after_quotes, "sections", "S02.tsv.gz", "duplicate gene names (after trimming spaces and quotes)"),
    Case("spot_table_missing_columns", spots_missing_column, "sections", "S02.tsv", "missing columns"),
    Case("spot_coordinates_nan", spots_nan_coordinate, "sections", "S01.tsv", "coordinates are missing or NaN"),
    Case("truncated_spot_table", truncated_spot_table, "sections", "S02.tsv", "missing or NaN"),
    Case("transposed_counts", transposed_counts, "sections", "S02.tsv.gz", "looks transposed"),
    Case("counts_unknown_format", counts_unknown_format, "sections", "S02.xlsx", "unknown counts format"),
    Case("spots_match_counts_below_50pct", _rename_count_rows(0.6), "sections", "S02.tsv.gz", "do not match"),
    # special files: refused by type, never opened
    Case("fifo_as_counts", fifo_counts, "sections", "S02.tsv.gz", "counts file is a FIFO (named pipe), not a regular file"),
    Case("directory_as_image", directory_as_image, "sections", "S01.jpg", "image file is a directory, not a regular file"),
    Case("dev_zero_as_image", dev_zero_as_image, "sections", "/dev/zero", "image file is a character device, not a regular file"),
    # plausibility: inputs whose own data shows they are wrong
    Case("spots_in_micrometres", _scale_spots(MEASURED, 1 / 4.112731290476539), "sections", "S02.tsv", "spots lie on the tissue", plausibility=True),
    Case("spots_at_half_scale", _scale_spots(MEASURED, 0.5), "sections", "S02.tsv", "expected at least 80%", plausibility=True),
    Case("spots_transposed", spots_transposed, "sections", "S02.tsv", "the spot table looks transposed", plausibility=True),
    Case("spots_of_another_section", spots_of_another_section, "sections", "S01.tsv", "section S03: only 75.0% of 64 spots", plausibility=True),
    Case("pixel_size_10x", _scale_pixel_size(10), "sections", "bad.yaml", "(ratio 10.00, expected 0.75-1.25); a pixel size of 4.113 um would agree", plausibility=True),
    Case("pixel_size_tenth", _scale_pixel_size(0.1), "sections", "bad.yaml", "(ratio 0.10, expected 0.75-1.25); a pixel size of 4.113 um would agree", plausibility=True),
    Case("same_image_for_two_sections", same_image_twice, "sections", "S01.jpg", "sections S01 and S03 have the same image", plausibility=True),
    Case("near_identical_image", near_identical_image, "sections", "S03.jpg", "sections S01 and S03 have near-identical images", plausibility=True),
    # manifests
    Case("no_measured_section", no_measured, "sections", "bad.yaml", "no section has measured: true"),
    Case("every_section_measured", all_measured, "sections", "bad.yaml", "every section is measured"),
    Case("measured_sections_share_no_genes", measured_panels_disjoint, "expression", "S01.tsv.gz", "the measured sections share only 0 gene names"),
    Case("unknown_manifest_key", unknown_key, "sections", "bad.yaml", "unknown key(s) ['stain']"),
    Case("missing_file", missing_file, "sections", "bad.yaml", "file not found"),
    Case("one_section_stack", one_section, "sections", "bad.yaml", "at least 2 sections"),
    # data too thin
    Case("fewer_than_20_measured_spots", few_measured_spots, "sections", "S02.tsv.gz", "only 15 measured spots"),
    Case("all_spots_below_min_counts", all_spots_below_min_counts, "expression", "S02.tsv.gz", "only 0 spots have >= 100 counts"),
    Case("all_zero_genes", all_zero_genes, "expression", "S02.tsv.gz", "no gene has any counts", {"min_counts": 0}),
]
# Must work: formats that can be accepted, and a partial spot/count match (a warning).
ACCEPTED = [
    Case("greyscale_jpeg", greyscale_jpeg, "ok"),
    Case("rgba_png", rgba_png, "ok"),
    Case("grey16_png", grey16_png, "ok"),
    Case("rgb16_tiff", rgb16_tiff, "ok"),
    Case("zero_padded_numeric_ids", zero_padded_numeric_ids, "ok"),
    Case("spots_match_counts_75pct", _rename_count_rows(0.25), "warn", "S02.tsv.gz", "% of spots have counts"),
    Case("counts_declared_normalised", declared_normalised_counts, "ok"),
    Case("identical_images_allowed", identical_images_allowed, "ok"),
]
# Refused by the manifest loader itself (`asign validate`, `asign run`, the inbox sensor).
LOADER_CASES = [
    Case("yaml_alias_bomb", yaml_alias_bomb, "load", "manifest.yaml", "anchors (&x0) are not allowed"),
    Case("duplicate_manifest_key", duplicate_manifest_key, "load", "manifest.yaml", "duplicate key 'sample_id'"),
    Case("manifest_over_1mb", manifest_over_1mb, "load", "manifest.yaml", "a manifest must be at most 1048576 bytes"),
    Case("manifest_is_fifo", manifest_is_fifo, "load", "manifest.yaml", "manifest file is a FIFO (named pipe), not a regular file"),
]


# --------------------------------------------------------------------------- fixtures


def _materialise(root: Path, assets: list, expression_config: dict | None = None) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("samples", [SID])
    defs = build_definitions(storage_root=str(root), device="cpu")
    run_config = {"ops": {"expression": {"config": expression_config}}} if expression_config and expression in assets else {}
    return dg.materialize(
        assets, partition_key=SID, resources=defs.resources, instance=instance, raise_on_error=False, run_config=run_config
    )


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """(step, exception class, message) of the first user-code failure."""
    for ev in result.all_events:
        if ev.is_step_failure and ev.step_failure_data and ev.step_failure_data.error:
            err = ev.step_failure_data.error
            while err.cause is not None and "dagster" in err.cls_name.lower():
                err = err.cause
            return ev.step_key, err.cls_name, err.message
    raise AssertionError("no step failed")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under the sample folder (hidden temporaries included) -> sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base_stack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_base")
    make_demo_stack(out, CFG, sample_id=SID)
    return out


@pytest.fixture(scope="module")
def good_home(tmp_path_factory, base_stack) -> Path:
    """A storage root where sample ``bad`` has good sections, expression and registrations."""
    root = tmp_path_factory.mktemp("bad_home")
    Storage(root).register(load_manifest(base_stack / "manifest.yaml"))
    result = _materialise(root, [sections, expression, registrations])
    assert result.success
    return root


@pytest.fixture()
def case_env(tmp_path, base_stack, good_home):
    """A copy of the stack to break and a copy of the good storage root."""
    stack = tmp_path / "stack"
    shutil.copytree(base_stack, stack)
    home = tmp_path / "home"
    shutil.copytree(good_home, home)
    return stack, home


def _register_broken(stack: Path, home: Path) -> None:
    """Put the edited manifest in place of the registered one, bypassing `Storage.register`
    (which refuses new content for a sample id with outputs): an edited registration, so the
    assets themselves must catch the bad input. An invalid manifest goes in as raw YAML."""
    try:
        manifest = load_manifest(stack / "manifest.yaml")
    except InputError:
        data = yaml.safe_load((stack / "manifest.yaml").read_text())
        for s in data["sections"]:  # absolute paths, as registered manifests have
            for k in ("image", "spots", "counts", "truth"):
                if s.get(k):
                    s[k] = str((stack / s[k]).resolve())
        Storage(home).manifest_path(SID).write_text(yaml.safe_dump(data, sort_keys=False))
        return
    write_manifest(manifest, Storage(home).manifest_path(SID), relative=False)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly_and_keeps_previous_outputs(case: Case, case_env):
    stack, home = case_env
    sample = home / "samples" / SID
    before = _snapshot(sample)
    case.mutate(stack)
    _register_broken(stack, home)

    assets = [sections, expression]
    result = _materialise(home, assets, case.expression_config)
    assert not result.success
    step, cls, message = _failure(result)
    assert step == case.stage, message
    assert cls == "InputError", f"{cls}: {message}"
    assert case.file in message, message
    assert case.phrase in message, message

    after = _snapshot(sample)
    if case.stage == "sections":
        assert after == before  # nothing written, not even a temporary
    else:  # sections re-ran on valid images/spots; the failing asset is untouched
        assert {k: v for k, v in after.items() if k.startswith("expression")} == {
            k: v for k, v in before.items() if k.startswith("expression")
        }
        assert not [k for k in after if Path(k).name.startswith(".")]
    # The earlier materialisation is still readable.
    import anndata as ad

    from asign_assets.ingest import sections as sections_lib

    adata = ad.read_h5ad(sample / "expression.h5ad")
    assert adata.n_obs >= 20 and adata.n_vars > 0
    assert [r.name for r in sections_lib.load_records(sample / "sections")] == ["S01", "S02", "S03"]


def test_manifest_errors_are_raised_by_load_manifest(base_stack, tmp_path):
    """`asign validate` / `asign run` refuse a bad manifest before registering anything."""
    for case in [c for c in CASES if c.file == "bad.yaml" and not c.plausibility]:
        stack = tmp_path / case.id
        shutil.copytree(base_stack, stack)
        case.mutate(stack)
        with pytest.raises(InputError) as info:
            load_manifest(stack / "manifest.yaml")
        assert "manifest.yaml" in str(info.value) and case.phrase in str(info.value), case.id


@pytest.mark.parametrize("case", LOADER_CASES, ids=[c.id for c in LOADER_CASES])
def test_manifest_files_are_refused_by_the_loader_and_validate(case: Case, base_stack, tmp_path):
    """The strict loader refuses the file before reading it as data; `asign validate` says so in one line."""
    stack = tmp_path / "stack"
    shutil.copytree(base_stack, stack)
    case.mutate(stack)
    with pytest.raises(InputError) as info:
        load_manifest(stack / "manifest.yaml")
    assert str(stack / "manifest.yaml") in str(info.value) and case.phrase in str(info.value)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "asign_assets.cli", "validate", str(stack / "manifest.yaml")], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and case.phrase in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_acceptable_inputs_work(case: Case, case_env, caplog):
    import polars as pl

    from asign_assets.ingest import sections as sections_lib

    stack, home = case_env
    case.mutate(stack)
    Storage(home).register(load_manifest(stack / "manifest.yaml"), replace=True)
    with caplog.at_level(logging.WARNING, logger="asign_assets.readers.join"):
        result = _materialise(home, [sections, expression, registrations, tiles])
    assert result.success
    sample = home / "samples" / SID
    digest = load_manifest(stack / "manifest.yaml").digest()
    for node in ("sections", "expression", "registrations", "tiles"):  # every asset records its manifest
        assert result.asset_materializations_for_node(node)[0].metadata["manifest_digest"].value == digest
    assert set(Storage(home).provenance(SID).values()) == {digest}
    recs = sections_lib.load_records(sample / "sections")
    assert all(r.tissue_area_mm2 > 0.1 for r in recs)
    qc = pl.read_parquet(sample / "registrations" / "qc.parquet")
    assert qc["dice_after"].min() >= 0.85, qc
    import zarr

    t = zarr.open_group(str(sample / "tiles.zarr"), mode="r")
    for r in recs:
        spot = np.asarray(t[f"{r.name}/spot"][:4])
        assert spot.dtype == np.uint8 and spot.shape[-1] == 3 and spot.std() > 5  # real tissue pixels, not padding
    if case.stage == "warn":
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(case.file in w and case.phrase in w for w in warned), warned
        n_rows = len(_read_table(_counts(stack))) - 1
        renamed = sum(r[0].startswith("zz") for r in _read_table(_counts(stack)))
        assert 0.7 < 1 - renamed / n_rows < 0.9
        meta = result.asset_materializations_for_node("sections")[0].metadata
        assert f"{renamed} spot(s) without counts dropped" in meta["join_report"].value
        assert recs[1].n_spots == n_rows - renamed  # the measured section keeps only joined spots


def test_unregistrable_section_fails_the_blocking_check(case_env):
    """A random-blob image passes `sections` but cannot be registered: the Dice check fails, naming
    the section, and graph_3d (downstream of the blocking check) never starts."""
    stack, home = case_env
    unregistrable_image(stack)
    # The blobs cover less than 80% of S03's spots: waive that check to reach registration.
    _edit_manifest(stack, lambda m: m.__setitem__("checks", {"min_spots_on_tissue": 0.0}))
    Storage(home).register(load_manifest(stack / "manifest.yaml"), replace=True)
    result = _materialise(home, [sections, registrations, graph_3d])
    evals = [ev.event_specific_data for ev in result.all_events if ev.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evals) == 1 and not evals[0].passed
    assert "S03" in evals[0].description and "registration failed" in evals[0].description
    assert "S01" not in evals[0].description
    started = {ev.step_key for ev in result.all_events if ev.event_type_value == "STEP_START"}
    assert "registrations" in started and "graph_3d" not in started
    assert not result.success


def test_doc_lists_every_case():
    """docs/bad_inputs.md's generated table is rewritten by tests/bad_inputs_doc.py."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "bad_inputs.md").read_text()
    missing = [c.id for c in CASES + LOADER_CASES + ACCEPTED if f"| `{c.id}` |" not in doc]
    assert not missing, f"run `PYTHONPATH=. python tests/bad_inputs_doc.py`; missing {missing}"
