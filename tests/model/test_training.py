from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest
import torch

from asign_assets.stats.correlation import gene_pcc
from asign_assets.model.checkpoint import load_checkpoint, save_checkpoint
from asign_assets.model.inference import impute
from asign_assets.model.inputs import ModelInputs
from asign_assets.model.params import TrainParams, params_for
from asign_assets.model.train import train_model

from _stacks import make_stack

CPU = torch.device("cpu")
FAST = params_for("cpu", hidden=32, heads=4, blocks=1, epochs=60, patience=60, ensemble=1, calibrate=False)


@pytest.fixture(scope="module")
def stack():
    g, emb, remb, gemb, y = make_stack(n_sections=3, side=10, noise=0.3)
    meas = torch.nonzero(g.section == 1).flatten()
    return g, emb, remb, gemb, y, meas


@pytest.fixture(scope="module")
def trained(stack):
    g, emb, remb, gemb, y, meas = stack
    res = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), FAST, CPU)
    return res, impute(res, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)


def test_training_beats_mean_profile(stack, trained):
    g, emb, remb, gemb, y, meas = stack
    res, out = trained
    assert set(out) >= {"model", "propagation", "blend"}
    ev = (g.section != 1).numpy()
    truth = y.numpy()[ev]
    mean_profile = np.tile(y[meas].numpy().mean(0), (int(ev.sum()), 1))
    assert gene_pcc(mean_profile, truth) == 0.0
    assert gene_pcc(out["blend"][ev], truth) > 0.6
    assert gene_pcc(out["model"][ev], truth) > 0.6
    assert np.mean((out["blend"][ev] - truth) ** 2) < np.mean((mean_profile - truth) ** 2)
    # measured rows keep their measured values
    np.testing.assert_array_equal(out["blend"][meas.numpy()], y[meas].numpy())
    assert res.curves and {"epoch", "train_loss", "val_loss", "val_gene_pcc"} <= set(res.curves[0])
    assert 0 <= res.best_epoch < len(res.curves)


def test_deterministic_for_a_seed(stack, trained):
    g, emb, remb, gemb, y, meas = stack
    res2 = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), FAST, CPU)
    out2 = impute(res2, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)
    np.testing.assert_array_equal(out2["blend"], trained[1]["blend"])
    assert [c["train_loss"] for c in res2.curves] == [c["train_loss"] for c in trained[0].curves]


def test_truth_never_enters_training(stack, trained):
    g, emb, remb, gemb, y, meas = stack
    # the API has no argument for other sections' expression ...
    for fn in (train_model, impute, ModelInputs):
        assert "truth" not in " ".join(inspect.signature(fn).parameters)
    # ... full-stack expression is rejected ...
    with pytest.raises(ValueError):
        train_model(ModelInputs(g, emb, remb, gemb, y, meas), FAST, CPU)
    # ... and garbage truth attached to the graph changes nothing
    g2 = g.clone()
    g2.y = torch.randn_like(y) * 100
    res = train_model(ModelInputs(g2, emb, remb, gemb, y[meas], meas), FAST, CPU)
    out = impute(res, ModelInputs(g2, emb, remb, gemb, y[meas], meas), CPU)
    np.testing.assert_array_equal(out["blend"], trained[1]["blend"])


def test_checkpoint_roundtrip(tmp_path, stack, trained):
    g, emb, remb, gemb, y, meas = stack
    res, out = trained
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(res, path)
    back = load_checkpoint(path)
    assert back.params == res.params and back.best_epoch == res.best_epoch
    np.testing.assert_array_equal(impute(back, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)["blend"], out["blend"])


def test_presets():
    assert params_for("cpu") == TrainParams()
    assert params_for("gpu").hidden > params_for("cpu").hidden
    with pytest.raises(ValueError):
        params_for("tpu")


HER2ST = __import__("pathlib").Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "her2st"


@pytest.mark.slow
@pytest.mark.skipif(not HER2ST.is_dir(), reason=f"HER2ST data not found at {HER2ST}")
def test_patient_c_measured_c4_beats_baselines(tmp_path):
    """Whole chain on HER2ST patient C, measured C4: ASIGN beats every baseline on gene_pcc."""
    import importlib.util

    import polars as pl

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("patient_c_eval", root / "benchmarks" / "patient_c_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = HER2ST.resolve()
    prep = bench.prepare(data, tmp_path)
    graph = bench.build_graph(prep)
    df, timing = bench.run_choice(data, prep, graph, "C4", params_for("cpu"), CPU)
    g = {r["method"]: r["value"] for r in df.filter((pl.col("section") == "pooled") & (pl.col("metric") == "gene_pcc")).iter_rows(named=True)}
    for b in ("mean", "overlap", "similarity", "gauss_knn", "image_2d"):
        assert g["asign"] > g[b], (b, g)
    assert 0.2 < g["asign"] < 0.45  # above ~0.45 would suggest truth leaking into the inputs
    assert timing["train_s"] < 120


ENS = params_for("cpu", hidden=16, heads=2, blocks=1, epochs=12, patience=12, ensemble=3, calibrate=True)


@pytest.fixture(scope="module")
def ensemble_trained(stack):
    g, emb, remb, gemb, y, meas = stack
    res = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), ENS, CPU)
    return res, impute(res, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)


def test_ensemble_members_calibration_and_determinism(tmp_path, stack, ensemble_trained):
    g, emb, remb, gemb, y, meas = stack
    res, out = ensemble_trained
    assert res.n_members == 3 and len(res.member_curves) == 3 and len(res.member_best_epochs) == 3
    # members differ (seeds, validation folds) ...
    w0 = res.model_state["head_spot.1.weight"]
    assert not torch.equal(w0, res.extra_members[0]["model_state"]["head_spot.1.weight"])
    # ... and impute averages them: one member alone gives another answer
    single = impute(replace_members(res, []), ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)
    assert not np.allclose(single["model"], out["model"])
    # calibration slopes are shrinkage in [0, 1], one (intercept, slope) per gene
    for key in ("model", "blend"):
        cal = res.calibration[key]
        assert cal.shape == (2, y.shape[1]) and float(cal[1].min()) >= 0.0 and float(cal[1].max()) <= 1.0
    np.testing.assert_array_equal(out["blend"][meas.numpy()], y[meas].numpy())
    # deterministic for a seed, and the checkpoint keeps every member and the calibration
    res2 = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), ENS, CPU)
    np.testing.assert_array_equal(impute(res2, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)["blend"], out["blend"])
    save_checkpoint(res, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert back.n_members == 3 and set(back.calibration) == {"model", "blend", "sigma"}
    assert back.calibration["sigma"].shape == (res.config["n_genes"],) and (back.calibration["sigma"] > 0).all()
    np.testing.assert_array_equal(impute(back, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)["blend"], out["blend"])


def replace_members(res, extra):
    import dataclasses

    return dataclasses.replace(res, extra_members=extra, calibration={})


def test_calibration_reduces_held_out_mse():
    from asign_assets.model.calibration import fit_calibration

    g = torch.Generator().manual_seed(0)
    G = 30

    def draw(n):
        truth = torch.randn(n, G, generator=g) * torch.linspace(0.5, 2.0, G) + 3.0
        # over-dispersed predictions: signal plus as much independent noise again
        pred = truth + torch.randn(n, G, generator=g) * torch.linspace(0.5, 2.0, G)
        return pred, truth

    p_fit, t_fit = draw(200)
    cal = fit_calibration(p_fit, t_fit, shrink=20.0)
    p, t = draw(2000)  # fresh held-out spots
    before = float(((p - t) ** 2).mean())
    after = float(((cal[0] + cal[1] * p - t) ** 2).mean())
    assert after < 0.7 * before  # optimal slope is 0.5: MSE halves in expectation
    assert torch.allclose(cal[1], torch.full((G,), 0.5), atol=0.15)
    # per-gene PCC is untouched by a positive per-gene affine map
    r0 = gene_pcc(p.numpy(), t.numpy())
    r1 = gene_pcc((cal[0] + cal[1] * p).numpy(), t.numpy())
    assert abs(r0 - r1) < 1e-5


@pytest.mark.parametrize("blocks", [1, 2])
def test_receptive_pruning_keeps_outputs(stack, blocks):
    """Dropping edges that cannot reach the output spots leaves their predictions unchanged."""
    from asign_assets.model.msagnet import MSAGNet
    from asign_assets.model.subgraph import forward, make_sub, receptive

    g, emb, remb, gemb, y, meas = stack
    torch.manual_seed(0)
    sub = make_sub(g, torch.arange(int(g.num_nodes)), remb.shape[0], gemb.shape[0])
    model = MSAGNet(emb.shape[1], y.shape[1], 16, 2, blocks, region_dim=remb.shape[1], global_dim=gemb.shape[1]).eval()
    torch.nn.init.normal_(model.head_spot[1].weight)  # the head starts at zero; make outputs informative
    xs, xr, xg = ModelInputs(g, emb, remb, gemb, y[meas], meas).standardised()
    out_local = meas  # the whole graph is the sub: local == global ids
    pruned = receptive(sub, out_local, blocks)
    assert pruned.edge_index.shape[1] < sub.edge_index.shape[1] or blocks > 1
    with torch.no_grad():
        full = forward(model, sub, xs, xr, xg, None, None, CPU)["spot"][out_local]
        part = forward(model, pruned, xs, xr, xg, None, None, CPU, out_local)["spot"]
    torch.testing.assert_close(part, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 2])
def test_node_pruning_keeps_outputs_and_aligns_aux(stack, blocks):
    """Validation's subgraph: a few output spots keep their predictions (with per-node aux
    inputs, which must follow the kept nodes) after dropping the nodes no kept edge touches."""
    from asign_assets.model.msagnet import MSAGNet
    from asign_assets.model.subgraph import forward, make_sub, prune_nodes, receptive

    g, emb, remb, gemb, y, meas = stack
    torch.manual_seed(1)
    n = int(g.num_nodes)
    sub = make_sub(g, torch.arange(n), remb.shape[0], gemb.shape[0])
    G = y.shape[1]
    model = MSAGNet(emb.shape[1], G, 16, 2, blocks, aux_dim=G + 1, region_dim=remb.shape[1], global_dim=gemb.shape[1]).eval()
    torch.nn.init.normal_(model.head_spot[1].weight)
    xs, xr, xg = ModelInputs(g, emb, remb, gemb, y[meas], meas).standardised()
    aux = torch.randn(n, G + 1)
    out_local = meas[::7]
    rec = receptive(sub, out_local, blocks)
    pruned, out_new, keep = prune_nodes(rec, out_local)
    assert pruned.nodes.numel() < n  # a real reduction on this stack
    torch.testing.assert_close(pruned.nodes[out_new], sub.nodes[out_local], rtol=0, atol=0)
    with torch.no_grad():
        ref = forward(model, rec, xs, xr, xg, aux, None, CPU, out_local)["spot"]
        got = forward(model, pruned, xs, xr, xg, aux[keep], None, CPU, out_new)["spot"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_parallel_members_equal_sequential_members(stack, ensemble_trained):
    """Members trained in worker processes are the members trained one after another."""
    from asign_assets.runtime.parallel import available_cpus
    from asign_assets.model.ensemble import member_workers

    g, emb, remb, gemb, y, meas = stack
    seq, _ = ensemble_trained
    assert member_workers(replace(ENS, workers=2), 3, 10, CPU) == 2 and member_workers(ENS, 1, 10**6, CPU) == 1
    assert member_workers(ENS, 3, 100, CPU) == 1  # small neighbourhoods stay in process
    assert member_workers(ENS, 3, 10**6, CPU) == (3 if available_cpus() >= 2 else 1)
    assert member_workers(ENS, 3, 10**6, torch.device("cuda")) == 1  # one accelerator: members in turn
    with pytest.raises(ValueError, match="workers"):
        member_workers(replace(ENS, workers=-1), 3, 10**6, CPU)
    par = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), replace(ENS, workers=2), CPU)
    for a, b in zip([seq.model_state] + [m["model_state"] for m in seq.extra_members],
                    [par.model_state] + [m["model_state"] for m in par.extra_members]):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    assert par.member_best_epochs == seq.member_best_epochs
    assert par.config["member_processes"] == 2 and seq.config["member_processes"] == 1
    for key in ("model", "blend", "sigma"):
        torch.testing.assert_close(par.calibration[key], seq.calibration[key], rtol=0, atol=0)


def test_uncertainty_scaled_to_out_of_fold_error_and_zero_at_known_spots():
    from asign_assets.model.calibration import residual_sigma, uncertainty_from_spread

    g = torch.Generator().manual_seed(0)
    spread = torch.rand(50, 4, generator=g) + 0.1
    known = torch.zeros(50, dtype=torch.bool)
    known[:10] = True
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.0])
    u = uncertainty_from_spread(spread, known, sigma)
    assert (u[known] == 0).all()
    rms = u[~known].pow(2).mean(0).sqrt()
    assert torch.allclose(rms, sigma, atol=1e-5)
    # per gene a positive rescaling: the ranking of spots is the spread's
    assert torch.equal(torch.argsort(u[~known, 0]), torch.argsort(spread[~known, 0]))
    # without calibration: the raw spread
    assert torch.equal(uncertainty_from_spread(spread, known, None)[~known], spread[~known])
    # sigma = RMS of calibrated residuals
    pred = torch.randn(30, 3, generator=g)
    y = pred + 0.3
    cal = torch.stack([torch.zeros(3), torch.ones(3)])
    assert torch.allclose(residual_sigma(pred, y, cal), torch.full((3,), 0.3), atol=1e-5)


def _grid(side: int = 12, pitch: float = 200.0) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    return np.stack([gx.ravel(), gy.ravel()], 1) * pitch


def test_blocked_known_masks_are_whole_blocks_of_two_pitches():
    from asign_assets.model.masks import block_ids, blocked_known_mask, lattice_pitch

    xy = _grid()
    assert lattice_pitch(xy) == pytest.approx(200.0)
    side = 2 * 200.0
    fracs = []
    for seed in range(20):
        ids = block_ids(xy, side, torch.Generator().manual_seed(seed))
        known = blocked_known_mask(xy, side, 0.4, torch.Generator().manual_seed(seed))
        # every block is all known or all unknown, and blocks span up to 2x2 lattice spots
        for b in np.unique(ids):
            assert len(set(known[ids == b].tolist())) == 1
            span = xy[ids == b].max(0) - xy[ids == b].min(0)
            assert np.all(span <= 200.0 + 1e-9)
        assert known.any() and not known.all()
        fracs.append(known.mean())
    assert 0.3 < np.mean(fracs) < 0.5
    # an unknown spot inside a fully unknown 2x2 neighbourhood has no known spot within one pitch
    # for some masks: labels must come from more than one pitch away, unlike random masks
    far = 0
    for seed in range(20):
        known = blocked_known_mask(xy, side, 0.25, torch.Generator().manual_seed(seed))
        d = np.linalg.norm(xy[~known][:, None] - xy[known][None], axis=2).min(1)
        far += int((d > 200.0 + 1e-6).sum())
    assert far > 0


def test_blocked_folds_are_disjoint_unions_of_blocks():
    from asign_assets.model.masks import block_ids, blocked_folds

    xy = _grid()
    folds = blocked_folds(xy, 400.0, 5, torch.Generator().manual_seed(3))
    ids = block_ids(xy, 400.0, torch.Generator().manual_seed(3))
    allpos = np.concatenate(folds)
    assert len(allpos) == len(xy) and len(np.unique(allpos)) == len(xy)
    for f in folds:
        inside = np.zeros(len(xy), bool)
        inside[f] = True
        for b in np.unique(ids[f]):
            assert inside[ids == b].all()


def test_blocked_regime_and_denoised_sources_train_and_record_ranks(stack):
    g, emb, remb, gemb, y, meas = stack
    p = params_for("cpu", hidden=32, heads=4, blocks=1, epochs=30, patience=30, ensemble=2, calibrate=True,
                   mask="blocked", source_rank=-1, ridge_rank=-1, edge_dz=True)
    res = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), p, CPU)
    # the synthetic expression is 2 latent factors + noise: the chosen ranks are small
    assert 1 <= res.config["source_rank"] <= 4
    assert 1 <= res.config["ridge_rank"] <= 4
    assert res.config["edge_dz"] == 1
    out = impute(res, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)
    ev = (g.section != 1).numpy()
    assert gene_pcc(out["blend"][ev], y.numpy()[ev]) > 0.6
    raw = train_model(ModelInputs(g, emb, remb, gemb, y[meas], meas), replace(p, source_rank=0, ridge_rank=0), CPU)
    assert raw.config["source_rank"] == 0 and raw.config["ridge_rank"] == 0
    prop_raw = impute(raw, ModelInputs(g, emb, remb, gemb, y[meas], meas), CPU)["propagation"]
    assert not np.allclose(prop_raw[ev], out["propagation"][ev])


def test_low_rank_propagation_equals_propagating_the_reconstruction(stack):
    """Propagating the basis coefficients and reconstructing is exact for denoised sources."""
    from asign_assets.graph.propagation import label_propagation, propagation_operator
    from asign_assets.model.labels import denoise, propagate, source_basis

    g, emb, remb, gemb, y, meas = stack
    n = int(g.num_nodes)
    basis = source_basis(y[meas], 3)
    src = torch.zeros(n, y.shape[1])
    src[meas] = denoise(y[meas], basis)
    known = torch.zeros(n, dtype=torch.bool)
    known[meas[::3]] = True
    op = propagation_operator(g.edge_index, g.edge_weight, n)
    full = label_propagation(None, None, n, src, known, iters=20, operator=op)
    fast = propagate(op, src, known, basis, 20)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    assert float((full[~known] - src[meas].mean(0)).abs().max()) > 1e-2  # labels did move
    # without a basis it is plain propagation
    torch.testing.assert_close(propagate(op, src, known, None, 20), full)


def test_shifted_regime_learns_from_displaced_copies(stack):
    """Labels come only from the shifted copies (overlap edges), never from the spot itself."""
    from asign_assets.graph.edge_types import EDGE_OVERLAP
    from asign_assets.model.prepare import prepare

    g, emb, remb, gemb, y, meas = stack
    p = replace(FAST, regime="shifted", shift_pitches=0.5, epochs=30, patience=30)
    inputs = ModelInputs(g, emb, remb, gemb, y[meas], meas)
    pp = prepare(inputs, p, CPU)
    assert pp.copy_local is not None and pp.copy_local.numel() == meas.numel()
    assert torch.equal(pp.label_nodes(torch.arange(3)), pp.copy_local[:3])
    torch.testing.assert_close(pp.y_local[pp.copy_local], y[meas])
    is_copy = torch.zeros(pp.sub.nodes.numel(), dtype=torch.bool)
    is_copy[pp.copy_local] = True
    is_meas = torch.zeros_like(is_copy)
    is_meas[pp.meas_local] = True
    src, dst = pp.sub.edge_index
    joins = (is_copy[src] & is_meas[dst]) | (is_meas[src] & is_copy[dst])
    assert joins.any() and bool((pp.sub.edge_type[joins] == EDGE_OVERLAP).all())
    assert pp.sub.nodes.numel() == int(g.num_nodes) + meas.numel()
    res = train_model(inputs, p, CPU)
    out = impute(res, inputs, CPU)
    ev = (g.section != 1).numpy()
    assert gene_pcc(out["blend"][ev], y.numpy()[ev]) > 0.6
    assert res.params.regime == "shifted" and len(res.curves) >= 1


def test_graph_pitch_is_one_sections_lattice_with_several_measured_sections():
    """Two measured sections registered with a small offset: pooled, their spots lie ~15 um
    apart; the pitch that blocks and dz edges use must stay the 100 um lattice."""
    from torch_geometric.data import Data

    from asign_assets.model.masks import graph_pitch, lattice_pitch

    g = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0)), -1).reshape(-1, 2) * 100.0
    xy = np.concatenate([g, g + 15.0])
    section = torch.tensor([0] * len(g) + [1] * len(g))
    graph = Data(pos=torch.tensor(np.c_[xy, np.zeros(len(xy))]), section=section, num_nodes=len(xy))
    measured = torch.arange(len(xy))
    assert lattice_pitch(xy) == pytest.approx(np.hypot(15, 15))  # what pooling gave
    assert graph_pitch(graph, measured) == pytest.approx(100.0)
