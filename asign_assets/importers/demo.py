"""A synthetic serial-section stack with known truth, for the demo, tests and benchmarks.

One 3D latent tissue (smooth random fields -> a few tissue types and gene programs) is
cut into sections. Each section gets its own pose (rotation, translation, optional
mirror), a mild smooth deformation, an H&E-looking image rendered by Beer-Lambert
mixing of haematoxylin and eosin, and its own spot lattice fixed to the slide. Counts
are negative-binomial draws from the gene programs at each spot's tissue position, so
expression is smooth across sections and image appearance correlates with it.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from scipy import ndimage

from asign_assets.ingest.manifest import Manifest, SectionSpec, write_manifest

# Optical densities of haematoxylin and eosin per RGB channel (Ruifrok & Johnston).
_H_OD = np.array([0.65, 0.70, 0.29])
_E_OD = np.array([0.07, 0.99, 0.11])
TISSUE_TYPES = ("tumour", "stroma", "immune", "adipose")


@dataclass(frozen=True)
class DemoConfig:
    """Size and randomness of a synthetic stack; defaults run the demo in about a minute."""

    n_sections: int = 5
    spots_per_section: int = 220
    image_px: int = 1000
    n_genes: int = 300
    lattice: str = "hex"  # "hex" (Visium-like) or "square" (legacy ST)
    spot_pitch_um: float = 100.0
    spot_diameter_um: float = 55.0
    z_step_um: float = 40.0
    max_rotation_deg: float = 20.0
    deformation_um: float = 12.0
    mean_library_size: float = 3000.0
    mirrored: tuple[int, ...] = ()
    measured_indices: tuple[int, ...] = ()  # the measured sections (default: the middle one)
    seed: int = 0
    jpeg_quality: int = 90

    @property
    def pixel_size_um(self) -> float:
        cell = self.spot_pitch_um**2 * (math.sqrt(3) / 2 if self.lattice == "hex" else 1.0)
        tissue_area = self.spots_per_section * cell
        side_um = math.sqrt(tissue_area / 0.30)  # tissue covers about 30% of the frame
        return side_um / self.image_px


@dataclass
class SectionPose:
    """How a section's own image relates to the canonical tissue frame (um)."""

    name: str
    z_um: float
    rotation_deg: float
    translation_um: tuple[float, float]
    mirrored: bool
    deform_phase: tuple[float, float, float, float]


@dataclass
class DemoStack:
    manifest_path: Path
    config: DemoConfig
    poses: list[SectionPose] = field(default_factory=list)


class LatentTissue:
    """Smooth 3D fields: tissue-type weights and per-gene log-rates at any (x, y, z) in um."""

    def __init__(self, rng: np.random.Generator, extent_um: float, n_genes: int, n_freq: int = 6):
        k = len(TISSUE_TYPES)
        self.extent = extent_um
        # Random Fourier features: low spatial frequencies, longer correlation along z.
        scale_xy = 2 * math.pi / (0.55 * extent_um)
        scale_z = 2 * math.pi / (3.0 * extent_um)
        self.freq = rng.normal(size=(k, n_freq, 3)) * np.array([scale_xy, scale_xy, scale_z])
        self.phase = rng.uniform(0, 2 * math.pi, size=(k, n_freq))
        self.amp = rng.normal(size=(k, n_freq)) / math.sqrt(n_freq) * 2.2
        self.type_bias = np.array([0.3, 0.6, -0.4, -0.6])[:k]
        # Gene programs: each gene loads on the tissue types plus its own smooth field.
        self.loadings = rng.normal(0, 1.1, size=(n_genes, k))
        self.base = rng.normal(-8.0, 1.2, size=n_genes)  # log fraction of the library
        self.gfreq = rng.normal(size=(n_genes, 3)) * np.array([scale_xy, scale_xy, scale_z]) * 0.7
        self.gphase = rng.uniform(0, 2 * math.pi, size=n_genes)
        self.gamp = rng.uniform(0.0, 0.6, size=n_genes)
        # Tissue outline: an asymmetric blob (no rotational symmetry, so poses are identifiable).
        self.shape_amp = np.array([0.16, 0.12, 0.07])
        self.shape_phase = rng.uniform(0, 2 * math.pi, size=3)

    def inside(self, xyz: np.ndarray) -> np.ndarray:
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        theta = np.arctan2(y, x)
        r = np.hypot(x, y)
        zz = z / self.extent
        radius = 0.5 * self.extent * (
            1.0
            + self.shape_amp[0] * np.cos(2 * theta + self.shape_phase[0] + 0.8 * zz)
            + self.shape_amp[1] * np.cos(3 * theta + self.shape_phase[1])
            + self.shape_amp[2] * np.cos(5 * theta + self.shape_phase[2] - zz)
        )
        return r < radius

    def type_weights(self, xyz: np.ndarray) -> np.ndarray:
        proj = np.einsum("...d,kfd->...kf", xyz, self.freq) + self.phase
        logits = np.einsum("...kf,kf->...k", np.cos(proj), self.amp) + self.type_bias
        logits *= 2.0
        logits -= logits.max(axis=-1, keepdims=True)
        w = np.exp(logits)
        return w / w.sum(axis=-1, keepdims=True)

    def gene_rates(self, xyz: np.ndarray) -> np.ndarray:
        """Expected fraction of a spot's library for each gene, shape [..., n_genes]."""
        w = self.type_weights(xyz)
        own = self.gamp * np.cos(xyz @ self.gfreq.T + self.gphase)
        log_rate = self.base + w @ self.loadings.T + own
        rate = np.exp(log_rate)
        return rate / rate.sum(axis=-1, keepdims=True)


def _to_canonical(xy_um: np.ndarray, pose: SectionPose, deformation_um: float, extent: float) -> np.ndarray:
    """Own-image um -> canonical tissue um (x, y); pixels and spots share this map."""
    a, b, c, d = pose.deform_phase
    k = 2 * math.pi / extent
    x, y = xy_um[..., 0], xy_um[..., 1]
    x = x + deformation_um * np.sin(k * y + a) * np.cos(0.5 * k * x + b)
    y = y + deformation_um * np.sin(k * x + c) * np.cos(0.5 * k * y + d)
    p = np.stack([x, y], axis=-1) - np.asarray(pose.translation_um)
    t = math.radians(pose.rotation_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])  # R^T
    p = p @ rot.T
    if pose.mirrored:
        p = p * np.array([-1.0, 1.0])
    return p


def _lattice(cfg: DemoConfig, frame_um: float, rng: np.random.Generator) -> np.ndarray:
    pitch = cfg.spot_pitch_um
    if cfg.lattice == "hex":
        dy = pitch * math.sqrt(3) / 2
        rows = np.arange(0, frame_um, dy)
        pts = [np.stack([np.arange((i % 2) * pitch / 2, frame_um, pitch), np.full_like(np.arange((i % 2) * pitch / 2, frame_um, pitch), r)], 1) for i, r in enumerate(rows)]
        xy = np.concatenate(pts)
    elif cfg.lattice == "square":
        g = np.arange(0, frame_um, pitch)
        xx, yy = np.meshgrid(g, g)
        xy = np.stack([xx.ravel(), yy.ravel()], 1)
    else:
        raise ValueError(f"lattice must be 'hex' or 'square', got {cfg.lattice!r}")
    return xy + rng.uniform(0, pitch, size=2)


def _render(tissue: LatentTissue, canon_xyz: np.ndarray, inside: np.ndarray, rng: np.random.Generator, px_um: float, stain: float = 1.0) -> np.ndarray:
    """Beer-Lambert H&E rendering from tissue-type weights and random nuclei; ``stain`` scales
    the optical density (slides stained in different batches are lighter or darker)."""
    h, w = inside.shape
    # In row blocks: the [h, w, k, n_freq] intermediates of a 3000 px image would be ~3.5 GB.
    weights = np.concatenate([tissue.type_weights(canon_xyz[r : r + 256]) for r in range(0, h, 256)])  # [h, w, k]
    tumour, stroma, immune, adipose = (weights[..., i] for i in range(4))
    nuc_density = (0.020 * tumour + 0.004 * stroma + 0.030 * immune + 0.0015 * adipose) * (px_um / 2.0) ** 2
    seeds = rng.random((h, w)) < nuc_density * inside
    radius_px = max(0.8, 3.5 / px_um)
    nuclei = ndimage.gaussian_filter(seeds.astype(np.float32), radius_px) * (2 * math.pi * radius_px**2)
    nuclei = np.clip(nuclei, 0, 1.3)
    eosin = inside * (0.25 + 0.55 * stroma + 0.35 * tumour + 0.2 * immune + 0.05 * adipose)
    eosin = eosin * (1 - 0.8 * (adipose > 0.5) * (rng.random((h, w)) < 0.7))
    eosin = ndimage.gaussian_filter(eosin.astype(np.float32), 1.0)
    haem = inside * (0.08 + 0.9 * nuclei)
    od = stain * (haem[..., None] * _H_OD + eosin[..., None] * _E_OD)
    rgb = 245.0 * np.exp(-od) + rng.normal(0, 3.0, size=(h, w, 3))
    # A faint background gradient and a little dust, as on real slides.
    yy = np.linspace(0, 1, h)[:, None, None]
    rgb -= 6.0 * yy * np.array([0.0, 1.0, 0.5])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _counts_tsv(ids: list[str], genes: list[str], counts: np.ndarray) -> bytes:
    buf = io.StringIO()
    buf.write("\t" + "\t".join(genes) + "\n")
    for sid, row in zip(ids, counts):
        buf.write(sid + "\t" + "\t".join(map(str, row.tolist())) + "\n")
    return gzip.compress(buf.getvalue().encode(), compresslevel=6, mtime=0)  # level 9 is ~10x slower for 6% less


def make_demo_stack(out_dir: str | Path, config: DemoConfig = DemoConfig(), sample_id: str = "demo") -> DemoStack:
    """Write images, spot tables, counts, truth and a manifest; return where they are."""
    cfg = config
    if cfg.n_sections < 2:
        raise ValueError("a demo stack needs at least 2 sections")
    out = Path(out_dir)
    for sub in ("images", "spots", "counts", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    px = cfg.pixel_size_um
    frame_um = cfg.image_px * px
    # Mean tissue radius such that the disc holds about spots_per_section lattice cells.
    cell = cfg.spot_pitch_um**2 * (math.sqrt(3) / 2 if cfg.lattice == "hex" else 1.0)
    extent = 2.0 * math.sqrt(cfg.spots_per_section * cell / math.pi)
    tissue = LatentTissue(rng, extent, cfg.n_genes)
    genes = [f"G{i:04d}" for i in range(cfg.n_genes)]
    measured = set(cfg.measured_indices) or {cfg.n_sections // 2}
    if not all(0 <= m < cfg.n_sections for m in measured) or len(measured) == cfg.n_sections:
        raise ValueError(f"measured_indices {sorted(measured)}: each in 0..{cfg.n_sections - 1}, and not all sections")

    poses: list[SectionPose] = []
    specs: list[SectionSpec] = []
    grid = (np.arange(cfg.image_px) + 0.5) * px
    gx, gy = np.meshgrid(grid, grid)
    own_xy = np.stack([gx, gy], axis=-1)
    for i in range(cfg.n_sections):
        name = f"S{i + 1:02d}"
        z = i * cfg.z_step_um
        pose = SectionPose(
            name=name,
            z_um=z,
            rotation_deg=float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
            translation_um=(float(frame_um / 2 + rng.uniform(-0.06, 0.06) * frame_um), float(frame_um / 2 + rng.uniform(-0.06, 0.06) * frame_um)),
            mirrored=i in cfg.mirrored,
            deform_phase=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=4)),
        )
        poses.append(pose)
        canon = _to_canonical(own_xy, pose, cfg.deformation_um, extent)
        canon_xyz = np.concatenate([canon, np.full(canon.shape[:-1] + (1,), z)], axis=-1)
        inside = tissue.inside(canon_xyz)
        # Stain strength from its own stream, so poses and counts stay those of the seed. Without
        # it, two of many sections with similar poses gave near-identical images, which the
        # inputs check rightly refuses (real serial sections differ by 10+ grey levels).
        stain = float(np.random.default_rng([cfg.seed, 0x57A1, i]).uniform(0.8, 1.2))
        rgb = _render(tissue, canon_xyz, inside, rng, px, stain)
        img_path = out / "images" / f"{name}.jpg"
        Image.fromarray(rgb).save(img_path, quality=cfg.jpeg_quality)

        lat = _lattice(cfg, frame_um, rng)
        lat_canon = _to_canonical(lat, pose, cfg.deformation_um, extent)
        lat_xyz = np.concatenate([lat_canon, np.full((len(lat), 1), z)], axis=1)
        margin = cfg.spot_pitch_um
        keep = tissue.inside(lat_xyz) & (lat > margin).all(1) & (lat < frame_um - margin).all(1)
        lat, lat_xyz = lat[keep], lat_xyz[keep]
        ids = [f"s{j:05d}" for j in range(len(lat))]
        spots = pl.DataFrame({"spot_id": ids, "x_px": lat[:, 0] / px, "y_px": lat[:, 1] / px})
        spots_path = out / "spots" / f"{name}.tsv"
        spots.write_csv(spots_path, separator="\t")

        rates = tissue.gene_rates(lat_xyz)
        lib = rng.lognormal(math.log(cfg.mean_library_size), 0.35, size=len(lat))
        mu = rates * lib[:, None]
        r_disp = 8.0  # negative binomial: gamma-Poisson with shape r
        counts = rng.poisson(rng.gamma(r_disp, mu / r_disp)).astype(np.int64)
        is_measured = i in measured
        target = out / ("counts" if is_measured else "truth") / f"{name}.tsv.gz"
        target.write_bytes(_counts_tsv(ids, genes, counts))
        specs.append(
            SectionSpec(
                name=name, z_um=z, image=img_path.resolve(), pixel_size_um=px, measured=is_measured,
                spots=spots_path.resolve(),
                counts=target.resolve() if is_measured else None,
                truth=None if is_measured else target.resolve(),
            )
        )
    manifest = Manifest(
        sample_id=sample_id, path=(out / "manifest.yaml").resolve(),
        spot_diameter_um=cfg.spot_diameter_um, spot_pitch_um=cfg.spot_pitch_um,
        sections=tuple(specs), description=f"synthetic demo stack (seed {cfg.seed})",
    )
    path = write_manifest(manifest, out / "manifest.yaml")
    (out / "truth_poses.json").write_text(
        json.dumps({"config": asdict(cfg), "extent_um": extent, "poses": [asdict(p) for p in poses]}, indent=1)
    )
    return DemoStack(manifest_path=path, config=cfg, poses=poses)


def canonical_spot_positions(stack_dir: str | Path, section: str) -> np.ndarray:
    """Ground-truth canonical (x, y, z) um of a demo section's spots (for tests)."""
    stack_dir = Path(stack_dir)
    info = json.loads((stack_dir / "truth_poses.json").read_text())
    cfg = info["config"]
    pose_d = next(p for p in info["poses"] if p["name"] == section)
    pose = SectionPose(**{**pose_d, "translation_um": tuple(pose_d["translation_um"]), "deform_phase": tuple(pose_d["deform_phase"])})
    spots = pl.read_csv(stack_dir / "spots" / f"{section}.tsv", separator="\t")
    px = DemoConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}).pixel_size_um
    xy = np.stack([spots["x_px"].to_numpy(), spots["y_px"].to_numpy()], 1) * px
    canon = _to_canonical(xy, pose, cfg["deformation_um"], info["extent_um"])
    return np.concatenate([canon, np.full((len(xy), 1), pose.z_um)], 1)
