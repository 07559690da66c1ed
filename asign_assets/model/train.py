"""Training on the measured spots: shared preparation, one member per validation fold, and
the calibration fitted on their pooled out-of-fold predictions."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from asign_assets.model.calibration import calibration_from_members
from asign_assets.model.determinism import deterministic
from asign_assets.model.ensemble import member_workers, train_members
from asign_assets.model.inputs import ModelInputs
from asign_assets.model.masks import val_folds
from asign_assets.model.params import TrainParams, TrainResult
from asign_assets.model.prepare import prepare


def train_model(inputs: ModelInputs, params: TrainParams = TrainParams(), device: torch.device = torch.device("cpu")) -> TrainResult:
    """Train on the measured spots only; returns the best (early-stopped) state(s).

    With ``params.ensemble = K`` trains K members (seeds ``seed .. seed+K-1``, disjoint
    validation folds); with ``params.calibrate`` fits a per-gene calibration of the
    ensemble's outputs on the pooled out-of-fold validation predictions.
    """
    t0 = time.perf_counter()
    if params.ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {params.ensemble}")
    G = inputs.n_genes
    with deterministic(params.seed, params.threads):
        gen = torch.Generator().manual_seed(params.seed)
        pp = prepare(inputs, params, device)
        folds = val_folds(inputs.measured_idx.numel(), params, gen, pp.meas_xy, pp.block_side)
        n_workers = member_workers(params, len(folds), pp.sub.nodes.numel(), device)
        members = train_members(pp, params, folds, device, n_workers)
        calibration: dict[str, Tensor] = calibration_from_members(members, params.calib_shrink) if params.calibrate else {}
    config = {
        "in_dim": inputs.spot_emb.shape[1], "n_genes": G, "aux_dim": (G + 1) if params.use_propagation_input else 0,
        "region_dim": inputs.region_emb.shape[1], "global_dim": inputs.global_emb.shape[1], "source_rank": pp.source_rank, "ridge_rank": pp.ridge_rank,
        "edge_dz": int(params.edge_dz), "member_processes": n_workers,
    }
    m0 = members[0]
    return TrainResult(
        model_state=m0["model_state"], cli_state=m0["cli_state"], params=params, config=config, curves=m0["curves"],
        seconds=time.perf_counter() - t0, best_epoch=m0["best_epoch"],
        extra_members=[{"model_state": mb["model_state"], "cli_state": mb["cli_state"]} for mb in members[1:]],
        calibration=calibration, member_curves=[mb["curves"] for mb in members],
        member_best_epochs=[mb["best_epoch"] for mb in members],
    )
