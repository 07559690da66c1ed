"""Manifests written from a dataset's own layout (``her2st``, ``visium``) and the synthetic
``demo`` stack with known truth. They write YAML that ``ingest.manifest`` reads.
"""
