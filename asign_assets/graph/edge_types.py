"""Edge types of the 3D spot graph, defined once: graph construction writes them into
``Data.edge_type``, the network one-hot encodes them and the baselines select edges by them."""

from __future__ import annotations

__all__ = ["EDGE_INTRA", "EDGE_OVERLAP", "EDGE_SIMILARITY", "EDGE_TYPE_NAMES", "N_EDGE_TYPES"]

EDGE_INTRA, EDGE_OVERLAP, EDGE_SIMILARITY = 0, 1, 2
#: Name of each edge type, indexed by its value in ``Data.edge_type``.
EDGE_TYPE_NAMES = ("intra", "overlap", "similarity")
#: Width of the network's one-hot edge-type encoding (values are 0 .. N_EDGE_TYPES - 1).
N_EDGE_TYPES = len(EDGE_TYPE_NAMES)
