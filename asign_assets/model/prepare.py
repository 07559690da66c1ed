"""What every member of an ensemble shares (:class:`Prepared`): the bounded training
subgraph (measured spots + their ``hops``-hop neighbours, so cost does not grow with the
stack), its inputs and propagation operator, and the ranks chosen on the measured spots."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import k_hop_subgraph

from asign_assets.stats.ridge import choose_ridge_rank
from asign_assets.graph.build import GraphParams, shifted_copy
from asign_assets.graph.propagation import PropagationOperator, propagation_operator
from asign_assets.model.inputs import ModelInputs
from asign_assets.model.masks import graph_pitch
from asign_assets.model.params import TrainParams
from asign_assets.model.subgraph import Subgraph, make_sub, receptive
from asign_assets.stats.lowrank import choose_rank


@dataclass
class Prepared:
    """Everything members of an ensemble share: the training subgraph and its inputs."""

    sub: Subgraph
    net_sub: Subgraph  # sub with only the edges the measured spots' outputs depend on
    xs: Tensor
    xr: Tensor
    xg: Tensor
    spot_emb_sub: np.ndarray
    y_local: Tensor
    meas_local: Tensor
    op: PropagationOperator | None  # None only while the member job is shipped to a worker process
    n_genes: int
    meas_xy: np.ndarray  # [n_meas, 2] measured spots in the common frame
    block_side: float  # um, side of the spatial blocks of blocked masks / folds
    source_rank: int  # rank of the propagated labels (0: raw)
    ridge_rank: int  # rank of the image ridge's targets (0: raw)
    rank_curve: list[float]  # BCV error per rank (empty unless chosen)
    # regime "shifted": local positions of the measured spots' displaced copies (else None)
    copy_local: Tensor | None = None

    def label_nodes(self, pos: Tensor) -> Tensor:
        """Local nodes whose labels stand for the measured spots at ``pos`` (positions in the
        measured list) when they are known: the spots themselves, or their shifted copies."""
        return (self.meas_local if self.copy_local is None else self.copy_local)[pos]


def prepare(inputs: ModelInputs, params: TrainParams, device: torch.device) -> Prepared:
    """The shared set-up of :func:`asign_assets.model.train.train_model` (regime "shifted": the
    graph gains the displaced copies of the measured spots first)."""
    graph, spot_emb, y_measured, measured_idx = inputs.graph, inputs.spot_emb, inputs.y_measured, inputs.measured_idx
    n, G = inputs.num_nodes, inputs.n_genes
    xs, xr, xg = inputs.standardised()
    # bounded training subgraph: measured section + hops-hop neighbours
    nodes, _, _, _ = k_hop_subgraph(measured_idx, params.hops, graph.edge_index, num_nodes=n)
    pitch = graph_pitch(graph, measured_idx)
    spot_all = spot_emb
    if params.regime == "shifted":
        angle = float(torch.rand(1, generator=torch.Generator().manual_seed(params.seed))) * 2 * np.pi
        shift = params.shift_pitches * pitch * np.array([np.cos(angle), np.sin(angle)])
        graph = shifted_copy(graph, measured_idx, shift, GraphParams.for_lattice(pitch, pitch / 2))
        copies = torch.arange(n, n + measured_idx.numel())
        nodes = torch.cat([nodes, copies])
        xs, spot_all = torch.cat([xs, xs[measured_idx]]), torch.cat([spot_emb, spot_emb[measured_idx]])
        n = n + copies.numel()
    sub = make_sub(graph, nodes, inputs.region_emb.shape[0], inputs.global_emb.shape[0], pitch)
    m = sub.nodes.numel()
    pos_of = torch.full((n,), -1, dtype=torch.long)
    pos_of[sub.nodes] = torch.arange(m)
    meas_local = pos_of[measured_idx]
    copy_local = pos_of[copies] if params.regime == "shifted" else None
    y_local = torch.zeros(m, G)
    y_local[meas_local] = y_measured
    if copy_local is not None:
        y_local[copy_local] = y_measured
    op = propagation_operator(sub.edge_index.to(device), sub.edge_weight.to(device), m)
    net_sub = receptive(sub, meas_local, params.blocks)
    meas_xy = graph.pos[measured_idx, :2].double().numpy() if getattr(graph, "pos", None) is not None else np.zeros((len(measured_idx), 2))
    rank, curve = params.source_rank, []
    if rank < 0:
        rank, err = choose_rank(y_measured.numpy())
        curve = [float(e) for e in err]
    side = params.block_pitches * pitch
    ridge_rank = params.ridge_rank
    if params.use_ridge and ridge_rank < 0:
        ridge_rank, _ = choose_ridge_rank(spot_emb[measured_idx].numpy(), y_measured.numpy())
    return Prepared(sub, net_sub, xs, xr, xg, spot_all[sub.nodes].numpy(), y_local, meas_local, op, G,
                    meas_xy, side, int(rank), int(max(ridge_rank, 0)), curve, copy_local)
