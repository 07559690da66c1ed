"""A sample's inputs, validated before anything is written: the manifest (``manifest``, read by
the bounded loader ``strict_yaml``), what the data show about themselves (``plausibility``), the
``sections`` stage (spots, masks, thumbnails, virtual ``lattice`` spots) and the measured
``expression`` (gene selection, normalisation). Depends on ``readers``, never on storage.
"""
