"""Whole-volume imputation with a trained result.

ALL measured spots are known; propagation runs over the whole graph (sparse), the network
runs per section on the section plus its ``hops``-hop neighbours.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.utils import k_hop_subgraph

from asign_assets.stats.ridge import fit_reduced_rank_ridge
from asign_assets.graph.propagation import propagation_operator
from asign_assets.model.calibration import uncertainty_from_spread
from asign_assets.model.determinism import deterministic
from asign_assets.model.inputs import ModelInputs
from asign_assets.model.labels import aux_inputs, denoise, propagate, source_basis
from asign_assets.model.masks import graph_pitch
from asign_assets.model.params import TrainResult
from asign_assets.model.subgraph import forward, make_sub, receptive


def impute(result: TrainResult, inputs: ModelInputs, device: torch.device = torch.device("cpu")) -> dict[str, np.ndarray]:
    """Whole-volume imputation: 'model', 'propagation', 'blend' (and 'image_ridge') [N, G],
    and 'uncertainty' [N, G] (:func:`uncertainty_from_spread` of the SD over the members'
    network outputs and the propagation; 0 at measured spots).

    All measured spots are known; measured rows of every output keep the measured values.
    An ensemble's members are averaged ('model' and 'blend'), then the calibration (when
    trained) is applied. The network runs one section (+ its ``hops``-hop neighbours) at
    a time, so memory is bounded by the largest section's neighbourhood.
    """
    params = result.params
    graph, spot_emb, y_measured, measured_idx = inputs.graph, inputs.spot_emb, inputs.y_measured, inputs.measured_idx
    n, G = inputs.num_nodes, inputs.n_genes
    if G != result.config["n_genes"]:
        raise ValueError(f"model was trained on {result.config['n_genes']} genes, got {G}")
    members = result.build_members(device)
    xs, xr, xg = inputs.standardised()
    basis = source_basis(y_measured, int(result.config.get("source_rank", 0)))
    y_full = torch.zeros(n, G)
    y_full[measured_idx] = denoise(y_measured, basis)
    known = torch.zeros(n, dtype=torch.bool)
    known[measured_idx] = True
    with torch.no_grad(), deterministic(params.seed, params.threads):
        op = propagation_operator(graph.edge_index.to(device), graph.edge_weight.to(device), n)
        basis_d = None if basis is None else (basis[0].to(device), basis[1].to(device))
        prop = propagate(op, y_full.to(device), known.to(device), basis_d, params.iters).cpu()
        base = None
        if params.use_ridge:
            ridge = fit_reduced_rank_ridge(spot_emb[measured_idx].numpy(), y_measured.numpy(), int(result.config.get("ridge_rank", 0)))
            base = torch.from_numpy(ridge.predict(spot_emb.numpy()))
        aux = aux_inputs(prop, known, base, params)
        net = torch.zeros(n, G)
        net_sq = torch.zeros(n, G)
        blend = torch.zeros(n, G)
        sections = graph.section.long()
        pitch = graph_pitch(graph, measured_idx)
        for s in torch.unique(sections):
            own = torch.nonzero(sections == s).flatten()
            nodes, _, _, _ = k_hop_subgraph(own, params.hops, graph.edge_index, num_nodes=n)
            sub = make_sub(graph, nodes, inputs.region_emb.shape[0], inputs.global_emb.shape[0], pitch)
            own_local = torch.nonzero(sections[sub.nodes] == s).flatten()
            sub = receptive(sub, own_local, params.blocks)
            tgt = sub.nodes[own_local]
            p_own = prop[tgt].to(device)
            for model, cli in members:
                out = forward(model, sub, xs, xr, xg, None if aux is None else aux[sub.nodes],
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
