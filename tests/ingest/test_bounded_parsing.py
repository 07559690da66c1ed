"""Bounded parsing: the strict manifest loader and the regular-file check."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from asign_assets.ingest import strict_yaml
from asign_assets.errors import InputError
from asign_assets.readers.images import read_image_size
from asign_assets.ingest.manifest import MAX_MANIFEST_BYTES, load_manifest
from asign_assets.readers.paths import require_regular_file
from asign_assets.readers.counts import read_counts
from asign_assets.readers.spots import read_spots

MANIFEST = """\
sample_id: {sid}
pixel_size_um: 0.5
spot_diameter_um: 55
spot_pitch_um: 100
sections:
  - {{name: {a}, z_um: 0, image: a.jpg, spots: spots.tsv, counts: counts.tsv, measured: true}}
  - {{name: {b}, z_um: 10, image: b.jpg}}
"""

BOMB = textwrap.dedent(
    """\
    a: &a ["x","x","x","x","x","x","x","x","x"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """
)


def _stack(tmp_path: Path, text: str) -> Path:
    for name in ("a.jpg", "b.jpg", "spots.tsv", "counts.tsv"):
        (tmp_path / name).write_text("x")
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_ids_and_names_stay_as_written(tmp_path):
    m = load_manifest(_stack(tmp_path, MANIFEST.format(sid="010", a="on", b="1.10")))
    assert m.sample_id == "010"  # YAML 1.1 would give 8
    assert m.section_names == ["on", "1.10"]  # not True, not 1.1


def test_yaml_11_coercions_are_gone():
    data = strict_yaml.load("a: 010\nb: on\nc: 1:20\nd: yes\ne: 2024-01-01\nf: 0.5\ng: 12\nh: true\ni: ~\nj: 1e3\n")
    assert data == {"a": "010", "b": "on", "c": "1:20", "d": "yes", "e": "2024-01-01", "f": 0.5, "g": 12, "h": True, "i": None, "j": 1000.0}


def test_duplicate_key_is_an_error(tmp_path):
    text = MANIFEST.format(sid="s1", a="A", b="B") + "sample_id: other\n"
    with pytest.raises(InputError, match="duplicate key 'sample_id'") as info:
        load_manifest(_stack(tmp_path, text))
    assert str(tmp_path / "m.yaml") in str(info.value)


def test_anchors_and_aliases_are_refused(tmp_path):
    text = MANIFEST.format(sid="s1", a="A", b="B").replace("pixel_size_um: 0.5", "pixel_size_um: &px 0.5\ndescription: *px")
    with pytest.raises(InputError, match="anchors"):
        load_manifest(_stack(tmp_path, text))
    with pytest.raises(yaml.YAMLError, match="aliases"):
        strict_yaml.load("a: *x\n")


def test_billion_laughs_is_refused_within_bounded_memory(tmp_path):
    """The 1 KB bomb is refused in a child capped at 1 GB of address space (safe_load would need ~40 GB)."""
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert p.stat().st_size < 1024
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from asign_assets.ingest.manifest import load_manifest
        from asign_assets.errors import InputError
        try:
            load_manifest({str(p)!r})
        except InputError as exc:
            print(exc)
            sys.exit(0)
        sys.exit(3)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "anchors (&a) are not allowed" in out.stdout


def test_deep_nesting_and_size_are_bounded(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError, match="nesting deeper than 64"):
        load_manifest(deep)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_MANIFEST_BYTES + "\n")
    with pytest.raises(InputError, match=f"at most {MAX_MANIFEST_BYTES} bytes"):
        load_manifest(big)


def test_special_files_are_refused_by_type(tmp_path):
    fifo = tmp_path / "counts.tsv"
    os.mkfifo(fifo)
    folder = tmp_path / "image.jpg"
    folder.mkdir()
    # Each would block or mislead if opened: the check must not open it.
    with pytest.raises(InputError, match=r"counts file is a FIFO \(named pipe\), not a regular file"):
        read_counts(fifo)
    with pytest.raises(InputError, match="spot table is a FIFO"):
        read_spots(fifo)
    with pytest.raises(InputError, match="image file is a directory, not a regular file"):
        read_image_size(folder)
    with pytest.raises(InputError, match="image file is a character device"):
        read_image_size(Path("/dev/zero"))
    with pytest.raises(InputError, match="manifest file is a FIFO"):
        load_manifest(fifo)
    with pytest.raises(InputError, match="does not exist"):
        require_regular_file(tmp_path / "nope.tsv")
    link = tmp_path / "link.tsv"
    link.symlink_to(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        require_regular_file(link)


def test_fifo_counts_do_not_hang_validate(tmp_path):
    """`asign validate` on a manifest whose counts are a FIFO exits at once with the reason."""
    from asign_assets.importers.demo import DemoConfig, make_demo_stack

    stack = make_demo_stack(tmp_path / "stack", DemoConfig(n_sections=2, spots_per_section=40, image_px=200, n_genes=20), sample_id="f")
    data = yaml.safe_load(stack.manifest_path.read_text())
    measured = next(s for s in data["sections"] if s.get("measured"))
    counts = stack.manifest_path.parent / measured["counts"]
    counts.unlink()
    os.mkfifo(counts)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "asign_assets.cli", "validate", str(stack.manifest_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode == 1
    assert "is a FIFO (named pipe), not a regular file" in out.stderr
    assert str(counts) in out.stderr
