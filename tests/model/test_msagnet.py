"""MSAGNet / CLI shapes and behaviour on a small synthetic stack (tests/_stacks.py)."""

from __future__ import annotations

import torch

from asign_assets.model.msagnet import CrossLayerImputation, MSAGNet

from _stacks import make_stack


def _forward(model, g, emb, remb, gemb, aux=None, base=None):
    return model(emb, remb, gemb, g.edge_index, g.edge_type, g.edge_weight, g.region_edge_index,
                 g.global_edge_index, g.spot_region, g.spot_global, aux=aux, base=base)


def test_forward_shapes_and_residual_start():
    g, emb, remb, gemb, y = make_stack()
    torch.manual_seed(0)
    model = MSAGNet(emb.shape[1], y.shape[1], hidden=32, heads=4, blocks=2, aux_dim=y.shape[1] + 1).eval()
    aux = torch.randn(g.num_nodes, y.shape[1] + 1)
    base = torch.randn(g.num_nodes, y.shape[1])
    out = _forward(model, g, emb, remb, gemb, aux=aux, base=base)
    assert out["spot"].shape == (g.num_nodes, y.shape[1])
    assert out["region"].shape == (remb.shape[0], y.shape[1])
    assert out["global"].shape == (gemb.shape[0], y.shape[1])
    # the spot head starts at zero: an untrained network returns its base exactly
    assert torch.allclose(out["spot"], base)
    out["spot"].sum().backward() if out["spot"].requires_grad else None


def test_edge_weights_and_types_change_output():
    g, emb, remb, gemb, y = make_stack()
    torch.manual_seed(0)
    model = MSAGNet(emb.shape[1], y.shape[1], hidden=32, heads=4, blocks=1).eval()
    torch.nn.init.normal_(model.head_spot[1].weight)
    ref = _forward(model, g, emb, remb, gemb)["spot"]
    g2 = g.clone()
    g2.edge_weight = g.edge_weight * torch.linspace(0.1, 1.0, g.edge_weight.numel())
    assert not torch.allclose(_forward(model, g2, emb, remb, gemb)["spot"], ref)
    g3 = g.clone()
    g3.edge_type = torch.zeros_like(g.edge_type)
    assert not torch.allclose(_forward(model, g3, emb, remb, gemb)["spot"], ref)


def test_cli_blend_init_half():
    cli = CrossLayerImputation(5)
    assert torch.allclose(cli.weight, torch.full((5,), 0.5))
    net, prop = torch.zeros(3, 5), torch.ones(3, 5)
    assert torch.allclose(cli(net, prop), torch.full((3, 5), 0.5))


def test_depth_edge_feature_changes_attention_only_when_enabled():
    from asign_assets.model.msagnet import MSAGNet

    g, emb, remb, gemb, _ = make_stack(n_sections=2, side=10)
    torch.manual_seed(0)
    model = MSAGNet(emb.shape[1], 12, 32, 4, 1, edge_dz=True).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head_spot[1].weight)
        for blk in model.s_blocks:
            blk.e.weight[:, -1] = 5.0  # attention logits depend on the dz column
        args = (emb, remb, gemb, g.edge_index, g.edge_type, g.edge_weight, g.region_edge_index, g.global_edge_index, g.spot_region, g.spot_global)
        dz = (g.pos[g.edge_index[0], 2] - g.pos[g.edge_index[1], 2]).abs() / 200.0
        near = model(*args, edge_dz=dz)["spot"]
        far = model(*args, edge_dz=dz * 10)["spot"]
        assert not torch.allclose(near, far)
        plain = MSAGNet(emb.shape[1], 12, 32, 4, 1).eval()
        assert plain.s_blocks[0].e.in_features == 4 and model.s_blocks[0].e.in_features == 5
        torch.nn.init.normal_(plain.head_spot[1].weight)
        torch.testing.assert_close(plain(*args, edge_dz=dz)["spot"], plain(*args, edge_dz=dz * 10)["spot"])
