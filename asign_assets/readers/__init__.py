"""File formats, and nothing about samples: counts (``counts``), spot tables (``spots``), their
join (``join``), images (``images`` through Pillow, ``slide`` window by window for TIFF/WSI),
platform folders (``visium``: Space Ranger / AnnData) and the manifest keys that name them
(``sources``). ``paths`` refuses what is not a regular file. A new format is one entry in the
table of ``counts`` or ``spots``; a new platform folder one entry in ``sources``.
"""
