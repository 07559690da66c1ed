"""Node-induced subgraphs of the 3D graph and the network run on them.

Cost: the network computes spot outputs only where they are needed (the measured spots in
training, one section at imputation) and keeps only the edges those outputs depend on
(:func:`receptive`); validation runs on the validation spots' own pruned subgraph
(:func:`prune_nodes`). Training therefore scales with the measured section's
neighbourhood, not with the stack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import k_hop_subgraph, subgraph

from asign_assets.model.msagnet import MSAGNet


@dataclass
class Subgraph:
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


def make_sub(graph: Data, nodes: Tensor, n_region: int, n_global: int, pitch: float = 1.0) -> Subgraph:
    """The subgraph ``graph`` induces on ``nodes`` (sorted), with the tiles they lie in and
    each edge's depth difference in units of ``pitch``."""
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
    return Subgraph(nodes, ei, attr[:, 0].long(), attr[:, 1], regions, globs, sr, sg, rei, gei, dz)


def forward(model: MSAGNet, sub: Subgraph, xs: Tensor, xr: Tensor, xg: Tensor, aux: Tensor | None, base: Tensor | None, dev: torch.device, out_index: Tensor | None = None) -> dict[str, Tensor]:
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


def receptive(sub: Subgraph, out_local: Tensor, blocks: int) -> Subgraph:
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


def prune_nodes(sub: Subgraph, out_local: Tensor) -> tuple[Subgraph, Tensor, Tensor]:
    """``sub`` without the spot nodes no kept edge touches (apply after :func:`receptive`).

    Returns (pruned sub, ``out_local`` in its numbering, ``keep``: the kept nodes' positions
    in ``sub``, to subset per-node inputs such as ``aux``). Tile nodes and tile graphs are
    kept whole, so outputs at ``out_local`` are unchanged: validation reads a few hundred
    spots of a neighbourhood of tens of thousands, and every node costs projections.
    """
    m = sub.nodes.numel()
    keep_mask = torch.zeros(m, dtype=torch.bool)
    keep_mask[out_local] = True
    keep_mask[sub.edge_index.flatten()] = True
    keep = torch.nonzero(keep_mask).flatten()
    new_of = torch.full((m,), -1, dtype=torch.long)
    new_of[keep] = torch.arange(keep.numel())
    pruned = replace(sub, nodes=sub.nodes[keep], edge_index=new_of[sub.edge_index],
                     spot_region=sub.spot_region[keep], spot_global=sub.spot_global[keep])
    return pruned, new_of[out_local], keep
