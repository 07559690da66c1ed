"""Training losses: spot loss (0.75 MSE + 0.25 (1 - PCC)), tile-level PCC terms and the
tile/spot consistency term, combined by :func:`training_loss`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from asign_assets.stats.correlation import rowwise_pcc


def pcc_loss(pred: Tensor, y: Tensor) -> Tensor:
    """1 - mean of per-spot (across genes) and per-gene (across spots) PCC."""
    if pred.shape[0] < 2:
        return 1.0 - rowwise_pcc(pred, y).mean()
    return 1.0 - 0.5 * (rowwise_pcc(pred, y).mean() + rowwise_pcc(pred.T, y.T).mean())


def spot_loss(pred: Tensor, y: Tensor) -> Tensor:
    return 0.75 * torch.nn.functional.mse_loss(pred, y) + 0.25 * pcc_loss(pred, y)


def scatter_mean(x: Tensor, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per-tile mean of ``x`` rows and the row count of each tile (PyG scatter)."""
    count = scatter(torch.ones_like(index, dtype=x.dtype), index, 0, dim_size=size, reduce="sum")
    return scatter(x, index, 0, dim_size=size, reduce="mean"), count


@dataclass(frozen=True)
class TileTargets:
    """Region and global tile targets of one member, fixed for its whole training.

    Targets are the mean expression of a tile's *training* spots (validation never leaks
    into the loss; under PCC a mean equals the sum). The consistency term covers every tile
    holding a measured spot and compares it with the mean network output of those spots.
    """

    region: Tensor  # [R', G] on device: targets of the regions with a training spot
    region_has: Tensor  # [R] bool: region holds a training spot
    global_: Tensor  # [Gt', G] on device, as ``region``
    global_has: Tensor  # [Gt] bool
    region_in: Tensor  # [R] bool on device: region holds a measured spot
    global_in: Tensor  # [Gt] bool on device
    spot_region: Tensor  # [n_meas] on device: region of each measured spot
    spot_global: Tensor  # [n_meas] on device
    n_regions: int
    n_globals: int


def tile_targets(y_meas: Tensor, tr_pos: Tensor, spot_region: Tensor, spot_global: Tensor, n_regions: int, n_globals: int,
                 device: torch.device) -> TileTargets:
    """Tile targets from the measured spots' expression ``y_meas`` (rows in measured order),
    ``tr_pos`` the training positions and ``spot_region``/``spot_global`` the local tile of
    each measured spot."""
    rt, rcount = scatter_mean(y_meas[tr_pos], spot_region[tr_pos], n_regions)
    gt, gcount = scatter_mean(y_meas[tr_pos], spot_global[tr_pos], n_globals)
    r_has, g_has = rcount > 0, gcount > 0
    _, rc_all = scatter_mean(y_meas, spot_region, n_regions)
    _, gc_all = scatter_mean(y_meas, spot_global, n_globals)
    return TileTargets(
        rt[r_has].to(device), r_has, gt[g_has].to(device), g_has, (rc_all > 0).to(device), (gc_all > 0).to(device),
        spot_region.to(device), spot_global.to(device), n_regions, n_globals,
    )


def training_loss(out: dict[str, Tensor], blend: Tensor, target: Tensor, y: Tensor, tiles: TileTargets) -> Tensor:
    """One member's training loss for an epoch.

    ``out`` is the network output (``spot`` rows = the measured spots, ``region`` and
    ``global`` rows = the subgraph's tiles), ``blend`` the CLI blend of ``out["spot"]`` with
    the propagated labels, ``target`` the measured positions the loss is on (the non-known
    training spots) and ``y`` the measured expression. The total is

        spot_loss(blend) + 0.5 spot_loss(network)                  on the target spots
        + 0.125 [(1 - PCC)(region) + (1 - PCC)(global)]            tiles with a training spot (when > 1)
        + 0.125 * 0.5 [MSE(region, mean of its spots' network output)
                       + MSE(global, mean of its spots' network output)]  (consistency, spot side detached)

    with ``spot_loss = 0.75 MSE + 0.25 (1 - PCC)`` and PCC the mean of per-spot and per-gene PCC.
    """
    net = out["spot"]
    loss = spot_loss(blend[target], y[target]) + 0.5 * spot_loss(net[target], y[target])
    level = 0.125 * (
        (pcc_loss(out["region"][tiles.region_has], tiles.region) if int(tiles.region_has.sum()) > 1 else 0.0)
        + (pcc_loss(out["global"][tiles.global_has], tiles.global_) if int(tiles.global_has.sum()) > 1 else 0.0)
    )
    sr_mean, _ = scatter_mean(net, tiles.spot_region, tiles.n_regions)
    sg_mean, _ = scatter_mean(net, tiles.spot_global, tiles.n_globals)
    consistency = 0.125 * 0.5 * (
        torch.nn.functional.mse_loss(out["region"][tiles.region_in], sr_mean[tiles.region_in].detach())
        + torch.nn.functional.mse_loss(out["global"][tiles.global_in], sg_mean[tiles.global_in].detach())
    )
    return loss + level + consistency
