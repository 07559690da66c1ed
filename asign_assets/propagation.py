"""Label propagation of Cross-Layer Imputation (CLI), as sparse products over an edge list.

Each iteration replaces every node's value by the weighted mean of its neighbours
(row-normalised adjacency) and then clamps the known nodes back to their labels.
Unknown nodes start at the mean known profile: a node with no path to any known node
(or with no edges at all) keeps that mean, the least-surprising fallback, and a constant
field stays exactly constant.
"""

from __future__ import annotations

import torch
from torch import Tensor


def row_normalised_adjacency(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor]:
    """(edge_index, weight) with weights of edges leaving the same target row summing to 1.

    Row ``i`` of the operator aggregates messages from sources ``edge_index[0]`` into
    targets ``edge_index[1] == i`` (torch_geometric's source-to-target convention).
    Rows with no (positive) incoming edge have no entries.
    """
    src, dst = edge_index[0].long(), edge_index[1].long()
    w = torch.ones(src.numel(), dtype=torch.float32, device=src.device) if edge_weight is None else edge_weight.float()
    w = w.clamp_min(0.0)
    deg = torch.zeros(num_nodes, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
    norm = w / deg[dst].clamp_min(1e-12)
    return torch.stack([src, dst]), norm


def propagate_once(edge_index: Tensor, norm_weight: Tensor, x: Tensor, fallback: Tensor) -> Tensor:
    """One application of the row-normalised operator; rows without edges take ``fallback``."""
    src, dst = edge_index[0], edge_index[1]
    out = torch.zeros_like(x).index_add_(0, dst, x[src] * norm_weight[:, None])
    has_in = torch.zeros(x.shape[0], dtype=norm_weight.dtype, device=x.device).index_add_(0, dst, norm_weight) > 0.5
    return torch.where(has_in[:, None], out, fallback)


def label_propagation(
    edge_index: Tensor,
    edge_weight: Tensor | None,
    num_nodes: int,
    y_known: Tensor,
    known_mask: Tensor,
    iters: int = 20,
    return_history: bool = False,
) -> Tensor | tuple[Tensor, list[float]]:
    """Propagate known labels (rows of ``y_known`` where ``known_mask``) over the graph.

    ``y_known`` is [N, G] (rows of unknown nodes are ignored) and ``known_mask`` [N] bool.
    Known nodes are clamped every iteration. With ``return_history`` also returns the max
    absolute change per iteration (which shrinks as the iteration converges).
    """
    known_mask = known_mask.bool()
    y = y_known.float()
    if not bool(known_mask.any()):
        raise ValueError("label_propagation needs at least one known node")
    mean = y[known_mask].mean(dim=0, keepdim=True)
    x = torch.where(known_mask[:, None], y, mean.expand_as(y))
    ei, nw = row_normalised_adjacency(edge_index, edge_weight, num_nodes)
    history: list[float] = []
    for _ in range(int(iters)):
        new = propagate_once(ei, nw, x, x)
        new = torch.where(known_mask[:, None], y, new)
        if return_history:
            history.append(float((new - x).abs().max()))
        x = new
    return (x, history) if return_history else x
