"""Ensemble members in this process or in worker processes.

On CPU, members of neighbourhoods of at least ``PARALLEL_MIN_NODES`` spots train at once in
worker processes (:func:`member_workers`; the same states as one after another): on the
100k benchmark (25.5k-spot neighbourhood, 3 members, 2 cores) 362 -> ~240 s.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from asign_assets.graph.propagation import propagation_operator
from asign_assets.model.determinism import deterministic
from asign_assets.model.member import train_member
from asign_assets.model.params import TrainParams
from asign_assets.model.prepare import Prepared
from asign_assets.runtime.parallel import available_cpus, map_in_processes


#: Training neighbourhoods (spots) from which ``workers=0`` trains members in parallel
#: processes: a spawned worker imports torch and the package (~3 s) before it starts.
PARALLEL_MIN_NODES = 5000


def member_workers(params: TrainParams, n_members: int, n_nodes: int, device: torch.device) -> int:
    """Processes to train ``n_members`` members in (1: in this process).

    Automatic (``params.workers == 0``), on CPU only (one accelerator is not shared by
    processes here), with at least two cores and for neighbourhoods of at least
    :data:`PARALLEL_MIN_NODES` spots: every member at once, up to two per core. Members are
    single-threaded and stop at different epochs, so with 3 members on 2 cores, running
    all three (the system shares the cores) beats two then one, where the last member runs
    alone on one core: 3 members of the 100k benchmark, 2 cores, 253 s against 281 s.
    """
    if params.workers < 0:
        raise ValueError(f"workers must be >= 0 (0: automatic), got {params.workers}")
    if n_members <= 1:
        return 1
    if params.workers > 0:
        return min(params.workers, n_members)
    cores = available_cpus()
    if device.type != "cpu" or n_nodes < PARALLEL_MIN_NODES or cores < 2:
        return 1
    return min(n_members, 2 * cores)


def _member_job(pp: Prepared, params: TrainParams, device: str, threads: int, seed_fold: tuple[int, Tensor]) -> dict[str, Any]:
    """One member in a worker process: the CSR operator (left out of the pickled
    preparation) is rebuilt from the subgraph, as :func:`asign_assets.model.prepare.prepare`
    built it."""
    seed, fold = seed_fold
    dev = torch.device(device)
    pp = replace(pp, op=propagation_operator(pp.sub.edge_index.to(dev), pp.sub.edge_weight.to(dev), pp.sub.nodes.numel()))
    with deterministic(seed, threads):
        return train_member(pp, params, seed, fold, dev)


def train_members(pp: Prepared, params: TrainParams, folds: list[Tensor], device: torch.device, n_workers: int) -> list[dict[str, Any]]:
    """Every member, in this process or in ``n_workers`` worker processes
    (:func:`asign_assets.runtime.parallel.map_in_processes`; the same seeds, masks and
    single-threaded kernels either way, so the same states)."""
    seeds = [params.seed + i for i in range(len(folds))]
    if n_workers <= 1:
        return [train_member(pp, params, sd, f, device) for sd, f in zip(seeds, folds)]
    threads = params.threads if params.threads > 0 else max(1, available_cpus() // n_workers)
    job = partial(_member_job, replace(pp, op=None), params, str(device), threads)
    return map_in_processes(job, list(zip(seeds, folds)), n_workers)
