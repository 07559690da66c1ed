"""Image encoders that turn uint8 tiles into feature vectors, and the embedding writer.

``histology`` (default) needs no weights: stain-deconvolved colour statistics,
a small multi-scale filter bank and nuclear-density proxies, computed in torch on
the given device, vectorised over the batch. ``torchscript:<path>`` plugs in any
exported model (e.g. a pathology foundation model) from a local file.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb

from asign_assets.errors import InputError
from asign_assets.runtime.parallel import local_group_path, map_in_processes
from asign_assets.imaging.tiles import TILE_LEVELS, zarr_batched
from asign_assets.stats.correlation import standardise as zscore

if TYPE_CHECKING:  # pragma: no cover
    import zarr

__all__ = [
    "Encoder",
    "HistologyEncoder",
    "TorchScriptEncoder",
    "get_encoder",
    "embed_tiles",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Encoder(Protocol):
    name: str
    version: str
    dim: int
    params: dict

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 [N, h, w, 3] -> float32 [N, D]."""
        ...


def _check_tiles(tiles: np.ndarray) -> np.ndarray:
    """``tiles`` as an array, refused unless shaped [N, h, w, >=3] (what every encoder takes)."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] < 3:
        raise ValueError(f"tiles must be uint8 [N, h, w, 3], got {tiles.shape}")
    return tiles


def _to_tensor(tiles: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N,h,w,3] -> float [N,3,h,w] in 0..1 on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(tiles[..., :3]))
    return t.to(device).permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------- histology


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N,C,h,w] (replicate padding)."""
    k = _gauss_kernel(sigma, x.device)
    c = x.shape[1]
    r = (k.numel() - 1) // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _local_maxima(x: torch.Tensor) -> torch.Tensor:
    """3x3 local maxima of [N,1,h,w] (ties broken towards the top-left), no pooling op."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    h, w = x.shape[-2:]
    c = p[..., 1 : h + 1, 1 : w + 1]
    out = torch.ones_like(c, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = p[..., 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]
            out &= (c > nb) if (dy, dx) < (0, 0) else (c >= nb)
    return out


def _quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Linear-interpolation quantiles over the last dim (``torch.quantile`` semantics), [len(qs), ...]."""
    n = x.shape[-1]
    ks = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        ks.append((lo, min(lo + 1, n - 1), pos - lo))
    if x.device.type == "cpu":  # numpy's SIMD sort: ~8x np.partition's introselect, ~20x torch.sort
        s = torch.from_numpy(np.sort(x.contiguous().numpy(), axis=-1))
    else:
        s, _ = torch.sort(x, dim=-1)
    out = [torch.lerp(s[..., lo], s[..., hi], torch.tensor(w, dtype=s.dtype)) if w else s[..., lo] for lo, hi, w in ks]
    return torch.stack(out)


def _std(y: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Unbiased std over the last dim as a centred sum of squares: ``Tensor.std`` equals it
    to float rounding but was the largest cost in the encoder (4-7x slower on [256, 3136]).
    The mean is summed in float64, so a constant row gives exactly 0 as ``Tensor.std`` does."""
    d = y - y.mean(-1, keepdim=True, dtype=torch.float64).to(y.dtype)
    return (d * d).sum(-1, keepdim=keepdim).div_(y.shape[-1] - 1).sqrt_()


def _sobel_laplace(zp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3x3 Sobel x, y (/8) and 4-neighbour Laplacian of a 1-px padded [N,1,h+2,w+2] image."""
    c = zp[..., 1:-1, 1:-1]
    dx = zp[..., :, 2:] - zp[..., :, :-2]  # [N,1,h+2,w]
    gx = (dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8.0
    dy = zp[..., 2:, :] - zp[..., :-2, :]  # [N,1,h,w+2]
    gy = (dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]) / 8.0
    lap = zp[..., :-2, 1:-1] + zp[..., 2:, 1:-1] + zp[..., 1:-1, :-2] + zp[..., 1:-1, 2:] - 4.0 * c
    return gx, gy, lap


class HistologyEncoder:
    """Hand-crafted H&E features (no weights, deterministic).

    Per tile (``feature_names`` lists them): RGB mean/std; haematoxylin, eosin and DAB
    (skimage's ``hed_from_rgb`` deconvolution) mean/std/10th/50th/90th percentile;
    tissue fraction; an 8-bin haematoxylin histogram; at scales 1, 2, 4 for luminance
    and haematoxylin: mean gradient magnitude, its std, mean |Laplacian| and the std
    of the pooled image; neighbour autocorrelation at lags 1 and 4; nuclear proxies: fraction of
    pixels above three haematoxylin levels and the density of haematoxylin blobs
    (local maxima of the smoothed H channel) at two blob sizes.
    """

    name = "histology"
    version = "1"

    H_LEVELS = (0.08, 0.14, 0.20)
    H_BINS = (0.0, 0.02, 0.04, 0.07, 0.10, 0.14, 0.19, 0.25, 10.0)
    SCALES = (1, 2, 4)

    def __init__(self, device: torch.device | str = "cpu", max_side: int = 128):
        self.device = torch.device(device)
        self.max_side = int(max_side)  # larger tiles are area-downsampled first (speed)
        self.params: dict[str, Any] = {"max_side": self.max_side}
        self._m = torch.tensor(hed_from_rgb, dtype=torch.float32, device=self.device)
        self.feature_names = self._names()
        self.dim = len(self.feature_names)

    def _names(self) -> list[str]:
        n = [f"rgb_mean_{c}" for c in "rgb"] + [f"rgb_std_{c}" for c in "rgb"]
        for c in "hed":
            n += [f"{c}_mean", f"{c}_std", f"{c}_p10", f"{c}_p50", f"{c}_p90"]
        n += ["tissue_frac"] + [f"h_hist_{i}" for i in range(len(self.H_BINS) - 1)]
        for ch in ("lum", "h"):
            for s in self.SCALES:
                n += [f"{ch}_s{s}_grad_mean", f"{ch}_s{s}_grad_std", f"{ch}_s{s}_lap", f"{ch}_s{s}_std"]
        n += [f"{ch}_acorr_{lag}" for ch in ("lum", "h") for lag in (1, 4)]
        n += [f"h_frac_{t}" for t in self.H_LEVELS] + ["blob_density_s1.5", "blob_density_s3"]
        return n

    @torch.no_grad()
    def encode(self, tiles: np.ndarray) -> np.ndarray:
        tiles = _check_tiles(tiles)
        if tiles.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = _to_tensor(tiles, self.device)
        side = max(x.shape[-2:])
        if side > self.max_side:
            f = int(np.ceil(side / self.max_side))
            x = F.avg_pool2d(x, f, ceil_mode=True)
        return self._features(x).cpu().numpy().astype(np.float32)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        feats: list[torch.Tensor] = []
        flat = x.flatten(2)
        feats += [flat.mean(-1), _std(flat)]
        # Colour deconvolution exactly as skimage.color.rgb2hed.
        od = torch.log(x.clamp_min(1e-6)) / float(np.log(1e-6))  # [N,3,h,w]
        hed = torch.einsum("nchw,cd->ndhw", od, self._m).clamp_min(0)
        hflat = hed.flatten(2)
        step = max(1, hflat.shape[-1] // 2048)
        sub = hflat[..., ::step]  # quantiles on a regular subsample of ~2k pixels (speed)
        q = _quantiles(sub, (0.1, 0.5, 0.9))  # [3,N,3], as torch.quantile (linear) but one sort
        for c in range(3):
            feats += [hflat[:, c].mean(-1, keepdim=True), _std(hflat[:, c], keepdim=True), q[:, :, c].T]
        od_sum = -torch.log(x.clamp_min(1.0 / 255.0)).sum(1)  # [N,h,w]
        feats.append((od_sum > 0.15).float().flatten(1).mean(-1, keepdim=True))
        h = hed[:, :1]
        edges = torch.tensor(self.H_BINS, device=x.device)
        nb = len(self.H_BINS) - 1
        idx = torch.bucketize(h.flatten(1).contiguous(), edges[1:-1])
        idx = idx + torch.arange(n, device=x.device).unsqueeze(1) * nb
        hist = torch.bincount(idx.flatten(), minlength=n * nb).view(n, nb).float()
        feats.append(hist / float(idx.shape[1]))

        lum = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        for img in (lum, h * 4.0):  # H rescaled to ~0..1 so both channels weigh alike
            for s in self.SCALES:
                z = F.avg_pool2d(img, s) if s > 1 else img
                zp = F.pad(z, (1, 1, 1, 1), mode="replicate")
                gx, gy, lp = _sobel_laplace(zp)  # slicing, not 1-channel conv2d (much faster on CPU)
                g = torch.sqrt(gx * gx + gy * gy + 1e-12).flatten(1)
                lp = lp.abs().flatten(1)
                feats += [g.mean(-1, keepdim=True), _std(g, keepdim=True), lp.mean(-1, keepdim=True), _std(z.flatten(1), keepdim=True)]
        for img in (lum, h):
            for lag in (1, 4):
                a = img[..., :, :-lag].flatten(1)
                b = img[..., :, lag:].flatten(1)
                a = a - a.mean(-1, keepdim=True)
                b = b - b.mean(-1, keepdim=True)
                r = (a * b).mean(-1) / (_std(a) * _std(b) + 1e-6)
                feats.append(r.unsqueeze(-1))
        hf = h.flatten(1)
        feats += [(hf > t).float().mean(-1, keepdim=True) for t in self.H_LEVELS]
        area = float(h.shape[-1] * h.shape[-2])
        for sigma in (1.5, 3.0):
            hb = _blur(h, sigma)
            peak = _local_maxima(hb) & (hb > self.H_LEVELS[0])
            feats.append(peak.flatten(1).float().sum(-1, keepdim=True) * (1000.0 / area))
        out = torch.cat([f.reshape(n, -1) for f in feats], dim=1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


# --------------------------------------------------------------------------- torchscript


class TorchScriptEncoder:
    """A user's exported model (``torch.jit.save``) as an encoder.

    Input to the model: float32 [N, 3, H, W], RGB scaled to 0..1 then normalised with
    ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (override with
    ``mean``/``std``); tiles are resized (bilinear, antialiased) to ``input_size`` when it
    is given. Output: anything with a leading batch dimension, flattened to [N, D].
    """

    name = "torchscript"

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str = "cpu",
        input_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        dim: int | None = None,
    ):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise InputError(self.path, "TorchScript model file does not exist", field="encoder")
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device)
        except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
            raise InputError(self.path, f"not a loadable TorchScript model ({exc})", field="encoder") from exc
        self.model.eval()
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self.version = f"sha256:{digest}"
        self.input_size = int(input_size) if input_size else None
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.params: dict[str, Any] = {
            "path": str(self.path),
            "input_size": self.input_size,
            "mean": list(mean),
            "std": list(std),
            "sha256": digest,
        }
        if dim is None:
            probe = np.full((1, self.input_size or 224, self.input_size or 224, 3), 200, dtype=np.uint8)
            dim = int(self.encode(probe).shape[1])
        self.dim = int(dim)

    @torch.no_grad()
    def encode(self, tiles: np.ndarray) -> np.ndarray:
        tiles = _check_tiles(tiles)
        if tiles.shape[0] == 0:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        x = _to_tensor(tiles, self.device)
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        y = self.model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.reshape(y.shape[0], -1).float().cpu().numpy()


def get_encoder(spec: str, device: torch.device, **params: Any) -> Encoder:
    """``'histology'`` or ``'torchscript:/path/model.pt'`` -> an encoder on ``device``."""
    spec = (spec or "").strip()
    if spec == "histology":
        return HistologyEncoder(device=device, **params)
    if spec.startswith("torchscript:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise InputError("encoder", "torchscript encoder needs a path: 'torchscript:/path/model.pt'", field="encoder")
        return TorchScriptEncoder(path, device=device, **params)
    raise InputError("encoder", f"unknown encoder {spec!r}; use 'histology' or 'torchscript:/path/to/model.pt'", field="encoder")


# --------------------------------------------------------------------------- embeddings


def _embed_section(
    tiles_root: "str | zarr.Group", out_root: "str | zarr.Group", encoder: Encoder, batch_size: int, standardise: bool, threads: int, sec: str
) -> dict:
    """One section's three levels encoded into a new group ``out_root/<sec>`` (roots are
    paths in a worker process, which runs torch on ``threads`` intra-op threads)."""
    import zarr

    if isinstance(tiles_root, str):
        torch.set_num_threads(threads)
        tiles_root, out_root = zarr.open_group(tiles_root, mode="r"), zarr.open_group(out_root, mode="r+")
    src = tiles_root[sec]
    feats: dict[str, np.ndarray] = {}
    for level in TILE_LEVELS:
        arr = src[level]
        n = arr.shape[0]
        out = np.zeros((n, encoder.dim), dtype=np.float32)
        for b0 in range(0, n, batch_size):
            b1 = min(n, b0 + batch_size)
            with zarr_batched():
                tiles = np.asarray(arr[b0:b1])
            out[b0:b1] = encoder.encode(tiles)
        feats[level] = (zscore(out.astype(np.float64)).astype(np.float32) if len(out) else out) if standardise else out
    grp = out_root.require_group(sec)
    for level, f in feats.items():
        a = grp.create_array(level, shape=f.shape, dtype=np.float32, chunks=(max(1, min(f.shape[0], 4096)), max(1, f.shape[1])), overwrite=True)
        a[...] = f
    return {f"n_{level}": int(f.shape[0]) for level, f in feats.items()}


def _picklable(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # TorchScript modules, open handles: whatever cannot travel to a worker
        return False
    return True


def embed_tiles(
    tiles_root: "zarr.Group",
    out_root: "zarr.Group",
    sections: list[str],
    encoder: Encoder,
    batch_size: int = 64,
    standardise: bool = True,
    workers: int = 1,
    on_section: Callable[[str, dict], None] | None = None,
) -> dict:
    """Encode every section's spot/region/global tiles into ``out_root`` (float32 [n, D]).

    With ``standardise`` each feature is z-scored within each section and level, which
    removes per-section staining/scanner offsets before cross-section similarity.
    ``workers`` sections are encoded at once in worker processes (:mod:`asign_assets.runtime.parallel`),
    each with this process's torch thread count; only for a CPU encoder that pickles and
    local zarr roots (else one by one here). The features are the same bytes whatever
    ``workers`` is. ``on_section(name, row)`` gets each section's row in the calling
    process; ``started_s``/``seconds`` in a row are its start after the call and its own
    wall time (overlapping when ``workers`` > 1); ``workers`` in the result is the number used.
    """
    missing = [s for s in sections if s not in tiles_root or any(lv not in tiles_root[s] for lv in TILE_LEVELS)]
    if missing:
        raise InputError("tiles.zarr", f"no tiles for section(s) {missing}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    src, dst = (local_group_path(tiles_root), local_group_path(out_root)) if workers > 1 else (None, None)
    on_cpu = getattr(encoder, "device", torch.device("cpu")).type == "cpu"
    if not (src and dst and on_cpu and _picklable(encoder)):
        workers, src, dst = 1, None, None
    fn = partial(_embed_section, src or tiles_root, dst or out_root, encoder, batch_size, standardise, torch.get_num_threads())
    per_section: dict[str, dict] = {}

    def done(i: int, counts: dict, started: float, seconds: float) -> None:
        per_section[sections[i]] = {**counts, "started_s": round(started, 3), "seconds": round(seconds, 3)}
        if on_section is not None:
            on_section(sections[i], per_section[sections[i]])

    map_in_processes(fn, sections, workers, on_result=done)
    out_root.attrs.update(
        {
            "encoder": encoder.name,
            "version": encoder.version,
            "dim": int(encoder.dim),
            "params": dict(getattr(encoder, "params", {})),
            "standardised": bool(standardise),
        }
    )
    return {
        "encoder": encoder.name,
        "version": encoder.version,
        "dim": int(encoder.dim),
        "standardised": bool(standardise),
        "workers": workers,
        "sections": {sec: per_section[sec] for sec in sections},
    }
