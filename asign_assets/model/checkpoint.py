"""Checkpoints: a :class:`~asign_assets.model.params.TrainResult` to and from one torch file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from asign_assets.model.params import TrainParams, TrainResult


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Write the result to ``path`` (a temporary sibling renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "model_state": result.model_state, "cli_state": result.cli_state, "params": asdict(result.params),
        "config": result.config, "curves": result.curves, "seconds": result.seconds, "best_epoch": result.best_epoch,
        "extra_members": result.extra_members, "calibration": result.calibration,
        "member_curves": result.member_curves, "member_best_epochs": result.member_best_epochs,
    }, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> TrainResult:
    """Read a checkpoint; parameters unknown to this version are dropped, missing ones take
    their defaults (older checkpoints)."""
    d = torch.load(Path(path), map_location="cpu", weights_only=True)
    known = set(TrainParams.__dataclass_fields__)
    return TrainResult(
        model_state=d["model_state"], cli_state=d["cli_state"],
        params=TrainParams(**{k: v for k, v in d["params"].items() if k in known}),
        config=dict(d["config"]), curves=list(d["curves"]), seconds=float(d["seconds"]), best_epoch=int(d["best_epoch"]),
        extra_members=list(d.get("extra_members", [])), calibration=dict(d.get("calibration", {})),
        member_curves=list(d.get("member_curves", [])), member_best_epochs=[int(x) for x in d.get("member_best_epochs", [])],
    )
