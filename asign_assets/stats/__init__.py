"""Numerical building blocks shared by model, evaluation and imaging, each defined once:
correlation, standardisation and ranks (``correlation``), GCV ridge and its reduced-rank form
(``ridge``), bi-cross-validated low-rank denoising (``lowrank``).
"""
