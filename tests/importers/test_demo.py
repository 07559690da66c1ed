import numpy as np
from scipy.spatial import cKDTree

from asign_assets.importers.demo import DemoConfig, canonical_spot_positions, make_demo_stack
from asign_assets.ingest.manifest import load_manifest
from asign_assets.readers.counts import read_counts


def test_demo_shapes_and_manifest(small_stack):
    m = load_manifest(small_stack.manifest_path)
    assert len(m.sections) == 4 and sum(s.measured for s in m.sections) == 1
    assert all(s.truth is not None for s in m.sections if not s.measured)
    from PIL import Image

    img = np.asarray(Image.open(m.sections[0].image))
    assert img.shape == (480, 480, 3) and img.dtype == np.uint8
    # white background at the corners, stained tissue in the middle
    assert img[:10, :10].mean() > 220 and img[200:280, 200:280].mean() < 215
    c = read_counts(m.measured_sections[0].counts)
    assert c.X.shape[1] == 120 and c.X.shape[0] > 40
    assert float(np.median(np.asarray(c.X.sum(1)).ravel())) > 500


def test_demo_is_deterministic(tmp_path):
    cfg = DemoConfig(n_sections=2, spots_per_section=40, image_px=240, n_genes=30, seed=11)
    a = make_demo_stack(tmp_path / "a", cfg)
    b = make_demo_stack(tmp_path / "b", cfg)
    for sub in ("images/S01.jpg", "spots/S02.tsv", "counts/S02.tsv.gz", "truth/S01.tsv.gz"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes(), sub
    c = make_demo_stack(tmp_path / "c", DemoConfig(**{**cfg.__dict__, "seed": 12}))
    assert (tmp_path / "a" / "spots/S02.tsv").read_bytes() != (tmp_path / "c" / "spots/S02.tsv").read_bytes()
    assert a.poses[0].rotation_deg == b.poses[0].rotation_deg != c.poses[0].rotation_deg


def _norm(path):
    c = read_counts(path)
    x = c.X.toarray()
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def test_neighbouring_sections_correlate_at_corresponding_positions(small_stack):
    root = small_stack.manifest_path.parent
    pos1, pos2 = canonical_spot_positions(root, "S02"), canonical_spot_positions(root, "S03")
    y1 = _norm(root / "truth" / "S02.tsv.gz" if (root / "truth" / "S02.tsv.gz").exists() else root / "counts" / "S02.tsv.gz")
    y2 = _norm(root / "truth" / "S03.tsv.gz" if (root / "truth" / "S03.tsv.gz").exists() else root / "counts" / "S03.tsv.gz")
    d, j = cKDTree(pos2[:, :2]).query(pos1[:, :2])
    close = d < 60
    assert close.sum() > 30
    # per-gene correlation across matched spots, compared with a random matching
    def gene_corr(a, b):
        a = a - a.mean(0)
        b = b - b.mean(0)
        return np.nanmean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12))

    matched = gene_corr(y1[close], y2[j[close]])
    rng = np.random.default_rng(0)
    shuffled = gene_corr(y1[close], y2[rng.permutation(j[close])])
    assert matched > 0.3 and matched > shuffled + 0.25


def test_demo_sections_are_stained_like_different_slides(tmp_path):
    """Each section has its own stain strength (slides stained in different batches): tissue
    tone varies between sections by far more than rendering noise. With one tone for all, a
    20-section 3000 px stack had two near-identical images, which the inputs check refuses."""
    from PIL import Image

    stack = make_demo_stack(tmp_path, DemoConfig(n_sections=8, spots_per_section=60, image_px=300, n_genes=20))
    tone = []
    for p in sorted((stack.manifest_path.parent / "images").glob("*.jpg")):
        grey = np.asarray(Image.open(p).convert("L"), np.float32)
        tone.append(grey[grey < 215].mean())
    assert np.ptp(tone) > 8.0  # one tone for all sections: ~1.7 grey levels
