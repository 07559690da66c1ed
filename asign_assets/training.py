"""Training MSAGNet + CLI on the measured section, and whole-volume imputation.

Only measured data enter here: ``y_measured`` rows for ``measured_idx`` nodes. Held-out
truth of other sections has no argument to come in through.

Training (one full-batch step per epoch on a bounded subgraph = measured section + its
``hops``-hop neighbours, so cost does not grow with the stack):

- A fixed random ``val_frac`` of measured spots is held out for early stopping.
- Each step a random ``known_frac`` of the remaining measured spots are "known"; labels are
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

Inference: ALL measured spots are known; propagation runs over the whole graph (sparse),
the network runs per section on the section plus its ``hops``-hop neighbours.
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

from asign_assets.baselines import fit_ridge
from asign_assets.msagnet import CrossLayerImputation, MSAGNet
from asign_assets.propagation import label_propagation


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
    patience: int = 40
    seed: int = 0
    iters: int = 20
    dropout: float = 0.1
    hops: int = 1
    use_ridge: bool = True
    use_propagation_input: bool = True
    threads: int = 1  # torch intra-op threads while training/imputing; 0 = leave torch's setting


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

    def build(self, device: torch.device) -> tuple[MSAGNet, CrossLayerImputation]:
        p = self.params
        model = MSAGNet(
            self.config["in_dim"], self.config["n_genes"], p.hidden, p.heads, p.blocks,
            aux_dim=self.config["aux_dim"], dropout=p.dropout,
            region_dim=self.config["region_dim"], global_dim=self.config["global_dim"],
        )
        model.load_state_dict(self.model_state)
        cli = CrossLayerImputation(self.config["n_genes"], p.iters)
        cli.load_state_dict(self.cli_state)
        return model.to(device).eval(), cli.to(device).eval()


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _deterministic(seed: int, threads: int = 0):
    """Seeded, deterministic algorithms and (optionally) a thread count, restored afterwards.

    Small graphs are dominated by per-op overhead: one thread is much faster than two
    contended ones on a shared 2-core machine, hence the cpu preset's ``threads=1``.
    """
    prev = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)
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


def _tile_sub(tile_of_spot: Tensor, tile_edges: Tensor, n_tiles: int) -> tuple[Tensor, Tensor, Tensor]:
    tiles, local = torch.unique(tile_of_spot, return_inverse=True)
    ei, _ = subgraph(tiles, tile_edges, relabel_nodes=True, num_nodes=n_tiles)
    return tiles, local, ei


def _make_sub(graph: Data, nodes: Tensor, n_region: int, n_global: int) -> _Sub:
    nodes = torch.sort(nodes).values
    ei, attr = subgraph(
        nodes, graph.edge_index, edge_attr=torch.stack([graph.edge_type.float(), graph.edge_weight.float()], 1),
        relabel_nodes=True, num_nodes=int(graph.num_nodes),
    )
    regions, sr, rei = _tile_sub(graph.spot_region[nodes].long(), graph.region_edge_index.long(), n_region)
    globs, sg, gei = _tile_sub(graph.spot_global[nodes].long(), graph.global_edge_index.long(), n_global)
    return _Sub(nodes, ei, attr[:, 0].long(), attr[:, 1], regions, globs, sr, sg, rei, gei)


def _forward(model: MSAGNet, sub: _Sub, xs: Tensor, xr: Tensor, xg: Tensor, aux: Tensor | None, base: Tensor | None, dev: torch.device) -> dict[str, Tensor]:
    n = sub.nodes
    return model(
        xs[n].to(dev), xr[sub.regions].to(dev), xg[sub.globals_].to(dev),
        sub.edge_index.to(dev), sub.edge_type.to(dev), sub.edge_weight.to(dev),
        sub.region_edge_index.to(dev), sub.global_edge_index.to(dev),
        sub.spot_region.to(dev), sub.spot_global.to(dev),
        aux=None if aux is None else aux.to(dev), base=None if base is None else base.to(dev),
    )


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


def _aux(prop: Tensor, known: Tensor, base: Tensor | None, params: TrainParams) -> Tensor | None:
    parts = []
    if params.use_propagation_input:
        parts += [prop - (base if base is not None else 0.0), known.float()[:, None]]
    return torch.cat(parts, 1) if parts else None


# ----------------------------------------------------------------------------- training


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
    """Train on the measured section only; returns the best (early-stopped) state."""
    t0 = time.perf_counter()
    spot_emb, region_emb, global_emb = (torch.as_tensor(x).float() for x in (spot_emb, region_emb, global_emb))
    y_measured = torch.as_tensor(y_measured).float()
    measured_idx = torch.as_tensor(measured_idx).long()
    _check_inputs(graph, spot_emb, y_measured, measured_idx)
    n, G = int(graph.num_nodes), y_measured.shape[1]
    with _deterministic(params.seed, params.threads):
        gen = torch.Generator().manual_seed(params.seed)
        xs, xr, xg = _standardise(spot_emb), _standardise(region_emb), _standardise(global_emb)

        # bounded training subgraph: measured section + hops-hop neighbours
        nodes, _, _, _ = k_hop_subgraph(measured_idx, params.hops, graph.edge_index, num_nodes=n)
        sub = _make_sub(graph, nodes, region_emb.shape[0], global_emb.shape[0])
        m = sub.nodes.numel()
        pos_of = torch.full((n,), -1, dtype=torch.long)
        pos_of[sub.nodes] = torch.arange(m)
        meas_local = pos_of[measured_idx]
        y_local = torch.zeros(m, G)
        y_local[meas_local] = y_measured

        perm = torch.randperm(measured_idx.numel(), generator=gen)
        n_val = max(1, int(round(params.val_frac * measured_idx.numel())))
        val_local, tr_local = meas_local[perm[:n_val]], meas_local[perm[n_val:]]

        # image ridge regressor on training spots: LOO fits for them, predictions elsewhere
        base = None
        if params.use_ridge:
            emb_np = spot_emb[sub.nodes].numpy()
            tr_np = tr_local.numpy()
            ridge = fit_ridge(emb_np[tr_np], y_local[tr_local].numpy())
            base_np = ridge.predict(emb_np)
            base_np[tr_np] = ridge.loo
            base = torch.from_numpy(base_np)

        model = MSAGNet(
            spot_emb.shape[1], G, params.hidden, params.heads, params.blocks,
            aux_dim=(G + 1) if params.use_propagation_input else 0, dropout=params.dropout,
            region_dim=region_emb.shape[1], global_dim=global_emb.shape[1],
        ).to(device)
        model.set_gene_bias(y_local[tr_local].mean(0).to(device))
        cli = CrossLayerImputation(G, params.iters).to(device)
        opt_params = list(model.parameters()) + list(cli.parameters())
        if params.optimizer == "sgd":
            opt = torch.optim.SGD(opt_params, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
            sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=params.epochs, power=0.9)
        else:
            opt = torch.optim.AdamW(opt_params, lr=params.lr, weight_decay=params.weight_decay)
            sched = None

        # tile targets from training spots only (val never leaks into the loss)
        rt, rcount = _scatter_mean(y_local[tr_local], sub.spot_region[tr_local], sub.regions.numel())
        gt, gcount = _scatter_mean(y_local[tr_local], sub.spot_global[tr_local], sub.globals_.numel())
        r_has, g_has = rcount > 0, gcount > 0

        ei_d, ew_d = sub.edge_index.to(device), sub.edge_weight.to(device)
        y_dev = y_local.to(device)
        known_val = torch.zeros(m, dtype=torch.bool)
        known_val[tr_local] = True
        prop_val = label_propagation(ei_d, ew_d, m, y_dev, known_val.to(device), iters=params.iters)

        best = (-np.inf, 0, None, None)
        curves: list[dict] = []
        n_known = max(1, int(round(params.known_frac * tr_local.numel())))
        for epoch in range(params.epochs):
            model.train()
            cli.train()
            kp = torch.randperm(tr_local.numel(), generator=gen)
            known = torch.zeros(m, dtype=torch.bool)
            known[tr_local[kp[:n_known]]] = True
            target_idx = tr_local[kp[n_known:]].to(device)
            prop = label_propagation(ei_d, ew_d, m, y_dev, known.to(device), iters=params.iters)
            out = _forward(model, sub, xs, xr, xg, _aux(prop.cpu(), known, base, params), base, device)
            net = out["spot"]
            blend = cli(net, prop)
            loss = _spot_loss(blend[target_idx], y_dev[target_idx]) + 0.5 * _spot_loss(net[target_idx], y_dev[target_idx])
            lr_ = 0.125 * (
                (_pcc_loss(out["region"][r_has], rt[r_has].to(device)) if int(r_has.sum()) > 1 else 0.0)
                + (_pcc_loss(out["global"][g_has], gt[g_has].to(device)) if int(g_has.sum()) > 1 else 0.0)
            )
            sr_mean, _ = _scatter_mean(net, sub.spot_region.to(device), sub.regions.numel())
            sg_mean, _ = _scatter_mean(net, sub.spot_global.to(device), sub.globals_.numel())
            cons = 0.125 * 0.5 * (
                torch.nn.functional.mse_loss(out["region"], sr_mean.detach())
                + torch.nn.functional.mse_loss(out["global"], sg_mean.detach())
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
                vo = _forward(model, sub, xs, xr, xg, _aux(prop_val.cpu(), known_val, base, params), base, device)
                vb = cli(vo["spot"], prop_val)[val_local.to(device)]
                vy = y_dev[val_local.to(device)]
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
    config = {
        "in_dim": spot_emb.shape[1], "n_genes": G, "aux_dim": (G + 1) if params.use_propagation_input else 0,
        "region_dim": region_emb.shape[1], "global_dim": global_emb.shape[1],
    }
    return TrainResult(
        model_state={k: v.cpu() for k, v in best[2].items()}, cli_state={k: v.cpu() for k, v in best[3].items()},
        params=params, config=config, curves=curves, seconds=time.perf_counter() - t0, best_epoch=best[1],
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
    """Whole-volume imputation: 'model', 'propagation', 'blend' (and 'image_ridge') [N, G].

    All measured spots are known; measured rows of every output keep the measured values.
    """
    params = result.params
    spot_emb, region_emb, global_emb = (torch.as_tensor(x).float() for x in (spot_emb, region_emb, global_emb))
    y_measured = torch.as_tensor(y_measured).float()
    measured_idx = torch.as_tensor(measured_idx).long()
    _check_inputs(graph, spot_emb, y_measured, measured_idx)
    n, G = int(graph.num_nodes), y_measured.shape[1]
    if G != result.config["n_genes"]:
        raise ValueError(f"model was trained on {result.config['n_genes']} genes, got {G}")
    model, cli = result.build(device)
    xs, xr, xg = _standardise(spot_emb), _standardise(region_emb), _standardise(global_emb)
    y_full = torch.zeros(n, G)
    y_full[measured_idx] = y_measured
    known = torch.zeros(n, dtype=torch.bool)
    known[measured_idx] = True
    with torch.no_grad(), _deterministic(params.seed, params.threads):
        prop = label_propagation(graph.edge_index.to(device), graph.edge_weight.to(device), n, y_full.to(device), known.to(device), iters=params.iters).cpu()
        base = None
        if params.use_ridge:
            ridge = fit_ridge(spot_emb[measured_idx].numpy(), y_measured.numpy())
            base = torch.from_numpy(ridge.predict(spot_emb.numpy()))
        aux = _aux(prop, known, base, params)
        net = torch.zeros(n, G)
        sections = graph.section.long()
        for s in torch.unique(sections):
            own = torch.nonzero(sections == s).flatten()
            nodes, _, _, _ = k_hop_subgraph(own, params.hops, graph.edge_index, num_nodes=n)
            sub = _make_sub(graph, nodes, region_emb.shape[0], global_emb.shape[0])
            out = _forward(model, sub, xs, xr, xg, None if aux is None else aux[sub.nodes],
                           None if base is None else base[sub.nodes], device)["spot"].cpu()
            is_own = sections[sub.nodes] == s
            net[sub.nodes[is_own]] = out[is_own]
        blend = cli(net.to(device), prop.to(device)).cpu()
    res = {"model": net, "propagation": prop, "blend": blend}
    if base is not None:
        res["image_ridge"] = base
    outp = {}
    for k, v in res.items():
        v = v.clone()
        v[measured_idx] = y_measured
        outp[k] = v.numpy().astype(np.float32)
    return outp


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Write the result to ``path`` (a temporary sibling renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "model_state": result.model_state, "cli_state": result.cli_state, "params": asdict(result.params),
        "config": result.config, "curves": result.curves, "seconds": result.seconds, "best_epoch": result.best_epoch,
    }, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> TrainResult:
    d = torch.load(Path(path), map_location="cpu", weights_only=True)
    return TrainResult(
        model_state=d["model_state"], cli_state=d["cli_state"], params=TrainParams(**d["params"]),
        config=dict(d["config"]), curves=list(d["curves"]), seconds=float(d["seconds"]), best_epoch=int(d["best_epoch"]),
    )
