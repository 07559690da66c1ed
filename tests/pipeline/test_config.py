"""Run configs derive their library parameters by field name, and the one layout table."""

from __future__ import annotations

import dataclasses

import pytest

from asign_assets.graph.build import GraphParams
from asign_assets.imaging.tiles import TileParams
from asign_assets.ingest.expression import ExpressionParams
from asign_assets.model.params import TrainParams, params_for
from asign_assets.pipeline.assets.imaging import EmbeddingsConfig, TilesConfig
from asign_assets.pipeline.assets.ingest import ExpressionConfig
from asign_assets.pipeline.assets.results import ModelConfig
from asign_assets.pipeline.assets.spatial import GraphConfig, RegistrationConfig
from asign_assets.pipeline.assets.volume import VolumeConfig
from asign_assets.pipeline.config import param_fields, params_from
from asign_assets.registration.params import RegistrationParams
from asign_assets.results.volume import VolumeParams
from asign_assets.storage import layout

# (config, library class, execution-only fields): every other config field is a library field
PAIRS = [
    (TilesConfig, TileParams, ("workers",)),
    (ExpressionConfig, ExpressionParams, ()),
    (RegistrationConfig, RegistrationParams, ()),
    (GraphConfig, GraphParams, ("similarity_radius_pitches",)),
    (VolumeConfig, VolumeParams, ()),
    (ModelConfig, TrainParams, ()),
]


@pytest.mark.parametrize("config, cls, execution", PAIRS, ids=[c.__name__ for c, _, _ in PAIRS])
def test_config_fields_are_library_fields(config, cls, execution):
    lib = {f.name for f in dataclasses.fields(cls)}
    assert set(config.model_fields) - set(execution) <= lib
    assert not set(execution) & lib  # an execution setting that is also a parameter would be dropped


def test_params_follow_the_config_by_name():
    p = params_from(TilesConfig(spot_size=112, region_downsample=2, workers=3), TileParams, execution=("workers",))
    assert (p.spot_size, p.region_downsample, p.global_size) == (112, 2, TileParams.global_size)
    e = params_from(ExpressionConfig(n_genes=40, selection="hvg"), ExpressionParams)
    assert (e.n_genes, e.selection, e.min_counts) == (40, "hvg", ExpressionParams.min_counts)
    v = params_from(VolumeConfig(), VolumeParams)  # None voxel sizes keep the library's automatic 0
    assert (v.voxel_xy_um, v.voxel_z_um) == (0.0, 0.0)
    r = params_from(RegistrationConfig(refine="bspline"), RegistrationParams)
    assert (r.refine, r.n_angles) == ("bspline", RegistrationConfig().n_angles)


def test_model_config_keeps_the_preset_where_unset():
    p = params_for(**param_fields(ModelConfig(epochs=7, mask="preset"), TrainParams))
    base = params_for("cpu")
    assert p.epochs == 7 and p.mask == base.mask and p.ensemble == base.ensemble


def test_a_stray_config_field_is_refused():
    with pytest.raises(TypeError, match="workers"):
        param_fields(TilesConfig(), TileParams)  # workers not declared as an execution setting


def test_encoder_is_a_choice_with_a_path():
    assert EmbeddingsConfig().encoder == "histology"
    with pytest.raises(Exception):
        EmbeddingsConfig(encoder="torchscript:/x.pt")
    from asign_assets.imaging.encoder_names import encoder_spec

    assert encoder_spec("torchscript", "/m.pt") == "torchscript:/m.pt" and encoder_spec("histology") == "histology"


def test_layout_names_every_output_once():
    outs = [o for a in layout.LAYOUT.values() for o in a.all_outputs]
    assert len(outs) == len(set(outs))
    assert layout.owner("evaluation_truth.zarr") == "evaluation" and layout.owner("registrations") == "registrations"
    for asset, files in layout.LAYOUT.items():
        for role, rel in files.files.items():
            assert rel.split("/")[0] in files.all_outputs, (asset, role)
    assert layout.path("registrations", "spots") == "registrations/spots.parquet"
