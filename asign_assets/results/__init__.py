"""What the pipeline hands to users: the imputed AnnData and its zarr copy (``imputed``), the
OME-Zarr voxel volume (``volume``), metadata figures (``plots``) and cheap consistency checks
of stored outputs (``qc``).
"""
