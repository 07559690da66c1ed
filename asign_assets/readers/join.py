"""Joining a section's spots and counts on spot id, reporting what either side lacks.

A spot table and a count table of the same section rarely match exactly (spots without
counts, count rows without a spot); a poor match usually means the wrong file, so it fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from asign_assets.errors import InputError
from asign_assets.readers.counts import CountMatrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JoinReport:
    """What joining spots and counts dropped, so the user can see it."""

    n_spots: int
    n_counts: int
    n_joined: int
    spots_without_counts: list[str]
    counts_without_spots: list[str]

    def summary(self) -> str:
        return (
            f"{self.n_joined} spots joined; {len(self.spots_without_counts)} spot(s) without counts dropped"
            f"{' ' + str(self.spots_without_counts[:5]) if self.spots_without_counts else ''}; "
            f"{len(self.counts_without_spots)} count row(s) without a spot dropped"
            f"{' ' + str(self.counts_without_spots[:5]) if self.counts_without_spots else ''}"
        )


def join_spots_counts(
    spots: pl.DataFrame,
    counts: CountMatrix,
    source: str | Path,
    warn_below: float = 0.9,
    fail_below: float = 0.5,
) -> tuple[pl.DataFrame, CountMatrix, JoinReport]:
    """Keep spots present in both tables, in spot-table order, and say what was dropped.

    Fails when fewer than ``fail_below`` of the spots have counts (usually the wrong
    file); warns below ``warn_below``.
    """
    count_ids = counts.spot_ids.astype(str)
    spot_ids = np.asarray(spots["spot_id"].to_list(), dtype=str)
    keep = np.isin(spot_ids, count_ids)
    report = JoinReport(
        n_spots=len(spot_ids),
        n_counts=len(count_ids),
        n_joined=int(keep.sum()),
        spots_without_counts=spot_ids[~keep].tolist(),
        counts_without_spots=sorted(count_ids[~np.isin(count_ids, spot_ids)].tolist()),
    )
    frac = report.n_joined / max(report.n_spots, 1)
    if frac < fail_below:
        transposed = int(np.isin(spot_ids, counts.genes.astype(str)).sum()) > report.n_joined
        raise InputError(
            source,
            f"only {report.n_joined} of {report.n_spots} spots ({frac:.0%}) have counts; "
            f"spot ids and count rows do not match (e.g. spots {spot_ids[:3].tolist()}, counts {[str(c) for c in counts.spot_ids[:3]]})"
            + ("; the count table looks transposed (spots as columns): rows must be spots, columns genes" if transposed else ""),
        )
    if frac < warn_below:
        log.warning("%s: only %.0f%% of spots have counts: %s", source, 100 * frac, report.summary())
    joined = spots.filter(pl.Series(keep))
    return joined, counts.subset_spots(np.asarray(joined["spot_id"].to_list(), dtype=object)), report
