from pathlib import Path

import pytest
import yaml

from asign_assets.errors import InputError
from asign_assets.manifest import load_manifest, write_manifest


def _write(tmp_path: Path, data: dict) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg", "spots.tsv", "counts.tsv", "truth.tsv"):
        (tmp_path / name).write_text("x")
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return {
        "sample_id": "s1",
        "pixel_size_um": 0.5,
        "spot_diameter_um": 55,
        "spot_pitch_um": 100,
        "sections": [
            {"name": "A", "z_um": 0, "image": "a.jpg", "spots": "spots.tsv", "counts": "counts.tsv", "measured": True},
            {"name": "B", "z_um": 10, "image": "b.jpg", "truth": "truth.tsv"},
            {"name": "C", "z_um": 20, "image": "c.jpg"},
        ],
    }


def test_valid_manifest_resolves_paths_relative_to_file(tmp_path):
    m = load_manifest(_write(tmp_path, _base()))
    assert m.sample_id == "s1"
    assert m.measured.name == "A" and m.measured_index == 0
    assert m.sections[1].image == (tmp_path / "b.jpg").resolve()
    assert m.sections[1].truth == (tmp_path / "truth.tsv").resolve()
    assert m.sections[2].pixel_size_um == 0.5
    assert m.without_truth().sections[1].truth is None
    # truth does not change the input fingerprint
    assert m.input_fingerprint() == m.without_truth().input_fingerprint()


def test_round_trip(tmp_path):
    m = load_manifest(_write(tmp_path, _base()))
    out = write_manifest(m, tmp_path / "sub" / "copy.yaml")
    m2 = load_manifest(out)
    assert m2.sections == m.sections and m2.sample_id == m.sample_id


@pytest.mark.parametrize(
    "mutate, field, problem",
    [
        (lambda d: d["sections"][0].update(image="missing.jpg"), "sections[0].image", "file not found"),
        (lambda d: d["sections"][0].pop("measured"), "measured", "no section has measured"),
        (lambda d: d["sections"][1].update(measured=True, counts="counts.tsv", truth=None), "measured", "2 sections are measured"),
        (lambda d: d["sections"][1].update(name="A"), "sections[1].name", "duplicate section name"),
        (lambda d: d.update(colour="red"), "colour", "unknown key"),
        (lambda d: d["sections"][2].update(thickness=5), "sections[2].thickness", "unknown key"),
        (lambda d: d.update(sections=d["sections"][:1]), "sections", "at least 2 sections"),
        (lambda d: d.pop("spot_pitch_um"), "spot_pitch_um", "required"),
        (lambda d: d.update(pixel_size_um=-1), "pixel_size_um", "positive"),
        (lambda d: d["sections"][0].pop("counts"), "sections[0].counts", "needs its counts"),
        (lambda d: d["sections"][1].update(counts="counts.tsv"), "sections[1].counts", "only the measured section"),
        (lambda d: d.update(sample_id="../evil"), "sample_id", "must be"),
        (lambda d: d["sections"][2].update(z_um=10), "z_um", "distinct"),
    ],
)
def test_manifest_errors_name_file_and_field(tmp_path, mutate, field, problem):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as exc:
        load_manifest(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert field in msg
    assert problem in msg


def test_missing_manifest_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample_id: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_manifest(bad)
