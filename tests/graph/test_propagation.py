from __future__ import annotations

import torch

from asign_assets.graph.propagation import label_propagation, row_normalised_adjacency


def _chain(n: int = 6):
    src = torch.arange(n - 1)
    ei = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], 1)
    return ei, torch.ones(ei.shape[1])


def test_row_normalised_weights_sum_to_one():
    ei, w = _chain()
    w = w * torch.arange(1, w.numel() + 1).float()
    ei2, nw = row_normalised_adjacency(ei, w, 6)
    rows = torch.zeros(6).index_add_(0, ei2[1], nw)
    assert torch.allclose(rows, torch.ones(6))


def test_known_nodes_unchanged_and_hand_values():
    ei, w = _chain(3)  # 0 - 1 - 2
    y = torch.tensor([[1.0, 10.0], [0.0, 0.0], [3.0, 30.0]])
    known = torch.tensor([True, False, True])
    out = label_propagation(ei, w, 3, y, known, iters=5)
    assert torch.equal(out[known], y[known])
    # node 1's neighbours are both known -> mean of them after one step
    assert torch.allclose(out[1], torch.tensor([2.0, 20.0]))


def test_constant_field_preserved_and_isolated_fallback():
    ei, w = _chain(5)
    # add an isolated node 5 and a component {6, 7} with no known node
    ei = torch.cat([ei, torch.tensor([[6, 7], [7, 6]])], 1)
    w = torch.cat([w, torch.ones(2)])
    y = torch.full((8, 3), 2.5)
    known = torch.zeros(8, dtype=torch.bool)
    known[[0, 3]] = True
    out = label_propagation(ei, w, 8, y, known, iters=20)
    assert torch.allclose(out, torch.full((8, 3), 2.5))
    # with different known values, unreachable nodes keep the known mean
    y2 = torch.zeros(8, 1)
    y2[0], y2[3] = 1.0, 3.0
    out2 = label_propagation(ei, w, 8, y2, known, iters=20)
    assert torch.allclose(out2[[5, 6, 7]], torch.full((3, 1), 2.0))


def test_converges():
    torch.manual_seed(0)
    n = 40
    ei, w = _chain(n)
    y = torch.randn(n, 4)
    known = torch.zeros(n, dtype=torch.bool)
    known[[0, 13, 27, 39]] = True
    out, hist = label_propagation(ei, w, n, y, known, iters=300, return_history=True)
    assert hist[-1] < 1e-3 * hist[0]
    assert all(b <= a + 1e-6 for a, b in zip(hist[10:], hist[11:]))
    # the fixed point on a chain is linear interpolation between known nodes
    assert torch.allclose(out[6], y[0] + (y[13] - y[0]) * 6 / 13, atol=1e-2)


def test_operator_reuse_matches_edge_list_path():
    from torch_geometric.utils import scatter

    from asign_assets.graph.propagation import propagation_operator

    g = torch.Generator().manual_seed(1)
    n = 50
    ei = torch.randint(0, n, (2, 400), generator=g)
    w = torch.rand(400, generator=g)
    w[:20] = 0.0  # zero-weight edges must not count as incoming edges
    y = torch.randn(n, 5, generator=g)
    known = torch.rand(n, generator=g) < 0.3
    op = propagation_operator(ei, w, n)
    a = label_propagation(None, None, n, y, known, iters=7, operator=op)
    b = label_propagation(ei, w, n, y, known, iters=7)
    # reference: the gather/scatter step (rows without a positive incoming edge keep their value)
    e2, nw = row_normalised_adjacency(ei, w, n)
    has_in = scatter(nw, e2[1], dim=0, dim_size=n, reduce="sum") > 0.5
    x = torch.where(known[:, None], y, y[known].mean(0, keepdim=True))
    for _ in range(7):
        step = scatter(x[e2[0]] * nw[:, None], e2[1], dim=0, dim_size=n, reduce="sum")
        x = torch.where(known[:, None], y, torch.where(has_in[:, None], step, x))
    assert torch.equal(a, b)
    assert torch.allclose(a, x, atol=1e-5)
    # reusing the operator with another known mask is the same as building it again
    known2 = ~known
    assert torch.equal(
        label_propagation(None, None, n, y, known2, iters=3, operator=op), label_propagation(ei, w, n, y, known2, iters=3)
    )
