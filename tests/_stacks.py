"""A small registered stack with ASIGN-style graph and known truth, shared by model, baseline
and process-job tests."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch_geometric.data import Data


def make_stack(n_sections: int = 3, side: int = 10, n_genes: int = 12, dim: int = 16, seed: int = 0, noise: float = 0.1):
    """A registered stack: smooth expression field, features correlated with it, ASIGN-style graph.

    Returns (graph, spot_emb, region_emb, global_emb, y_all) with y_all the full truth.
    """
    rng = np.random.default_rng(seed)
    pitch = 200.0
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    xy0 = np.stack([gx.ravel(), gy.ravel()], 1) * pitch
    xy = np.concatenate([xy0 + rng.normal(0, 20, xy0.shape) for _ in range(n_sections)])
    sec = np.repeat(np.arange(n_sections), side * side)
    z = sec * 10.0
    pos = np.column_stack([xy, z])
    # smooth latent field (2 factors) -> genes; features = nonlinear mix of the factors
    u = xy / (side * pitch)
    lat = np.column_stack([np.sin(2.5 * u[:, 0] + 0.5) * np.cos(1.7 * u[:, 1]), (u[:, 0] - u[:, 1]) ** 2 * 3 - 0.5])
    W = rng.normal(size=(2, n_genes))
    y = 1.5 + lat @ W + noise * rng.normal(size=(len(xy), n_genes))
    y = np.clip(y, 0, None).astype(np.float32)
    P = rng.normal(size=(2, dim))
    emb = (np.tanh(lat @ P) + 0.3 * rng.normal(size=(len(xy), dim))).astype(np.float32)

    src, dst, et, ew = [], [], [], []
    for s in range(n_sections):
        idx = np.where(sec == s)[0]
        t = cKDTree(xy[idx])
        _, nn = t.query(xy[idx], k=5)
        for k in range(1, 5):
            src.append(idx[nn[:, k]]); dst.append(idx); et.append(np.zeros(len(idx))); ew.append(np.ones(len(idx)))
    for s in range(n_sections - 1):
        a, b = np.where(sec == s)[0], np.where(sec == s + 1)[0]
        t = cKDTree(xy[b])
        d, j = t.query(xy[a], k=2)
        w = np.exp(-(d**2) / (2 * 100.0**2))
        for k in range(2):
            for s_, d_ in ((a, b[j[:, k]]), (b[j[:, k]], a)):
                src.append(s_); dst.append(d_); et.append(np.ones(len(a))); ew.append(w[:, k])
    # similarity edges: most similar spot of every other section (cosine of features)
    en = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for s in range(n_sections):
        a = np.where(sec == s)[0]
        for s2 in range(n_sections):
            if s2 == s:
                continue
            b = np.where(sec == s2)[0]
            sim = en[a] @ en[b].T
            j = sim.argmax(1)
            src.append(b[j]); dst.append(a); et.append(np.full(len(a), 2)); ew.append(np.clip(sim.max(1), 0, 1))
    edge_index = torch.tensor(np.stack([np.concatenate(src), np.concatenate(dst)]), dtype=torch.long)
    # tiles: 2x2 spot blocks (regions) and 5x5 blocks (globals), per section
    def tiles(block):
        per = int(np.ceil(side / block))
        local = (gy.ravel() // block) * per + (gx.ravel() // block)
        ids = np.concatenate([local + s * per * per for s in range(n_sections)])
        cx, cy = np.meshgrid(np.arange(per), np.arange(per))
        cxy = np.stack([cx.ravel(), cy.ravel()], 1).astype(float)
        e = []
        for s in range(n_sections):
            t = cKDTree(cxy)
            pairs = np.array(sorted(t.query_pairs(1.01)))
            if len(pairs):
                off = s * per * per
                e.append(pairs.T + off); e.append(pairs[:, ::-1].T + off)
        ei = torch.tensor(np.concatenate(e, 1), dtype=torch.long)
        return torch.tensor(ids, dtype=torch.long), ei, n_sections * per * per
    sr, rei, R = tiles(2)
    sg, gei, Gt = tiles(5)
    region_emb = np.stack([emb[sr.numpy() == r].mean(0) for r in range(R)]).astype(np.float32)
    global_emb = np.stack([emb[sg.numpy() == g].mean(0) for g in range(Gt)]).astype(np.float32)
    graph = Data(
        edge_index=edge_index, edge_type=torch.tensor(np.concatenate(et), dtype=torch.long),
        edge_weight=torch.tensor(np.concatenate(ew), dtype=torch.float32), pos=torch.tensor(pos, dtype=torch.float32),
        section=torch.tensor(sec, dtype=torch.long), spot_region=sr, spot_global=sg,
        region_edge_index=rei, global_edge_index=gei, num_nodes=len(xy),
    )
    return graph, torch.from_numpy(emb), torch.from_numpy(region_emb), torch.from_numpy(global_emb), torch.from_numpy(y)
