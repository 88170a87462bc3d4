"""Quality diversity: MAP-Elites archives, emitters and the ask/tell loop.

| Algorithm | Archive | Emitters | Paper |
|---|---|---|---|
| MAP-Elites | :class:`GridArchive` | :class:`GaussianEmitter` | Mouret & Clune 2015 |
| Line MAP-Elites | :class:`GridArchive` | :class:`IsoLineEmitter` | Vassiliades & Mouret 2018 |
| CVT-MAP-Elites | :class:`CVTArchive` | either | Vassiliades et al. 2018 |
| CMA-ME | :class:`GridArchive` | :class:`EvolutionStrategyEmitter` (``2imp``) | Fontaine 2020 |
| CMA-MAE | soft archive + result | :class:`EvolutionStrategyEmitter` (``imp``) | Fontaine 2023 |

All run through :class:`MapElites` (ask/tell by candidate id, exact resume).
"""

from optforge.search.qd.archive import AddResult, AddStatus, ArchiveBase, ArchiveStats
from optforge.search.qd.cvt import CVTArchive, kmeans_centroids
from optforge.search.qd.emitters import EmitterBase, GaussianEmitter, IsoLineEmitter
from optforge.search.qd.evolution_strategy import CMAES, EvolutionStrategyEmitter
from optforge.search.qd.grid import GridArchive
from optforge.search.qd.map_elites import MapElites
from optforge.search.qd.plot import archive_heatmap
from optforge.search.qd.problems import sphere, sphere_measure_range, sphere_one

__all__ = [
    "AddResult",
    "AddStatus",
    "CMAES",
    "ArchiveBase",
    "ArchiveStats",
    "CVTArchive",
    "EmitterBase",
    "EvolutionStrategyEmitter",
    "GaussianEmitter",
    "GridArchive",
    "IsoLineEmitter",
    "MapElites",
    "archive_heatmap",
    "kmeans_centroids",
    "sphere",
    "sphere_measure_range",
    "sphere_one",
]
