"""Every Dagster object, and the only package that imports Dagster: ``definitions`` (the code
location), ``resources``, ``automation`` (partitions, reprocessing, the gpu pool), ``config``
(run configs built from library parameters by field name), ``sensors`` (inbox, observe
schedule), ``freshness`` (what ``asign run`` plans), ``console`` and ``run`` (``asign run``'s
Dagster side), ``assets/`` (thin assets, one module per stage, and the asset checks).
"""
