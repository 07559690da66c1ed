"""Scoring imputed sections against held-out truth: the metrics (``metrics``, a long table), the
baselines run on the same graph and features (``baselines``) and one sample's evaluation
(``sample``: truth aligned to the volume, unmeasured genes left out).
"""
