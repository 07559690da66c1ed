"""Training MSAGNet + CLI on the measured section, and whole-volume imputation.

Only measured data enter here: ``y_measured`` rows for ``measured_idx`` nodes. Held-out
truth of other sections has no argument to come in through.

Training (one full-batch step per epoch on a bounded subgraph = measured section + its
``hops``-hop neighbours, so cost does not grow with the stack):

- A fixed random ``val_frac`` of measured spots is held out for early stopping (an
  ensemble's members hold out disjoint folds).
- Each step a random ``known_frac`` of the remaining measured spots are "known" (masks
  drawn from a pool of ``mask_pool`` drawn once, with their propagations); labels are
  propagated from them (CLI) and the network, fed those propagated labels and the image
  ridge prediction, must impute the rest; the loss is on the non-known training spots.
- Loss = 0.75 MSE + 0.25 (1 - PCC) on spots (PCC = mean of per-spot and per-gene PCC),
  applied to the CLI blend plus half of it to the bare network output, + 0.125 (1 - PCC) at
  region and global tile level (targets: mean of contained spots, equal to sums under PCC)
  + 0.125 consistency (tile prediction vs mean of its spots' predictions).
- Optimiser: AdamW by default (see ``TrainParams.optimizer``); ``sgd`` gives the paper's
  SGD + momentum 0.9 with polynomial decay. On HER2ST patient C (mean of 5 measured
  choices) SGD at lr 1e-3 barely moves the network off its ridge base (network gene_pcc
  0.238 vs 0.255 with AdamW; final blend 0.270 vs 0.274), hence AdamW.

Ensemble and calibration (HER2ST patient C, mean of 5 measured choices, gene_pcc / log-MSE):
one member 0.275 / 0.385, its network alone 0.256 / 0.436; ``ensemble=3`` (members on
disjoint validation folds, own seeds and known masks, outputs averaged) with ``calibrate``
(per-gene shrinkage of each output towards the measured mean, fitted on the members' pooled
out-of-fold validation predictions: :func:`fit_calibration`) 0.279 / 0.381, network alone
0.265 / 0.387. Patience 20 (was 40) costs nothing measurable there and halves the tail.
Insensitive there (gene_pcc within +-0.003): known_frac 0.1..0.5, iters 10 vs 20, a pool of
16 cached known masks vs a fresh mask per epoch; a 20x learning rate on the CLI weights
moves them towards the network (in-section the network wins) and costs 0.002.

Cost: the network computes spot outputs only where the loss needs them (the measured
spots) and keeps only the edges those outputs depend on (:func:`_receptive`); propagation
reuses one sparse CSR operator. Training therefore scales with the measured section's
neighbourhood, not with the stack.

Inference: ALL measured spots are known; propagation runs over the whole graph (sparse),
the network runs per section on the section plus its ``hops``-hop neighbours.

Uncertainty (per spot and gene): the SD over the estimators the blend combines (each
member's network output and the propagation), scaled per gene so that its RMS over the
imputed spots equals the RMS of the calibrated out-of-fold validation residuals
(``calibration["sigma"]``, measured spots only). On HER2ST patient C (C4 measured) its
Spearman correlation with the absolute error is 0.09-0.11 per section (mean over genes) and
the central 80% interval covers 67-72% of the truth: in-section validation errors are
smaller than errors on other sections, so the intervals are too narrow there.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import k_hop_subgraph, subgraph

from asign_assets.baselines import choose_ridge_rank, fit_reduced_rank_ridge
from asign_assets.lowrank import choose_rank
from asign_assets.msagnet import CrossLayerImputation, MSAGNet
from asign_assets.propagation import PropagationOperator, label_propagation, propagation_operator


@dataclass(frozen=True)
class TrainParams:
    preset: str = "cpu"
    hidden: int = 64
    heads: int = 4
    blocks: int = 1
    epochs: int = 200
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-2
    optimizer: Literal["adamw", "sgd"] = "adamw"
    known_frac: float = 0.25
    val_frac: float = 0.15
    patience: int = 20
    seed: int = 0
    iters: int = 20
    dropout: float = 0.1
    hops: int = 1
    use_ridge: bool = True
    use_propagation_input: bool = True
    threads: int = 1  # torch intra-op threads while training/imputing; 0 = leave torch's setting
    ensemble: int = 3  # members trained on different validation folds / known masks / inits; outputs averaged
    calibrate: bool = True  # per-gene linear calibration fitted on out-of-fold validation predictions
    calib_shrink: float = 20.0
    mask_pool: int = 16  # known masks (and their propagations) drawn once and cycled; 0 = a fresh one every epoch
    cli_lr_mult: float = 1.0  # learning-rate multiplier of the CLI blend weights (one scalar per gene)
    # "blocked": known masks and validation folds are whole spatial blocks of
    # ``block_pitches`` pitches, so labels reach a spot from outside its block as at
    # imputation; "random": spot-wise (default: blocked measured no better, docs/accuracy.md)
    mask: Literal["random", "blocked"] = "random"
    block_pitches: float = 2.0
    # propagated labels: rank-r reconstruction of the measured expression (lowrank.py);
    # -1: rank chosen by bi-cross-validation on the measured spots, 0: raw log counts
    # (default: propagation already averages many spots, denoising measured no gain)
    source_rank: int = 0
    edge_dz: bool = False  # the network's spot-graph edges see their depth difference (in pitches)
    # image ridge (the network's base) fitted to rank-r expression; -1: r chosen by the
    # ridge's leave-one-out per-gene PCC on the measured spots (baselines.choose_ridge_rank)
    ridge_rank: int = -1


PRESETS: dict[str, TrainParams] = {
    "cpu": TrainParams(),
    "gpu": TrainParams(preset="gpu", hidden=256, heads=8, blocks=2, epochs=400, patience=60, threads=0),
    "gpu-large": TrainParams(preset="gpu-large", hidden=1024, heads=8, blocks=3, epochs=600, patience=80, threads=0),
}


def params_for(preset: str = "cpu", **overrides: Any) -> TrainParams:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


@dataclass
class TrainResult:
    model_state: dict[str, Tensor]
    cli_state: dict[str, Tensor]
    params: TrainParams
    config: dict[str, int]
    curves: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0
    # members 1.. of an ensemble (member 0 is model_state/cli_state); each {"model_state", "cli_state"}
    extra_members: list[dict[str, dict[str, Tensor]]] = field(default_factory=list)
    # output name -> [2, G] (intercept, slope) applied to unmeasured rows by impute()
    calibration: dict[str, Tensor] = field(default_factory=dict)
    member_curves: list[list[dict]] = field(default_factory=list)
    member_best_epochs: list[int] = field(default_factory=list)

    @property
    def n_members(self) -> int:
        return 1 + len(self.extra_members)

    def build_members(self, device: torch.device) -> list[tuple[MSAGNet, CrossLayerImputation]]:
        states = [(self.model_state, self.cli_state)] + [(m["model_state"], m["cli_state"]) for m in self.extra_members]
        return [self._build(ms, cs, device) for ms, cs in states]

    def build(self, device: torch.device) -> tuple[MSAGNet, CrossLayerImputation]:
        """Member 0 (the only member without an ensemble)."""
        return self._build(self.model_state, self.cli_state, device)

    def _build(self, model_state: dict[str, Tensor], cli_state: dict[str, Tensor], device: torch.device) -> tuple[MSAGNet, CrossLayerImputation]:
        p = self.params
        model = MSAGNet(
            self.config["in_dim"], self.config["n_genes"], p.hidden, p.heads, p.blocks,
            aux_dim=self.config["aux_dim"], dropout=p.dropout,
            region_dim=self.config["region_dim"], global_dim=self.config["global_dim"],
            edge_dz=bool(self.config.get("edge_dz", False)),
        )
        model.load_state_dict(model_state)
        cli = CrossLayerImputation(self.config["n_genes"], p.iters)
        cli.load_state_dict(cli_state)
        return model.to(device).eval(), cli.to(device).eval()


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _deterministic(seed: int, threads: int = 0):
    """Seeded, deterministic algorithms and (optionally) a thread count, restored afterwards.

    Small graphs are dominated by per-op overhead: one thread is much faster than two
    contended ones on a shared 2-core machine, hence the cpu preset's ``threads=1``.
    """
    import torch.utils.deterministic as tud

    prev = torch.are_deterministic_algorithms_enabled()
    prev_fill = tud.fill_uninitialized_memory
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode NaN-fills every torch.empty (thousands of fills per epoch); our code
    # never reads uninitialised memory, so that costs ~7% of an epoch for nothing
    tud.fill_uninitialized_memory = False
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
        tud.fill_uninitialized_memory = prev_fill
        torch.set_num_threads(prev_threads)


def _standardise(x: Tensor) -> Tensor:
    x = x.float()
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)


def _pcc_rows(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / ((a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt() + 1e-8)


def _pcc_loss(pred: Tensor, y: Tensor) -> Tensor:
    """1 - mean of per-spot (across genes) and per-gene (across spots) PCC."""
    if pred.shape[0] < 2:
        return 1.0 - _pcc_rows(pred, y).mean()
    return 1.0 - 0.5 * (_pcc_rows(pred, y).mean() + _pcc_rows(pred.T, y.T).mean())


def _spot_loss(pred: Tensor, y: Tensor) -> Tensor:
    return 0.75 * torch.nn.functional.mse_loss(pred, y) + 0.25 * _pcc_loss(pred, y)


def _scatter_mean(x: Tensor, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
    s = torch.zeros(size, x.shape[1], device=x.device).index_add_(0, index, x)
    c = torch.zeros(size, device=x.device).index_add_(0, index, torch.ones_like(index, dtype=x.dtype))
    return s / c.clamp_min(1)[:, None], c


@dataclass
class _Sub:
    """A node-induced subgraph with its tiles relabelled locally."""

    nodes: Tensor
    edge_index: Tensor
    edge_type: Tensor
    edge_weight: Tensor
    regions: Tensor
    globals_: Tensor
    spot_region: Tensor
    spot_global: Tensor
    region_edge_index: Tensor
    global_edge_index: Tensor
    edge_dz: Tensor  # [E] |z_src - z_dst| in lattice pitches


def _tile_sub(tile_of_spot: Tensor, tile_edges: Tensor, n_tiles: int) -> tuple[Tensor, Tensor, Tensor]:
    tiles, local = torch.unique(tile_of_spot, return_inverse=True)
    ei, _ = subgraph(tiles, tile_edges, relabel_nodes=True, num_nodes=n_tiles)
    return tiles, local, ei


def _make_sub(graph: Data, nodes: Tensor, n_region: int, n_global: int, pitch: float = 1.0) -> _Sub:
    nodes = torch.sort(nodes).values
    ei, attr = subgraph(
        nodes, graph.edge_index, edge_attr=torch.stack([graph.edge_type.float(), graph.edge_weight.float()], 1),
        relabel_nodes=True, num_nodes=int(graph.num_nodes),
    )
    regions, sr, rei = _tile_sub(graph.spot_region[nodes].long(), graph.region_edge_index.long(), n_region)
    globs, sg, gei = _tile_sub(graph.spot_global[nodes].long(), graph.global_edge_index.long(), n_global)
    pos = getattr(graph, "pos", None)
    if pos is not None and pos.shape[1] > 2:
        z = pos[nodes, 2].float()
        dz = (z[ei[0]] - z[ei[1]]).abs() / pitch
    else:
        dz = torch.zeros(ei.shape[1])
    return _Sub(nodes, ei, attr[:, 0].long(), attr[:, 1], regions, globs, sr, sg, rei, gei, dz)


def _forward(model: MSAGNet, sub: _Sub, xs: Tensor, xr: Tensor, xg: Tensor, aux: Tensor | None, base: Tensor | None, dev: torch.device, out_index: Tensor | None = None) -> dict[str, Tensor]:
    """Network on a subgraph; with ``out_index`` (local positions) spot outputs only for those."""
    n = sub.nodes
    return model(
        xs[n].to(dev), xr[sub.regions].to(dev), xg[sub.globals_].to(dev),
        sub.edge_index.to(dev), sub.edge_type.to(dev), sub.edge_weight.to(dev),
        sub.region_edge_index.to(dev), sub.global_edge_index.to(dev),
        sub.spot_region.to(dev), sub.spot_global.to(dev),
        aux=None if aux is None else aux.to(dev), base=None if base is None else base.to(dev),
        out_index=None if out_index is None else out_index.to(dev), edge_dz=sub.edge_dz.to(dev),
    )


def _receptive(sub: _Sub, out_local: Tensor, blocks: int) -> _Sub:
    """``sub`` keeping only the edges that can reach ``out_local`` within ``blocks`` graph blocks.

    Block b reads the previous block's state of its in-neighbours, so outputs at
    ``out_local`` depend on edges whose target lies within ``blocks - 1`` hops of them;
    every other edge is dead work (most of it on big stacks, where a section's
    neighbourhood spans several other sections). Outputs at ``out_local`` are unchanged.
    """
    m = sub.nodes.numel()
    if blocks > 1:
        reach, _, _, _ = k_hop_subgraph(out_local, blocks - 1, sub.edge_index, num_nodes=m)
    else:
        reach = out_local
    keep_dst = torch.zeros(m, dtype=torch.bool)
    keep_dst[reach] = True
    keep = keep_dst[sub.edge_index[1]]
    return replace(sub, edge_index=sub.edge_index[:, keep], edge_type=sub.edge_type[keep], edge_weight=sub.edge_weight[keep],
                   edge_dz=sub.edge_dz[keep])


def _check_inputs(graph: Data, spot_emb: Tensor, y_measured: Tensor, measured_idx: Tensor) -> None:
    n = int(graph.num_nodes)
    if spot_emb.shape[0] != n:
        raise ValueError(f"spot_emb has {spot_emb.shape[0]} rows, graph has {n} nodes")
    if y_measured.shape[0] != measured_idx.numel():
        raise ValueError(f"y_measured has {y_measured.shape[0]} rows for {measured_idx.numel()} measured nodes")
    if measured_idx.numel() < 10:
        raise ValueError("need at least 10 measured spots to train")
    if int(measured_idx.max()) >= n or int(measured_idx.min()) < 0:
        raise ValueError("measured_idx out of range")


def lattice_pitch(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance of the spots (their lattice pitch)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, np.float64)
    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1])) or 1.0


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


def _source_basis(y: Tensor, rank: int) -> tuple[Tensor, Tensor] | None:
    """(mean, Vt_r) of ``y``'s rank-r SVD; None for raw labels (rank 0)."""
    if rank <= 0:
        return None
    mu = y.mean(0)
    _, _, vt = torch.linalg.svd(y - mu, full_matrices=False)
    return mu, vt[:rank]


def _denoise(y: Tensor, basis: tuple[Tensor, Tensor] | None) -> Tensor:
    """Project rows of ``y`` on a source basis (the rank-r reconstruction); identity for None."""
    if basis is None:
        return y
    mu, vt = basis
    return mu + ((y - mu) @ vt.T) @ vt


def _graph_pitch(graph: Data, measured_idx: Tensor) -> float:
    """Lattice pitch of the measured spots in the graph's common frame (1.0 without positions)."""
    pos = getattr(graph, "pos", None)
    return 1.0 if pos is None else lattice_pitch(pos[measured_idx, :2].double().numpy())


def _aux(prop: Tensor, known: Tensor, base: Tensor | None, params: TrainParams) -> Tensor | None:
    parts = []
    if params.use_propagation_input:
        parts += [prop - (base if base is not None else 0.0), known.float()[:, None]]
    return torch.cat(parts, 1) if parts else None


# ----------------------------------------------------------------------------- training


@dataclass
class _Prepared:
    """Everything members of an ensemble share: the training subgraph and its inputs."""

    sub: _Sub
    net_sub: _Sub  # sub with only the edges the measured spots' outputs depend on
    xs: Tensor
    xr: Tensor
    xg: Tensor
    spot_emb_sub: np.ndarray
    y_local: Tensor
    meas_local: Tensor
    op: PropagationOperator
    n_genes: int
    meas_xy: np.ndarray  # [n_meas, 2] measured spots in the common frame
    block_side: float  # um, side of the spatial blocks of blocked masks / folds
    source_rank: int  # rank of the propagated labels (0: raw)
    ridge_rank: int  # rank of the image ridge's targets (0: raw)
    rank_curve: list[float]  # BCV error per rank (empty unless chosen)


def _prepare(graph: Data, spot_emb: Tensor, region_emb: Tensor, global_emb: Tensor, y_measured: Tensor, measured_idx: Tensor, params: TrainParams, device: torch.device) -> _Prepared:
    n, G = int(graph.num_nodes), y_measured.shape[1]
    xs, xr, xg = _standardise(spot_emb), _standardise(region_emb), _standardise(global_emb)
    # bounded training subgraph: measured section + hops-hop neighbours
    nodes, _, _, _ = k_hop_subgraph(measured_idx, params.hops, graph.edge_index, num_nodes=n)
    pitch = _graph_pitch(graph, measured_idx)
    sub = _make_sub(graph, nodes, region_emb.shape[0], global_emb.shape[0], pitch)
    m = sub.nodes.numel()
    pos_of = torch.full((n,), -1, dtype=torch.long)
    pos_of[sub.nodes] = torch.arange(m)
    meas_local = pos_of[measured_idx]
    y_local = torch.zeros(m, G)
    y_local[meas_local] = y_measured
    op = propagation_operator(sub.edge_index.to(device), sub.edge_weight.to(device), m)
    net_sub = _receptive(sub, meas_local, params.blocks)
    meas_xy = graph.pos[measured_idx, :2].double().numpy() if getattr(graph, "pos", None) is not None else np.zeros((len(measured_idx), 2))
    rank, curve = params.source_rank, []
    if rank < 0:
        rank, err = choose_rank(y_measured.numpy())
        curve = [float(e) for e in err]
    side = params.block_pitches * pitch
    ridge_rank = params.ridge_rank
    if params.use_ridge and ridge_rank < 0:
        ridge_rank, _ = choose_ridge_rank(spot_emb[measured_idx].numpy(), y_measured.numpy())
    return _Prepared(sub, net_sub, xs, xr, xg, spot_emb[sub.nodes].numpy(), y_local, meas_local, op, G,
                     meas_xy, side, int(rank), int(max(ridge_rank, 0)), curve)


def _val_folds(n_meas: int, params: TrainParams, gen: torch.Generator, pp: _Prepared | None = None) -> list[Tensor]:
    """Validation positions (into the measured list) of each member.

    One member: a random ``val_frac``. An ensemble: disjoint folds of a
    ``max(ensemble, round(1 / val_frac))``-fold split, so members see different training
    spots and their validation predictions are out-of-fold (used for calibration).
    With ``mask="blocked"`` folds are whole spatial blocks, so early stopping and the
    calibration see spots whose labels come from outside their block, as at imputation.
    """
    if params.mask == "blocked" and pp is not None:
        n_folds = max(params.ensemble, int(round(1.0 / max(params.val_frac, 1e-3))), 2)
        folds = [torch.from_numpy(f) for f in blocked_folds(pp.meas_xy, pp.block_side, n_folds, gen) if len(f)]
        return folds[: max(1, params.ensemble)]
    perm = torch.randperm(n_meas, generator=gen)
    if params.ensemble <= 1:
        n_val = max(1, int(round(params.val_frac * n_meas)))
        return [perm[:n_val]]
    n_folds = max(params.ensemble, int(round(1.0 / max(params.val_frac, 1e-3))))
    return [perm[f::n_folds] for f in range(params.ensemble)]


def _train_member(pp: _Prepared, params: TrainParams, seed: int, val_pos: Tensor, device: torch.device) -> dict[str, Any]:
    """One member. Network outputs are computed for measured spots only (positions in the
    measured list), on ``pp.net_sub``; propagation runs over the whole training subgraph."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sub, m, G = pp.net_sub, pp.sub.nodes.numel(), pp.n_genes
    meas = pp.meas_local
    n_meas = meas.numel()
    is_val = torch.zeros(n_meas, dtype=torch.bool)
    is_val[val_pos] = True
    val_pos, tr_pos = torch.nonzero(is_val).flatten(), torch.nonzero(~is_val).flatten()
    y_local = pp.y_local
    y_m = y_local[meas]
    # propagated labels: rank-r reconstruction on a basis fitted on this member's training spots
    src_local = y_local.clone()
    src_local[meas] = _denoise(y_m, _source_basis(y_m[tr_pos], pp.source_rank))

    # image ridge regressor on training spots: LOO fits for them, predictions elsewhere
    base_m = None
    base = None
    if params.use_ridge:
        tr_np = meas[tr_pos].numpy()
        ridge = fit_reduced_rank_ridge(pp.spot_emb_sub[tr_np], y_local[meas[tr_pos]].numpy(), pp.ridge_rank)
        base_np = ridge.predict(pp.spot_emb_sub)
        base_np[tr_np] = ridge.loo
        base = torch.from_numpy(base_np)
        base_m = base[meas]

    model = MSAGNet(
        pp.xs.shape[1], G, params.hidden, params.heads, params.blocks,
        aux_dim=(G + 1) if params.use_propagation_input else 0, dropout=params.dropout,
        region_dim=pp.xr.shape[1], global_dim=pp.xg.shape[1], edge_dz=params.edge_dz,
    ).to(device)
    model.set_gene_bias(y_m[tr_pos].mean(0).to(device))
    cli = CrossLayerImputation(G, params.iters).to(device)
    opt_params = [{"params": list(model.parameters())}, {"params": list(cli.parameters()), "lr": params.lr * params.cli_lr_mult}]
    if params.optimizer == "sgd":
        opt = torch.optim.SGD(opt_params, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=params.epochs, power=0.9)
    else:
        opt = torch.optim.AdamW(opt_params, lr=params.lr, weight_decay=params.weight_decay)
        sched = None

    # tile targets from training spots only (val never leaks into the loss)
    m_region, m_global = sub.spot_region[meas], sub.spot_global[meas]
    rt, rcount = _scatter_mean(y_m[tr_pos], m_region[tr_pos], sub.regions.numel())
    gt, gcount = _scatter_mean(y_m[tr_pos], m_global[tr_pos], sub.globals_.numel())
    r_has, g_has = rcount > 0, gcount > 0
    # consistency: tiles vs the mean network output of their measured spots
    _, rc_all = _scatter_mean(y_m, m_region, sub.regions.numel())
    _, gc_all = _scatter_mean(y_m, m_global, sub.globals_.numel())
    r_in, g_in = (rc_all > 0).to(device), (gc_all > 0).to(device)
    m_region_d, m_global_d = m_region.to(device), m_global.to(device)

    y_dev = src_local.to(device)
    ym_dev = y_m.to(device)
    meas_d = meas.to(device)
    known_val = torch.zeros(m, dtype=torch.bool)
    known_val[meas[tr_pos]] = True
    prop_val = label_propagation(None, None, m, y_dev, known_val.to(device), iters=params.iters, operator=pp.op)
    aux_val = _aux(prop_val.cpu(), known_val, base, params)
    val_d = val_pos.to(device)
    vy = ym_dev[val_d]
    # validation needs outputs at the validation spots only: its own, much smaller edge set
    val_nodes = meas[val_pos]
    val_sub = _receptive(pp.sub, val_nodes, params.blocks)
    pv = prop_val[val_nodes.to(device)]
    base_v = None if base is None else base[val_nodes]

    best = (-np.inf, 0, None, None)
    curves: list[dict] = []
    n_known = max(1, int(round(params.known_frac * tr_pos.numel())))

    tr_xy = pp.meas_xy[tr_pos.numpy()]

    def draw_mask() -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if params.mask == "blocked":
            is_known = torch.from_numpy(blocked_known_mask(tr_xy, pp.block_side, params.known_frac, gen))
            k_pos, t_pos = tr_pos[is_known], tr_pos[~is_known]
        else:
            kp = torch.randperm(tr_pos.numel(), generator=gen)
            k_pos, t_pos = tr_pos[kp[:n_known]], tr_pos[kp[n_known:]]
        known = torch.zeros(m, dtype=torch.bool)
        known[meas[k_pos]] = True
        prop = label_propagation(None, None, m, y_dev, known.to(device), iters=params.iters, operator=pp.op)
        return known, t_pos.to(device), prop, _aux(prop.cpu(), known, base, params)

    # Propagation over the training neighbourhood dominates an epoch on big stacks; a pool
    # of masks drawn once (bounded to ~256 MB of propagated labels) and cycled bounds it.
    pool_n = params.mask_pool
    if pool_n > 0:
        pool_n = max(2, min(pool_n, params.epochs, int(2.56e8 // max(1, 2 * m * (G + 1) * 4))))
    pool = [draw_mask() for _ in range(pool_n)]
    for epoch in range(params.epochs):
        model.train()
        cli.train()
        known, target, prop, aux = pool[epoch % pool_n] if pool_n > 0 else draw_mask()
        out = _forward(model, sub, pp.xs, pp.xr, pp.xg, aux, base_m, device, meas)
        net = out["spot"]
        blend = cli(net, prop[meas_d])
        loss = _spot_loss(blend[target], ym_dev[target]) + 0.5 * _spot_loss(net[target], ym_dev[target])
        lr_ = 0.125 * (
            (_pcc_loss(out["region"][r_has], rt[r_has].to(device)) if int(r_has.sum()) > 1 else 0.0)
            + (_pcc_loss(out["global"][g_has], gt[g_has].to(device)) if int(g_has.sum()) > 1 else 0.0)
        )
        sr_mean, _ = _scatter_mean(net, m_region_d, sub.regions.numel())
        sg_mean, _ = _scatter_mean(net, m_global_d, sub.globals_.numel())
        cons = 0.125 * 0.5 * (
            torch.nn.functional.mse_loss(out["region"][r_in], sr_mean[r_in].detach())
            + torch.nn.functional.mse_loss(out["global"][g_in], sg_mean[g_in].detach())
        )
        total = loss + lr_ + cons
        opt.zero_grad()
        total.backward()
        opt.step()
        if sched is not None:
            sched.step()

        model.eval()
        cli.eval()
        with torch.no_grad():
            vo = _forward(model, val_sub, pp.xs, pp.xr, pp.xg, aux_val, base_v, device, val_nodes)
            vb = cli(vo["spot"], pv)
            val_loss = float(_spot_loss(vb, vy))
            val_pcc = float(_pcc_rows(vb.T, vy.T).mean()) if vb.shape[0] > 1 else float("nan")
        curves.append({
            "epoch": epoch, "train_loss": float(total.detach()), "val_loss": val_loss, "val_gene_pcc": val_pcc,
            "alpha_mean": float(cli.weight.detach().mean()),
        })
        score = val_pcc if np.isfinite(val_pcc) else -val_loss
        if score > best[0] + 1e-5:
            best = (score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()},
                    {k: v.detach().clone() for k, v in cli.state_dict().items()})
        elif epoch - best[1] >= params.patience:
            break
    # out-of-fold predictions of the best state on this member's validation spots
    model.load_state_dict(best[2])
    cli.load_state_dict(best[3])
    model.eval()
    cli.eval()
    with torch.no_grad():
        vnet = _forward(model, val_sub, pp.xs, pp.xr, pp.xg, aux_val, base_v, device, val_nodes)["spot"]
        vblend = cli(vnet, pv)
    return {
        "model_state": {k: v.cpu() for k, v in best[2].items()}, "cli_state": {k: v.cpu() for k, v in best[3].items()},
        "curves": curves, "best_epoch": best[1],
        "oof": {"model": vnet.cpu(), "blend": vblend.cpu()}, "oof_y": vy.cpu(),
    }


def fit_calibration(pred: Tensor, y: Tensor, shrink: float = 20.0) -> Tensor:
    """Per-gene (intercept, slope) [2, G] regressing held-out truth on predictions.

    The slope is the least-squares slope, pulled towards the all-gene slope by ``shrink``
    pseudo-spots (few held-out spots make per-gene slopes noisy) and clipped to [0, 1]:
    a pure shrinkage towards the gene's mean, so it lowers MSE where predictions are
    over-dispersed and never flips or inflates them (per-gene PCC is unchanged).
    """
    p = pred.double()
    t = y.double()
    pc, tc = p - p.mean(0), t - t.mean(0)
    sxx, sxy = pc.pow(2).sum(0), (pc * tc).sum(0)
    b_all = float(sxy.sum() / sxx.sum().clamp_min(1e-12))
    n = p.shape[0]
    b_gene = torch.where(sxx > 1e-12, sxy / sxx.clamp_min(1e-12), torch.full_like(sxx, b_all))
    b = ((n * b_gene + shrink * b_all) / (n + shrink)).clamp(0.0, 1.0)
    a = t.mean(0) - b * p.mean(0)
    return torch.stack([a, b]).float()


def residual_sigma(pred: Tensor, y: Tensor, calibration: Tensor) -> Tensor:
    """Per-gene RMS [G] of the calibrated out-of-fold residuals: the error level the
    uncertainty layer is scaled to (measured spots only; no other section's truth)."""
    cal = pred.double() * calibration[1].double() + calibration[0].double()
    return (cal - y.double()).pow(2).mean(0).sqrt().float()


def uncertainty_from_spread(spread: Tensor, known: Tensor, sigma: Tensor | None) -> Tensor:
    """Per-spot, per-gene uncertainty (an SD, in expression units): the spread scaled per
    gene so that its RMS over the imputed spots equals ``sigma`` (the out-of-fold error
    level); without ``sigma`` (no calibration) the raw spread. Known spots get 0."""
    out = spread.clone()
    imp = ~known
    if sigma is not None and bool(imp.any()):
        rms = out[imp].double().pow(2).mean(0).sqrt()
        scale = torch.where(rms > 1e-12, sigma.double() / rms.clamp_min(1e-12), torch.zeros_like(rms))
        out = (out.double() * scale).float()
    out[known] = 0.0
    return out


def train_model(
    graph: Data,
    spot_emb: Tensor,
    region_emb: Tensor,
    global_emb: Tensor,
    y_measured: Tensor,
    measured_idx: Tensor,
    params: TrainParams = TrainParams(),
    device: torch.device = torch.device("cpu"),
) -> TrainResult:
    """Train on the measured section only; returns the best (early-stopped) state(s).

    With ``params.ensemble = K`` trains K members (seeds ``seed .. seed+K-1``, disjoint
    validation folds); with ``params.calibrate`` fits a per-gene calibration of the
    ensemble's outputs on the pooled out-of-fold validation predictions.
    """
    t0 = time.perf_counter()
    spot_emb, region_emb, global_emb = (torch.as_tensor(x).float() for x in (spot_emb, region_emb, global_emb))
    y_measured = torch.as_tensor(y_measured).float()
    measured_idx = torch.as_tensor(measured_idx).long()
    _check_inputs(graph, spot_emb, y_measured, measured_idx)
    if params.ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {params.ensemble}")
    G = y_measured.shape[1]
    with _deterministic(params.seed, params.threads):
        gen = torch.Generator().manual_seed(params.seed)
        pp = _prepare(graph, spot_emb, region_emb, global_emb, y_measured, measured_idx, params, device)
        folds = _val_folds(measured_idx.numel(), params, gen, pp)
        members = [_train_member(pp, params, params.seed + i, folds[i], device) for i in range(len(folds))]
        calibration: dict[str, Tensor] = {}
        if params.calibrate:
            oy = torch.cat([mb["oof_y"] for mb in members])
            for key in ("model", "blend"):
                calibration[key] = fit_calibration(torch.cat([mb["oof"][key] for mb in members]), oy, params.calib_shrink)
            calibration["sigma"] = residual_sigma(torch.cat([mb["oof"]["blend"] for mb in members]), oy, calibration["blend"])
    config = {
        "in_dim": spot_emb.shape[1], "n_genes": G, "aux_dim": (G + 1) if params.use_propagation_input else 0,
        "region_dim": region_emb.shape[1], "global_dim": global_emb.shape[1], "source_rank": pp.source_rank, "ridge_rank": pp.ridge_rank,
        "edge_dz": int(params.edge_dz),
    }
    m0 = members[0]
    return TrainResult(
        model_state=m0["model_state"], cli_state=m0["cli_state"], params=params, config=config, curves=m0["curves"],
        seconds=time.perf_counter() - t0, best_epoch=m0["best_epoch"],
        extra_members=[{"model_state": mb["model_state"], "cli_state": mb["cli_state"]} for mb in members[1:]],
        calibration=calibration, member_curves=[mb["curves"] for mb in members],
        member_best_epochs=[mb["best_epoch"] for mb in members],
    )


# ----------------------------------------------------------------------------- inference


def impute(
    result: TrainResult,
    graph: Data,
    spot_emb: Tensor,
    region_emb: Tensor,
    global_emb: Tensor,
    y_measured: Tensor,
    measured_idx: Tensor,
    device: torch.device = torch.device("cpu"),
) -> dict[str, np.ndarray]:
    """Whole-volume imputation: 'model', 'propagation', 'blend' (and 'image_ridge') [N, G],
    and 'uncertainty' [N, G] (:func:`uncertainty_from_spread` of the SD over the members'
    network outputs and the propagation; 0 at measured spots).

    All measured spots are known; measured rows of every output keep the measured values.
    An ensemble's members are averaged ('model' and 'blend'), then the calibration (when
    trained) is applied. The network runs one section (+ its ``hops``-hop neighbours) at
    a time, so memory is bounded by the largest section's neighbourhood.
    """
    params = result.params
    spot_emb, region_emb, global_emb = (torch.as_tensor(x).float() for x in (spot_emb, region_emb, global_emb))
    y_measured = torch.as_tensor(y_measured).float()
    measured_idx = torch.as_tensor(measured_idx).long()
    _check_inputs(graph, spot_emb, y_measured, measured_idx)
    n, G = int(graph.num_nodes), y_measured.shape[1]
    if G != result.config["n_genes"]:
        raise ValueError(f"model was trained on {result.config['n_genes']} genes, got {G}")
    members = result.build_members(device)
    xs, xr, xg = _standardise(spot_emb), _standardise(region_emb), _standardise(global_emb)
    y_full = torch.zeros(n, G)
    y_full[measured_idx] = _denoise(y_measured, _source_basis(y_measured, int(result.config.get("source_rank", 0))))
    known = torch.zeros(n, dtype=torch.bool)
    known[measured_idx] = True
    with torch.no_grad(), _deterministic(params.seed, params.threads):
        prop = label_propagation(graph.edge_index.to(device), graph.edge_weight.to(device), n, y_full.to(device), known.to(device), iters=params.iters).cpu()
        base = None
        if params.use_ridge:
            ridge = fit_reduced_rank_ridge(spot_emb[measured_idx].numpy(), y_measured.numpy(), int(result.config.get("ridge_rank", 0)))
            base = torch.from_numpy(ridge.predict(spot_emb.numpy()))
        aux = _aux(prop, known, base, params)
        net = torch.zeros(n, G)
        net_sq = torch.zeros(n, G)
        blend = torch.zeros(n, G)
        sections = graph.section.long()
        pitch = _graph_pitch(graph, measured_idx)
        for s in torch.unique(sections):
            own = torch.nonzero(sections == s).flatten()
            nodes, _, _, _ = k_hop_subgraph(own, params.hops, graph.edge_index, num_nodes=n)
            sub = _make_sub(graph, nodes, region_emb.shape[0], global_emb.shape[0], pitch)
            own_local = torch.nonzero(sections[sub.nodes] == s).flatten()
            sub = _receptive(sub, own_local, params.blocks)
            tgt = sub.nodes[own_local]
            p_own = prop[tgt].to(device)
            for model, cli in members:
                out = _forward(model, sub, xs, xr, xg, None if aux is None else aux[sub.nodes],
                               None if base is None else base[tgt], device, own_local)["spot"]
                net[tgt] += out.cpu()
                net_sq[tgt] += out.cpu().pow(2)
                blend[tgt] += cli(out, p_own).cpu()
        # spread of the estimators the blend combines: every member's network and the propagation
        k = len(members) + 1
        mean_all = (net + prop) / k
        spread = ((net_sq + prop.pow(2)) / k - mean_all.pow(2)).clamp_min(0.0).sqrt()
        net /= len(members)
        blend /= len(members)
        for key, v in (("model", net), ("blend", blend)):
            cal = result.calibration.get(key)
            if cal is not None:
                v.mul_(cal[1]).add_(cal[0])
    res = {"model": net, "propagation": prop, "blend": blend}
    uncertainty = uncertainty_from_spread(spread, known, result.calibration.get("sigma"))
    if base is not None:
        res["image_ridge"] = base
    outp = {}
    for k, v in res.items():
        v[measured_idx] = y_measured
        outp[k] = v.numpy().astype(np.float32)
    outp["uncertainty"] = uncertainty.numpy().astype(np.float32)
    return outp


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Write the result to ``path`` (a temporary sibling renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "model_state": result.model_state, "cli_state": result.cli_state, "params": asdict(result.params),
        "config": result.config, "curves": result.curves, "seconds": result.seconds, "best_epoch": result.best_epoch,
        "extra_members": result.extra_members, "calibration": result.calibration,
        "member_curves": result.member_curves, "member_best_epochs": result.member_best_epochs,
    }, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> TrainResult:
    d = torch.load(Path(path), map_location="cpu", weights_only=True)
    known = set(TrainParams.__dataclass_fields__)
    return TrainResult(
        model_state=d["model_state"], cli_state=d["cli_state"],
        params=TrainParams(**{k: v for k, v in d["params"].items() if k in known}),
        config=dict(d["config"]), curves=list(d["curves"]), seconds=float(d["seconds"]), best_epoch=int(d["best_epoch"]),
        extra_members=list(d.get("extra_members", [])), calibration=dict(d.get("calibration", {})),
        member_curves=list(d.get("member_curves", [])), member_best_epochs=[int(x) for x in d.get("member_best_epochs", [])],
    )
