"""MSAGNet (Multi-level Spatial Attention Graph Network) and Cross-Layer Imputation.

Per spot, following DESIGN.md section 2:

1. multi-resolution level: the spot token cross-attends (multi-head) to the feature of its
   region tile and, separately, of its global tile; the two outputs are summed into it;
2. 3D level: graph attention blocks on the global tile graph, the region tile graph and the
   3D spot graph (:class:`EdgeAttentionBlock`: attention-weighted neighbour mean whose
   logits see the edge type and add ``log(edge_weight)``, so a weight-w edge counts w times);
3. patch-self level: a transformer layer over the stacked tokens [global, region, spot] of
   each spot with a causal mask, i.e. conditioned top-down global -> region -> spot;
4. per-level gene heads (LayerNorm + Linear to G genes).

The spot head is residual on an optional ``base`` prediction (the image ridge regressor fitted
in member.py) and starts at zero, so an untrained network equals its base. Optional ``aux``
spot inputs (propagated labels, known indicator) enter the spot token additively.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from asign_assets.graph.edge_types import N_EDGE_TYPES

EDGE_DIM = 1 + N_EDGE_TYPES  # [weight, one-hot type]


def edge_features(
    edge_type: Tensor | None, edge_weight: Tensor | None, num_edges: int, device: torch.device,
    edge_dz: Tensor | None = None, with_dz: bool = False,
) -> Tensor:
    """[E, EDGE_DIM] edge attributes: the weight and a one-hot edge type (graph.edge_types).

    With ``with_dz`` a fifth column: the edge's depth difference (in lattice pitches; 0
    where ``edge_dz`` is None), so attention can trust a sibling section more than a
    section further away.
    """
    t = torch.zeros(num_edges, dtype=torch.long, device=device) if edge_type is None else edge_type.long()
    w = torch.ones(num_edges, device=device) if edge_weight is None else edge_weight.float()
    cols = [w[:, None], F.one_hot(t, N_EDGE_TYPES).float()]
    if with_dz:
        cols.append(torch.zeros(num_edges, 1, device=device) if edge_dz is None else edge_dz.float()[:, None])
    return torch.cat(cols, dim=1)


class EdgeAttentionBlock(MessagePassing):
    """Pre-norm residual block: weighted graph attention (mean-style aggregation) + FFN."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0, edge_dim: int = EDGE_DIM):
        super().__init__(aggr="add", node_dim=0)
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be divisible by heads {heads}")
        self.heads, self.dh = heads, hidden // heads
        self.norm1 = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.e = nn.Linear(edge_dim, heads)
        self.self_lin = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        h = self.norm1(x)
        n = h.shape[0]
        q = self.q(h).view(n, self.heads, self.dh)
        k = self.k(h).view(n, self.heads, self.dh)
        v = self.v(h).view(n, self.heads, self.dh)
        agg = self.propagate(edge_index, q=q, k=k, v=v, edge_attr=edge_attr, size=None).reshape(n, -1)
        x = x + self.drop(self.out(agg + self.self_lin(h)))
        return x + self.drop(self.ffn(self.norm2(x)))

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, edge_attr: Tensor, index: Tensor, ptr, size_i) -> Tensor:
        logit = (q_i * k_j).sum(-1) / math.sqrt(self.dh) + self.e(edge_attr)
        logit = logit + torch.log(edge_attr[:, :1].clamp_min(1e-6))
        alpha = softmax(logit, index, ptr, size_i)
        return v_j * alpha.unsqueeze(-1)


def _single_key_attention(att: nn.MultiheadAttention, kv: Tensor) -> Tensor:
    """``att(q, kv, kv)`` for one key per query, without the attention arithmetic.

    Softmax over a single key is exactly 1, so every head returns its value projection and
    the output is ``out_proj(v_proj(kv))`` whatever the query (same parameters as the
    module; dropout on the single attention weight drops the whole message).
    """
    d = att.embed_dim
    v = F.linear(kv, att.in_proj_weight[2 * d :], att.in_proj_bias[2 * d :] if att.in_proj_bias is not None else None)
    out = att.out_proj(v)
    if att.training and att.dropout > 0:
        keep = torch.rand(out.shape[0], 1, device=out.device) >= att.dropout
        out = out * keep / (1.0 - att.dropout)
    return out


class MSAGNet(nn.Module):
    def __init__(
        self,
        in_dim: int,
        n_genes: int,
        hidden: int = 64,
        heads: int = 4,
        blocks: int = 2,
        aux_dim: int = 0,
        dropout: float = 0.1,
        region_dim: int | None = None,
        global_dim: int | None = None,
        edge_dz: bool = False,
    ):
        super().__init__()
        self.n_genes, self.hidden, self.aux_dim, self.edge_dz = n_genes, hidden, aux_dim, edge_dz

        def proj(d: int) -> nn.Module:
            return nn.Sequential(nn.LayerNorm(d), nn.Dropout(dropout), nn.Linear(d, hidden), nn.GELU())

        self.in_spot = proj(in_dim)
        self.in_region = proj(region_dim or in_dim)
        self.in_global = proj(global_dim or in_dim)
        self.in_aux = nn.Linear(aux_dim, hidden) if aux_dim else None
        self.att_region = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.att_global = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.g_blocks = nn.ModuleList(EdgeAttentionBlock(hidden, heads, dropout) for _ in range(blocks))
        self.r_blocks = nn.ModuleList(EdgeAttentionBlock(hidden, heads, dropout) for _ in range(blocks))
        self.s_blocks = nn.ModuleList(EdgeAttentionBlock(hidden, heads, dropout, EDGE_DIM + int(edge_dz)) for _ in range(blocks))
        self.level_emb = nn.Parameter(torch.zeros(3, hidden))
        self.top_down = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.head_spot = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n_genes))
        self.head_region = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n_genes))
        self.head_global = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n_genes))
        nn.init.zeros_(self.head_spot[1].weight)
        nn.init.zeros_(self.head_spot[1].bias)
        self.register_buffer("causal", torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1), persistent=False)

    def set_gene_bias(self, mean_profile: Tensor) -> None:
        """Start the coarse-level heads at the mean profile (the spot head is residual)."""
        with torch.no_grad():
            self.head_region[1].bias.copy_(mean_profile)
            self.head_global[1].bias.copy_(mean_profile)

    def forward(
        self,
        x_spot: Tensor,
        x_region: Tensor,
        x_global: Tensor,
        edge_index: Tensor,
        edge_type: Tensor | None,
        edge_weight: Tensor | None,
        region_edge_index: Tensor,
        global_edge_index: Tensor,
        spot_region: Tensor,
        spot_global: Tensor,
        aux: Tensor | None = None,
        base: Tensor | None = None,
        out_index: Tensor | None = None,
        edge_dz: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Gene predictions per level: ``spot`` [N, G], ``region`` [R, G], ``global`` [Gt, G].

        With ``out_index`` the spot level (top-down layer and head) runs only for those
        spots and ``spot`` is [len(out_index), G] (``base``, when given, is for them too):
        the graph blocks still read every node, the rest is the caller's context.
        """
        dev = x_spot.device
        hs = self.in_spot(x_spot)
        if self.in_aux is not None:
            if aux is None:
                raise ValueError("this MSAGNet was built with aux inputs; pass aux")
            hs = hs + self.in_aux(aux)
        hr = self.in_region(x_region)
        hg = self.in_global(x_global)
        # 2. 3D level on the tile graphs first (their outputs feed the spots' attention)
        ea_r = edge_features(None, None, region_edge_index.shape[1], dev)
        ea_g = edge_features(None, None, global_edge_index.shape[1], dev)
        for blk in self.g_blocks:
            hg = blk(hg, global_edge_index, ea_g)
        for blk in self.r_blocks:
            hr = blk(hr, region_edge_index, ea_r)
        # 1. multi-resolution cross-attention (outputs summed)
        hs = hs + _single_key_attention(self.att_region, hr[spot_region]) + _single_key_attention(self.att_global, hg[spot_global])
        # 2. 3D spot graph
        ea_s = edge_features(edge_type, edge_weight, edge_index.shape[1], dev, edge_dz, self.edge_dz)
        for blk in self.s_blocks:
            hs = blk(hs, edge_index, ea_s)
        if out_index is not None:
            hs, spot_global, spot_region = hs[out_index], spot_global[out_index], spot_region[out_index]
        # 3. top-down transformer over [global, region, spot]
        tokens = torch.stack([hg[spot_global], hr[spot_region], hs], dim=1) + self.level_emb
        hs = self.top_down(tokens, src_mask=self.causal)[:, 2]
        spot = self.head_spot(hs)
        if base is not None:
            spot = spot + base
        return {"spot": spot, "region": self.head_region(hr), "global": self.head_global(hg)}


class CrossLayerImputation(nn.Module):
    """Per-gene blend of label propagation and the network.

    ``out = sigmoid(alpha_g) * propagated + (1 - sigmoid(alpha_g)) * network``. DESIGN.md's
    "alpha init 0.5" is read as the *blend weight* 0.5, i.e. raw ``alpha = 0`` (``alpha_init``
    sets the raw value).
    """

    def __init__(self, n_genes: int, iters: int = 20, alpha_init: float = 0.0):
        super().__init__()
        self.iters = iters
        self.alpha = nn.Parameter(torch.full((n_genes,), float(alpha_init)))

    @property
    def weight(self) -> Tensor:
        return torch.sigmoid(self.alpha)

    def forward(self, network: Tensor, propagated: Tensor) -> Tensor:
        w = self.weight
        return w * propagated + (1.0 - w) * network
