"""What the model reads (:class:`ModelInputs`): only measured data enter here, so held-out
truth of other sections has no argument to come in through."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Data

from asign_assets.stats.correlation import standardise


@dataclass(frozen=True)
class ModelInputs:
    """What training and imputation read: the 3D graph, the three embedding levels and the
    measured spots' expression (rows ``y_measured`` for nodes ``measured_idx``, from any
    number of sections). Held-out truth has no field to come in through.

    Arrays are coerced to float32 / int64 tensors and the shapes checked on construction.
    """

    graph: Data
    spot_emb: Tensor
    region_emb: Tensor
    global_emb: Tensor
    y_measured: Tensor
    measured_idx: Tensor

    def __post_init__(self) -> None:
        for name in ("spot_emb", "region_emb", "global_emb", "y_measured"):
            object.__setattr__(self, name, torch.as_tensor(getattr(self, name)).float())
        object.__setattr__(self, "measured_idx", torch.as_tensor(self.measured_idx).long())
        n = self.num_nodes
        if self.spot_emb.shape[0] != n:
            raise ValueError(f"spot_emb has {self.spot_emb.shape[0]} rows, graph has {n} nodes")
        if self.y_measured.shape[0] != self.measured_idx.numel():
            raise ValueError(f"y_measured has {self.y_measured.shape[0]} rows for {self.measured_idx.numel()} measured nodes")
        if self.measured_idx.numel() < 10:
            raise ValueError("need at least 10 measured spots to train")
        if int(self.measured_idx.max()) >= n or int(self.measured_idx.min()) < 0:
            raise ValueError("measured_idx out of range")

    @property
    def num_nodes(self) -> int:
        return int(self.graph.num_nodes)

    @property
    def n_genes(self) -> int:
        return int(self.y_measured.shape[1])

    def standardised(self) -> tuple[Tensor, Tensor, Tensor]:
        """Spot, region and global embeddings z-scored per feature (the network's inputs)."""
        return standardise(self.spot_emb), standardise(self.region_emb), standardise(self.global_emb)
