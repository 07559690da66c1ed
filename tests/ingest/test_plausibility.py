"""Plausibility checks on small synthetic sections: each check passes a good input and
refuses the realistic mistake with the measured figure and the expected range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from asign_assets.ingest import plausibility as pl_
from asign_assets.readers.counts import check_count_values
from asign_assets.errors import InputError
from asign_assets.ingest.manifest import Checks, Manifest, SectionSpec

PX = 2.0  # um per px
PITCH = 100.0  # um


def _square_lattice(n_side: int, origin: float = 100.0, pitch_px: float = PITCH / PX) -> np.ndarray:
    g = np.arange(n_side) * pitch_px + origin
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], 1)


def _section(tmp_path: Path, name: str, thumb: np.ndarray, px: float = PX) -> SectionSpec:
    img = tmp_path / f"{name}.png"
    Image.fromarray(thumb).save(img)
    return SectionSpec(name=name, z_um=0.0, image=img, pixel_size_um=px, spots=tmp_path / f"{name}.tsv")


def _manifest(tmp_path: Path, specs: list[SectionSpec], checks: Checks = Checks()) -> Manifest:
    return Manifest(sample_id="p", path=tmp_path / "m.yaml", spot_diameter_um=55.0, spot_pitch_um=PITCH,
                    sections=tuple(specs), checks=checks)


def _tissue_thumb(seed: int, size: int = 200, lo: int = 20, hi: int = 180) -> tuple[np.ndarray, np.ndarray]:
    """A white slide with a pink textured square of tissue over [lo, hi) (thumbnail = full res)."""
    rng = np.random.default_rng(seed)
    thumb = np.full((size, size, 3), 245, np.uint8)
    tissue = rng.integers(120, 200, size=(hi - lo, hi - lo, 3)).astype(np.uint8)
    tissue[..., 2] = 190
    thumb[lo:hi, lo:hi] = tissue
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return thumb, mask


def _evidence(spec: SectionSpec, thumb, mask, xy, index: int = 0, scale: float = 1.0) -> pl_.SectionEvidence:
    return pl_.SectionEvidence(index=index, spec=spec, thumb=thumb, thumb_scale=scale, mask=mask, xy_px=xy, spots_source=spec.spots)


def test_spots_on_tissue_passes_good_and_refuses_transposed(tmp_path):
    thumb, mask = _tissue_thumb(0)
    mask[:, 100:] = False  # tissue only on the left: transposing moves spots off it
    spec = _section(tmp_path, "A", thumb)
    xy = _square_lattice(3, origin=30.0, pitch_px=25.0)  # x 30..80, y 30..80
    xy[:, 1] *= 2  # y 60..160: tall, narrow pattern on the left
    assert pl_.check_spots_on_tissue(_evidence(spec, thumb, mask, xy), 0.8) == 1.0
    with pytest.raises(InputError) as info:
        pl_.check_spots_on_tissue(_evidence(spec, thumb, mask, xy[:, ::-1]), 0.8)
    msg = str(info.value)
    assert str(spec.spots) in msg and "field 'x_px, y_px'" in msg
    assert "only 33.3% of 9 spots lie on the tissue" in msg and "expected at least 80%" in msg


def test_transposed_spots_on_nearly_symmetric_tissue_are_refused(tmp_path):
    """Most transposed spots stay on a near-square tissue (above 80%); the swap still fits better."""
    thumb = np.full((100, 100, 3), 245, np.uint8)
    mask = np.ones((100, 100), bool)
    mask[:25, 55:] = False  # a notch at the top right: 11% of the square
    grid = np.stack(np.meshgrid(np.arange(2.0, 100, 4), np.arange(2.0, 100, 4)), -1).reshape(-1, 2)
    xy = grid[mask[grid[:, 1].astype(int), grid[:, 0].astype(int)]]  # spots over the tissue only
    spec = _section(tmp_path, "A", thumb)
    assert pl_.check_spots_on_tissue(_evidence(spec, thumb, mask, xy), 0.8) == 1.0
    frac_t = pl_.spot_coverage(mask, 1.0, xy[:, ::-1])
    assert 0.8 < frac_t < 0.9  # the plain threshold alone would let it pass
    with pytest.raises(InputError, match=r"x\s+and y swapped|looks transposed") as info:
        pl_.check_spots_on_tissue(_evidence(spec, thumb, mask, xy[:, ::-1]), 0.8)
    assert "100.0% on tissue against" in str(info.value)


def test_pitch_agrees_and_wrong_pixel_size_is_refused_with_a_suggestion(tmp_path):
    thumb, mask = _tissue_thumb(0)
    xy = _square_lattice(4)  # 50 px apart = 100 um at 2 um/px
    good = _section(tmp_path, "A", thumb, px=PX)
    m = _manifest(tmp_path, [good])
    assert pl_.check_pitch(_evidence(good, thumb, mask, xy), m, 0.25) == pytest.approx(1.0)
    wrong = _section(tmp_path, "A", thumb, px=PX * 10)
    with pytest.raises(InputError) as info:
        pl_.check_pitch(_evidence(wrong, thumb, mask, xy, index=1), m, 0.25)
    msg = str(info.value)
    assert str(m.path) in msg and "field 'sections[1].pixel_size_um'" in msg
    assert "50.0 px apart" in msg and "1000.0 um at pixel_size_um 20" in msg
    assert "ratio 10.00, expected 0.75-1.25" in msg and "a pixel size of 2 um would agree" in msg
    # Within tolerance: 20% off passes.
    assert pl_.check_pitch(_evidence(_section(tmp_path, "A", thumb, px=PX * 1.2), thumb, mask, xy), m, 0.25) == pytest.approx(1.2)


def test_tissue_area_must_match_what_the_spots_tile(tmp_path):
    thumb, mask = _tissue_thumb(0)
    spec = _section(tmp_path, "A", thumb)
    m = _manifest(tmp_path, [spec])
    xy = _square_lattice(10)  # 100 spots -> 100 * (0.01 mm2 * 0.933) = 0.933 mm2
    ev = _evidence(spec, thumb, mask, xy)
    assert pl_.check_tissue_area(ev, m, 0.933) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(InputError, match=r"measures 93.3 mm2 .* 100 spots at 100 um pitch tile 0.933 mm2 \(ratio 100.00, expected 0.4-8\)"):
        pl_.check_tissue_area(ev, m, 93.3)
    with pytest.raises(InputError, match=r"ratio 0.01"):
        pl_.check_tissue_area(ev, m, 0.00933)


def test_identical_and_near_identical_images_are_refused(tmp_path):
    a_thumb, mask = _tissue_thumb(1)
    b_thumb, _ = _tissue_thumb(2, lo=40, hi=190)  # another slide: tissue elsewhere
    a = _section(tmp_path, "A", a_thumb)
    b = _section(tmp_path, "B", b_thumb)
    diffs = pl_.check_distinct_images([_evidence(a, a_thumb, mask, None), _evidence(b, b_thumb, mask, None, index=1)])
    assert diffs[("A", "B")] > 10
    # The same file content under two names.
    same = tmp_path / "B_copy.png"
    same.write_bytes(a.image.read_bytes())
    b_same = SectionSpec(name="B", z_um=1.0, image=same, pixel_size_um=PX)
    with pytest.raises(InputError, match=r"sections A and B have the same image \(identical file content") as info:
        pl_.check_distinct_images([_evidence(a, a_thumb, mask, None), _evidence(b_same, a_thumb, mask, None, index=1)])
    assert str(same) in str(info.value) and "sections[1].image" in str(info.value)
    # A re-encoded copy (JPEG) differs in bytes but not in content.
    jpg = tmp_path / "B.jpg"
    Image.fromarray(a_thumb).save(jpg, quality=90)
    b_jpg = SectionSpec(name="B", z_um=1.0, image=jpg, pixel_size_um=PX)
    b_jpg_thumb = np.asarray(Image.open(jpg).convert("RGB"))
    with pytest.raises(InputError, match=r"near-identical images \(mean grey difference 1\.\d\d of 255 .* expected at least 2"):
        pl_.check_distinct_images([_evidence(a, a_thumb, mask, None), _evidence(b_jpg, b_jpg_thumb, mask, None, index=1)])


def test_check_sections_honours_the_manifest_flags(tmp_path):
    thumb, mask = _tissue_thumb(1)
    a = _section(tmp_path, "A", thumb)
    copy = tmp_path / "A2.png"
    copy.write_bytes(a.image.read_bytes())
    b = SectionSpec(name="B", z_um=1.0, image=copy, pixel_size_um=PX)
    xy = _square_lattice(3, origin=40.0)
    evs = [_evidence(a, thumb, mask, xy), _evidence(b, thumb, mask, None, index=1)]
    tissue = {"A": 9 * 0.01 * 0.933, "B": 1.0}
    with pytest.raises(InputError, match="same image"):
        pl_.check_sections(_manifest(tmp_path, [a, b]), evs, tissue)
    figures = pl_.check_sections(_manifest(tmp_path, [a, b], Checks(allow_identical_images=True)), evs, tissue)
    assert figures["A"]["spots_on_tissue"] == 1.0 and figures["A"]["pitch_ratio"] == pytest.approx(1.0)
    assert figures["B"] == {}  # a virtual lattice is not checked against itself
    off = xy + 200  # every spot off the mask
    with pytest.raises(InputError, match="only 0.0% of 9 spots"):
        pl_.check_sections(_manifest(tmp_path, [a, b], Checks(allow_identical_images=True)), [_evidence(a, thumb, mask, off), evs[1]], tissue)
    figures = pl_.check_sections(
        _manifest(tmp_path, [a, b], Checks(allow_identical_images=True, min_spots_on_tissue=0.0)), [_evidence(a, thumb, mask, off), evs[1]], tissue
    )
    assert figures["A"]["spots_on_tissue"] == 0.0


@pytest.mark.parametrize(
    "value, what",
    [(np.nan, "NaN, empty or infinite values"), (np.inf, "NaN, empty or infinite values"), (-3.0, "negative values"), (2.5, "non-integer values")],
)
def test_count_values_name_the_row_and_column(value, what):
    dense = np.array([[1, 0, 2], [0, 4, 0], [5, 0, 6]], dtype=np.float32)
    dense[1, 2] = value
    X = sp.csr_matrix(dense)
    ids = np.array(["s1", "s2", "s3"], dtype=object)
    genes = np.array(["G1", "G2", "G3"], dtype=object)
    with pytest.raises(InputError) as info:
        check_count_values(X, ids, genes, Path("/data/c.tsv"), normalised=False)
    msg = str(info.value)
    assert msg.startswith("/data/c.tsv: field 'row 2, column 'G3''")
    assert what in msg and "spot 's2' (data row 2), gene 'G3' (gene column 3)" in msg


def test_normalised_counts_are_accepted_when_declared():
    X = sp.csr_matrix(np.array([[0.5, 1.25], [0.0, 3.0]], dtype=np.float32))
    ids, genes = np.array(["a", "b"], dtype=object), np.array(["G1", "G2"], dtype=object)
    with pytest.raises(InputError, match="set checks.counts_normalised: true"):
        check_count_values(X, ids, genes, Path("c.tsv"))
    check_count_values(X, ids, genes, Path("c.tsv"), normalised=True)
    X2 = sp.csr_matrix(np.array([[-0.5, 1.25], [0.0, 3.0]], dtype=np.float32))  # negative stays an error
    with pytest.raises(InputError, match="negative values"):
        check_count_values(X2, ids, genes, Path("c.tsv"), normalised=True)


def test_duplicate_gene_names_after_trimming_quotes_and_spaces(tmp_path):
    from asign_assets.readers.counts import read_counts

    p = tmp_path / "c.tsv"
    p.write_text('spot\t"ERBB2"\tGAPDH\t ERBB2 \nA\t1\t2\t3\nB\t4\t5\t6\n')
    with pytest.raises(InputError, match=r"duplicate gene names \(after trimming spaces and quotes\): \['ERBB2'\]"):
        read_counts(p)
    p.write_text('spot\t"ERBB2"\t GAPDH\nA\t1\t2\nB\t4\t5\n')
    assert list(read_counts(p).genes) == ["ERBB2", "GAPDH"]


@pytest.mark.slow
def test_her2st_patient_c_passes_and_its_realistic_mistakes_do_not(tmp_path):
    """Real data keeps its margins; a spot table in micrometres and a 10x pixel size are refused."""
    import dataclasses

    import polars as pl

    from conftest import her2st_or_skip

    from asign_assets.importers.her2st import manifest_from_her2st
    from asign_assets.ingest.manifest import load_manifest
    from asign_assets.ingest.sections import prepare_sections

    data = her2st_or_skip()
    path, _ = manifest_from_her2st(data, "C", ["C2", "C3", "C4", "C5", "C6"], "C4", with_truth=True, out=tmp_path / "c.yaml")
    m = load_manifest(path)
    figures = prepare_sections(m).plausibility
    for name, f in figures.items():
        assert f["spots_on_tissue"] >= 0.95 and abs(f["pitch_ratio"] - 1) < 0.1 and 0.8 < f["area_ratio"] < 1.5, (name, f)
        assert f["min_image_difference"] > 5 * pl_.NEAR_IDENTICAL_MAD, (name, f)

    (c4,) = m.measured_sections
    sel = pl.read_csv(c4.spots, separator="\t")
    in_um = tmp_path / "C4_um.tsv"
    sel.with_columns(pl.col("pixel_x") * c4.pixel_size_um, pl.col("pixel_y") * c4.pixel_size_um).write_csv(in_um, separator="\t")
    wrong_unit = dataclasses.replace(m, sections=tuple(dataclasses.replace(s, spots=in_um) if s.measured else s for s in m.sections))
    with pytest.raises(InputError, match=r"section C4: only 3\d\.\d% of 184 spots lie on the tissue"):
        prepare_sections(wrong_unit)
    px10 = dataclasses.replace(m, sections=tuple(dataclasses.replace(s, pixel_size_um=s.pixel_size_um * 10) for s in m.sections))
    with pytest.raises(InputError, match=r"ratio 9\.\d\d, expected 0.75-1.25\); a pixel size of 0\.7\d+ um would agree"):
        prepare_sections(px10)
