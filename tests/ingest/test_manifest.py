from pathlib import Path

import pytest
import yaml

from asign_assets.errors import InputError
from asign_assets.ingest.manifest import load_manifest, measured_names, reference_position, write_manifest


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
    assert [s.name for s in m.measured_sections] == ["A"] and m.measured_indices == (0,) and m.reference_index == 0
    assert m.sections[1].image == (tmp_path / "b.jpg").resolve()
    assert m.sections[1].truth == (tmp_path / "truth.tsv").resolve()
    assert m.sections[2].pixel_size_um == 0.5
    assert m.without_truth().sections[1].truth is None
    # truth does not change the input fingerprint
    assert m.input_fingerprint() == m.without_truth().input_fingerprint()


def test_several_measured_sections(tmp_path):
    data = _base()
    data["sections"][2].update(measured=True, counts="counts.tsv", spots="spots.tsv")
    m = load_manifest(_write(tmp_path, data))
    assert m.measured_indices == (0, 2) and [s.name for s in m.measured_sections] == ["A", "C"]
    assert all(s.counts == (tmp_path / "counts.tsv").resolve() for s in m.measured_sections)
    assert m.reference_index == 0  # A (z 0) and C (z 20) are equally far from the middle (10): the first wins
    m2 = load_manifest(write_manifest(m, tmp_path / "copy.yaml"))
    assert m2.measured_indices == (0, 2)


@pytest.mark.parametrize(
    "z, measured, ref",
    [([0, 10, 20, 30, 40], [True, False, False, True, False], 3), ([0, 10, 20], [False, False, True], 2), ([0, 5, 50], [True, True, False], 1)],
)
def test_reference_is_the_measured_section_nearest_the_middle(z, measured, ref):
    assert reference_position(z, measured) == ref


def test_measured_names_accepts_several_in_stack_order():
    assert measured_names(["C6", "C2"], ["C2", "C3", "C6"]) == ["C2", "C6"]
    assert measured_names("C3", ["C2", "C3"]) == ["C3"]
    with pytest.raises(InputError, match="'C9' is not among"):
        measured_names(["C2", "C9"], ["C2", "C3"])
    with pytest.raises(InputError, match="every section"):
        measured_names(["C2", "C3"], ["C2", "C3"])


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
        (lambda d: [s.update(measured=True, counts="counts.tsv", truth=None) for s in d["sections"]], "measured", "every section is measured"),
        (lambda d: d["sections"][1].update(measured=True, truth=None), "sections[1].counts", "measured section B needs its counts"),
        (lambda d: d["sections"][1].update(name="A"), "sections[1].name", "duplicate section name"),
        (lambda d: d.update(colour="red"), "colour", "unknown key"),
        (lambda d: d["sections"][2].update(thickness=5), "sections[2].thickness", "unknown key"),
        (lambda d: d.update(sections=d["sections"][:1]), "sections", "at least 2 sections"),
        (lambda d: d.pop("spot_pitch_um"), "spot_pitch_um", "required"),
        (lambda d: d.update(pixel_size_um=-1), "pixel_size_um", "positive"),
        (lambda d: d["sections"][0].pop("counts"), "sections[0].counts", "needs its counts"),
        (lambda d: d["sections"][1].update(counts="counts.tsv"), "sections[1].counts", "only a section with measured: true may give counts"),
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


def test_pixel_size_from_the_image_file_when_the_manifest_has_none(tmp_path, monkeypatch):
    """Without pixel_size_um the image's own metadata is asked (asign_assets.readers.slide), then the error."""
    data = _base()
    data.pop("pixel_size_um")
    data["sections"][0]["pixel_size_um"] = 0.5
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=r"sections\[1\].pixel_size_um': no pixel size"):
        load_manifest(path)  # the placeholder files record no pixel size
    fake = lambda p: (0.25, "TIFF resolution") if p.name == "b.jpg" else None  # noqa: E731
    monkeypatch.setattr("asign_assets.ingest.manifest.file_pixel_size_um", fake)
    with pytest.raises(InputError, match=r"sections\[2\].pixel_size_um': no pixel size"):
        load_manifest(path)
    data["sections"][2]["pixel_size_um"] = 0.5
    m = load_manifest(_write(tmp_path, data))
    b = m.sections[1]
    assert b.pixel_size_um == 0.25 and b.pixel_size_source == "image metadata (TIFF resolution)"
    assert m.sections[0].pixel_size_source == "manifest"
    # a size read from the file is not written back: loading again reads it again
    copy = write_manifest(m, tmp_path / "copy.yaml")
    assert "pixel_size_um" not in yaml.safe_load(copy.read_text())["sections"][1]
    assert load_manifest(copy).sections == m.sections
