"""Spatial masks and folds on the measured spots, and the lattice pitch they are sized in.

``mask="blocked"`` makes known masks and validation folds of whole spatial blocks, so a
spot's labels come from outside its block, as at imputation where a section has no known
spot at all; the default draws them spot by spot.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from asign_assets.model.params import TrainParams


def lattice_pitch(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance of the spots (their lattice pitch)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, np.float64)
    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1])) or 1.0


def graph_pitch(graph: Data, measured_idx: Tensor) -> float:
    """Lattice pitch of the measured spots in the graph's common frame (1.0 without positions):
    the median of each measured section's own pitch, since spots of two registered sections
    pooled together lie closer than either lattice."""
    pos = getattr(graph, "pos", None)
    if pos is None:
        return 1.0
    xy = pos[measured_idx, :2].double().numpy()
    section = getattr(graph, "section", None)
    if section is None:
        return lattice_pitch(xy)
    sec = section[measured_idx].numpy()
    return float(np.median([lattice_pitch(xy[sec == s]) for s in np.unique(sec)]))


def block_ids(xy: np.ndarray, side: float, gen: torch.Generator) -> np.ndarray:
    """Square spatial block (dense 0..B-1 label) of each spot; the grid gets a random offset."""
    off = torch.rand(2, generator=gen).numpy() * side
    cell = np.floor((np.asarray(xy, np.float64) + off) / side).astype(np.int64)
    _, ids = np.unique(cell, axis=0, return_inverse=True)
    return ids.ravel()


def blocked_known_mask(xy: np.ndarray, side: float, known_frac: float, gen: torch.Generator) -> np.ndarray:
    """Known spots as whole spatial blocks: each block is known with probability ``known_frac``.

    An unknown spot's labels then come from outside its block, at least one block
    border away, as at imputation where the section has no known spot at all. At least
    one block is known and one unknown.
    """
    ids = block_ids(xy, side, gen)
    nb = int(ids.max()) + 1
    known_block = (torch.rand(nb, generator=gen) < known_frac).numpy()
    if nb > 1 and (known_block.all() or not known_block.any()):
        known_block[int(torch.randint(nb, (1,), generator=gen))] ^= True
    return known_block[ids]


def blocked_folds(xy: np.ndarray, side: float, n_folds: int, gen: torch.Generator) -> list[np.ndarray]:
    """Spot positions of ``n_folds`` disjoint folds made of whole spatial blocks."""
    ids = block_ids(xy, side, gen)
    nb = int(ids.max()) + 1
    fold_of_block = torch.randperm(nb, generator=gen).numpy() % n_folds
    f = fold_of_block[ids]
    return [np.nonzero(f == k)[0] for k in range(n_folds)]


def val_folds(n_meas: int, params: TrainParams, gen: torch.Generator, meas_xy: np.ndarray | None = None,
              block_side: float = 0.0) -> list[Tensor]:
    """Validation positions (into the measured list) of each member.

    One member: a random ``val_frac``. An ensemble: disjoint folds of a
    ``max(ensemble, round(1 / val_frac))``-fold split, so members see different training
    spots and their validation predictions are out-of-fold (used for calibration).
    With ``mask="blocked"`` folds are whole spatial blocks, so early stopping and the
    calibration see spots whose labels come from outside their block, as at imputation
    (blocks of side ``block_side`` over the measured positions ``meas_xy``; spot-wise
    without them).
    """
    if params.mask == "blocked" and meas_xy is not None:
        n_folds = max(params.ensemble, int(round(1.0 / max(params.val_frac, 1e-3))), 2)
        folds = [torch.from_numpy(f) for f in blocked_folds(meas_xy, block_side, n_folds, gen) if len(f)]
        return folds[: max(1, params.ensemble)]
    perm = torch.randperm(n_meas, generator=gen)
    if params.ensemble <= 1:
        n_val = max(1, int(round(params.val_frac * n_meas)))
        return [perm[:n_val]]
    n_folds = max(params.ensemble, int(round(1.0 / max(params.val_frac, 1e-3))))
    return [perm[f::n_folds] for f in range(params.ensemble)]
