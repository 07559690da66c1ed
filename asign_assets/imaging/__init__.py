"""Pixels to features: the tissue mask (``tissue``), multi-resolution patches (``tiles``),
image encoders (``encoders``: the weight-free default and TorchScript plug-ins), H&E stain
separation (``stain``) and the measured-but-unwired nuclear features (``nuclei``). A new
encoder lands in ``encoders`` and its name in ``encoder_names``.
"""
