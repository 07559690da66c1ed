"""One ensemble member: its set-up, the epoch loop and its out-of-fold predictions.

One full-batch step per epoch on the bounded training subgraph (:mod:`asign_assets.model.prepare`):

- A fixed random ``val_frac`` of measured spots is held out for early stopping (an
  ensemble's members hold out disjoint folds, :func:`asign_assets.model.masks.val_folds`).
- Each step a random ``known_frac`` of the remaining measured spots are "known" (masks
  drawn from a pool of ``mask_pool`` drawn once, with their propagations); labels are
  propagated from them (CLI) and the network, fed those propagated labels and the image
  ridge prediction, must impute the rest; the loss (:func:`asign_assets.model.losses.training_loss`)
  is on the non-known training spots.

What remains of a member's cost is epochs x one forward/backward over the measured
section's neighbourhood; propagation reuses one sparse CSR operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from asign_assets.stats.ridge import fit_reduced_rank_ridge
from asign_assets.stats.correlation import rowwise_pcc
from asign_assets.model.labels import aux_inputs, denoise, propagate, source_basis
from asign_assets.model.losses import TileTargets, spot_loss, tile_targets, training_loss
from asign_assets.model.masks import blocked_known_mask
from asign_assets.model.msagnet import CrossLayerImputation, MSAGNet
from asign_assets.model.params import TrainParams
from asign_assets.model.prepare import Prepared
from asign_assets.model.subgraph import Subgraph, forward, prune_nodes, receptive


class _Mask(NamedTuple):
    """One known mask of an epoch: what the network and the loss read from it."""

    known: Tensor  # [m] bool, local nodes whose labels are known
    target: Tensor  # measured positions the loss is on (non-known training spots), on device
    prop: Tensor  # [m, G] propagated labels, on device
    aux: Tensor | None  # [m, G + 1] network inputs (labels.aux_inputs)


@dataclass(frozen=True)
class _Validation:
    """The validation spots' own pruned subgraph and everything their forward pass reads."""

    sub: Subgraph
    out: Tensor  # the validation spots' positions in ``sub``
    aux: Tensor | None
    base: Tensor | None
    prop: Tensor  # propagated labels at the validation spots (from every training spot)
    y: Tensor  # their measured expression


@dataclass(frozen=True)
class _Fixed:
    """What every training step reads besides its mask."""

    meas: Tensor  # the measured spots' local nodes, on device
    base: Tensor | None  # image ridge prediction at the measured spots
    y: Tensor  # their measured expression, on device
    tiles: TileTargets


class _Best(NamedTuple):
    score: float
    epoch: int
    model_state: dict[str, Tensor] | None
    cli_state: dict[str, Tensor] | None


def _split(n_meas: int, val_pos: Tensor) -> tuple[Tensor, Tensor]:
    """(validation, training) positions into the measured list, both sorted."""
    is_val = torch.zeros(n_meas, dtype=torch.bool)
    is_val[val_pos] = True
    return torch.nonzero(is_val).flatten(), torch.nonzero(~is_val).flatten()


def _sources(pp: Prepared, y_m: Tensor, tr_pos: Tensor, device: torch.device) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Labels to propagate [m, G]: the rank-r reconstruction of the measured rows (and their
    shifted copies) on a basis fitted on this member's training spots, and that basis on
    ``device`` (None for raw labels)."""
    basis = source_basis(y_m[tr_pos], pp.source_rank)
    src_local = pp.y_local.clone()
    src_local[pp.meas_local] = denoise(y_m, basis)
    if pp.copy_local is not None:
        src_local[pp.copy_local] = src_local[pp.meas_local]
    return src_local, None if basis is None else (basis[0].to(device), basis[1].to(device))


def _ridge_base(pp: Prepared, params: TrainParams, tr_pos: Tensor) -> Tensor | None:
    """Image ridge prediction [m, G] fitted on the training spots: their leave-one-out fits
    (and their copies'), predictions elsewhere; None without ``use_ridge``."""
    if not params.use_ridge:
        return None
    meas = pp.meas_local
    tr_np = meas[tr_pos].numpy()
    ridge = fit_reduced_rank_ridge(pp.spot_emb_sub[tr_np], pp.y_local[meas[tr_pos]].numpy(), pp.ridge_rank)
    base_np = ridge.predict(pp.spot_emb_sub)
    base_np[tr_np] = ridge.loo
    if pp.copy_local is not None:
        base_np[pp.copy_local[tr_pos].numpy()] = ridge.loo
    return torch.from_numpy(base_np)


def _network(pp: Prepared, params: TrainParams, y_train: Tensor,
             device: torch.device) -> tuple[MSAGNet, CrossLayerImputation, torch.optim.Optimizer, LRScheduler | None]:
    """(network, CLI, optimiser, LR schedule or None); the network's gene bias starts at the
    training spots' mean."""
    G = pp.n_genes
    model = MSAGNet(
        pp.xs.shape[1], G, params.hidden, params.heads, params.blocks,
        aux_dim=(G + 1) if params.use_propagation_input else 0, dropout=params.dropout,
        region_dim=pp.xr.shape[1], global_dim=pp.xg.shape[1], edge_dz=params.edge_dz,
    ).to(device)
    model.set_gene_bias(y_train.mean(0).to(device))
    cli = CrossLayerImputation(G, params.iters).to(device)
    opt_params = [{"params": list(model.parameters())}, {"params": list(cli.parameters()), "lr": params.lr * params.cli_lr_mult}]
    if params.optimizer == "sgd":
        opt = torch.optim.SGD(opt_params, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=params.epochs, power=0.9)
    else:
        opt = torch.optim.AdamW(opt_params, lr=params.lr, weight_decay=params.weight_decay)
        sched = None
    return model, cli, opt, sched


def _validation(pp: Prepared, params: TrainParams, val_pos: Tensor, tr_pos: Tensor, y_dev: Tensor, ym_dev: Tensor,
                basis: tuple[Tensor, Tensor] | None, base: Tensor | None, device: torch.device) -> _Validation:
    """Validation inputs: labels propagated from every training spot, and the validation
    spots' own subgraph (they need outputs at a few spots only, :func:`prune_nodes`)."""
    m = pp.sub.nodes.numel()
    known_val = torch.zeros(m, dtype=torch.bool)
    known_val[pp.label_nodes(tr_pos)] = True
    prop_val = propagate(pp.op, y_dev, known_val.to(device), basis, params.iters)
    aux_val = aux_inputs(prop_val.cpu(), known_val, base, params)
    vy = ym_dev[val_pos.to(device)]
    val_nodes = pp.meas_local[val_pos]
    pv = prop_val[val_nodes.to(device)]
    base_v = None if base is None else base[val_nodes]
    val_sub, val_out, val_keep = prune_nodes(receptive(pp.sub, val_nodes, params.blocks), val_nodes)
    aux_val = None if aux_val is None else aux_val[val_keep]
    return _Validation(val_sub, val_out, aux_val, base_v, pv, vy)


def _mask_sampler(pp: Prepared, params: TrainParams, tr_pos: Tensor, gen: torch.Generator, y_dev: Tensor,
                  basis: tuple[Tensor, Tensor] | None, base: Tensor | None, device: torch.device) -> Callable[[], _Mask]:
    """Draws one known mask of the training spots (``known_frac``, or ``shift_known_frac`` of
    the copies in the shifted regime; whole blocks with ``mask="blocked"``) and propagates from it."""
    m = pp.sub.nodes.numel()
    known_frac = params.known_frac if pp.copy_local is None else params.shift_known_frac
    n_known = max(1, int(round(known_frac * tr_pos.numel())))
    tr_xy = pp.meas_xy[tr_pos.numpy()]

    def draw() -> _Mask:
        if params.mask == "blocked":
            is_known = torch.from_numpy(blocked_known_mask(tr_xy, pp.block_side, known_frac, gen))
            k_pos, t_pos = tr_pos[is_known], tr_pos[~is_known]
        else:
            kp = torch.randperm(tr_pos.numel(), generator=gen)
            k_pos, t_pos = tr_pos[kp[:n_known]], tr_pos[kp[n_known:]]
        known = torch.zeros(m, dtype=torch.bool)
        known[pp.label_nodes(k_pos)] = True
        prop = propagate(pp.op, y_dev, known.to(device), basis, params.iters)
        return _Mask(known, t_pos.to(device), prop, aux_inputs(prop.cpu(), known, base, params))

    return draw


def _mask_pool(params: TrainParams, m: int, G: int, draw: Callable[[], _Mask]) -> list[_Mask]:
    """Masks drawn once and cycled (empty: a fresh mask every epoch). Propagation over the
    training neighbourhood dominates an epoch on big stacks; the pool (bounded to ~256 MB of
    propagated labels) bounds it."""
    pool_n = params.mask_pool
    if pool_n > 0:
        pool_n = max(2, min(pool_n, params.epochs, int(2.56e8 // max(1, 2 * m * (G + 1) * 4))))
    return [draw() for _ in range(pool_n)]


def _step(model: MSAGNet, cli: CrossLayerImputation, opt: torch.optim.Optimizer, sched: LRScheduler | None, pp: Prepared,
          mask: _Mask, fixed: _Fixed, device: torch.device) -> Tensor:
    """One training step (network outputs at the measured spots, on ``pp.net_sub``); returns the loss."""
    model.train()
    cli.train()
    out = forward(model, pp.net_sub, pp.xs, pp.xr, pp.xg, mask.aux, fixed.base, device, pp.meas_local)
    blend = cli(out["spot"], mask.prop[fixed.meas])
    total = training_loss(out, blend, mask.target, fixed.y, fixed.tiles)
    opt.zero_grad()
    total.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return total


def _predict(model: MSAGNet, cli: CrossLayerImputation, pp: Prepared, val: _Validation, device: torch.device) -> tuple[Tensor, Tensor]:
    """(network, blend) at the validation spots, in eval mode."""
    model.eval()
    cli.eval()
    with torch.no_grad():
        net = forward(model, val.sub, pp.xs, pp.xr, pp.xg, val.aux, val.base, device, val.out)["spot"]
        return net, cli(net, val.prop)


def train_member(pp: Prepared, params: TrainParams, seed: int, val_pos: Tensor, device: torch.device) -> dict[str, Any]:
    """One member, early-stopped on the validation gene PCC: its best states, curves and
    out-of-fold predictions at the validation spots (``val_pos``: positions in the measured
    list). Network outputs are computed for measured spots only, on ``pp.net_sub``;
    propagation runs over the whole training subgraph."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sub, m, G = pp.net_sub, pp.sub.nodes.numel(), pp.n_genes
    meas = pp.meas_local
    val_pos, tr_pos = _split(meas.numel(), val_pos)
    y_m = pp.y_local[meas]
    src_local, basis = _sources(pp, y_m, tr_pos, device)
    base = _ridge_base(pp, params, tr_pos)
    model, cli, opt, sched = _network(pp, params, y_m[tr_pos], device)
    tiles = tile_targets(y_m, tr_pos, sub.spot_region[meas], sub.spot_global[meas], sub.regions.numel(), sub.globals_.numel(), device)
    y_dev = src_local.to(device)
    fixed = _Fixed(meas.to(device), None if base is None else base[meas], y_m.to(device), tiles)
    val = _validation(pp, params, val_pos, tr_pos, y_dev, fixed.y, basis, base, device)
    draw = _mask_sampler(pp, params, tr_pos, gen, y_dev, basis, base, device)
    pool = _mask_pool(params, m, G, draw)

    best = _Best(-np.inf, 0, None, None)
    curves: list[dict] = []
    for epoch in range(params.epochs):
        mask = pool[epoch % len(pool)] if pool else draw()
        total = _step(model, cli, opt, sched, pp, mask, fixed, device)
        _, vb = _predict(model, cli, pp, val, device)
        val_loss = float(spot_loss(vb, val.y))
        val_pcc = float(rowwise_pcc(vb.T, val.y.T).mean()) if vb.shape[0] > 1 else float("nan")
        curves.append({
            "epoch": epoch, "train_loss": float(total.detach()), "val_loss": val_loss, "val_gene_pcc": val_pcc,
            "alpha_mean": float(cli.weight.detach().mean()),
        })
        score = val_pcc if np.isfinite(val_pcc) else -val_loss
        if score > best.score + params.min_delta:
            best = _Best(score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()},
                         {k: v.detach().clone() for k, v in cli.state_dict().items()})
        elif epoch - best.epoch >= params.patience:
            break
    # out-of-fold predictions of the best state on this member's validation spots
    model.load_state_dict(best.model_state)
    cli.load_state_dict(best.cli_state)
    vnet, vblend = _predict(model, cli, pp, val, device)
    return {
        "model_state": {k: v.cpu() for k, v in best.model_state.items()}, "cli_state": {k: v.cpu() for k, v in best.cli_state.items()},
        "curves": curves, "best_epoch": best.epoch,
        "oof": {"model": vnet.cpu(), "blend": vblend.cpu()}, "oof_y": val.y.cpu(),
    }
