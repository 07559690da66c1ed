"""The process environment: the compute device chosen in one place (``device``), the storage home
(``home``), worker processes for sections and ensemble members (``parallel``,
``process_jobs``) and child process trees stopped as a whole (``proctree``).
"""
