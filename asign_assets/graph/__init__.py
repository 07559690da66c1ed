"""The sparse 3D spot graph: edge types defined once (``edge_types``), the build rules
(``build``: intra-section lattice, overlap, similarity, tile graphs), exact disc geometry
(``geometry``) and label propagation over the edge list (``propagation``).
"""
