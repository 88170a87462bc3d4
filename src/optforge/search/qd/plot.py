"""Heatmaps of an archive's objectives (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from optforge.search.qd.archive import ArchiveBase
from optforge.search.qd.cvt import CVTArchive
from optforge.search.qd.grid import GridArchive

__all__ = ["archive_heatmap"]


def archive_heatmap(
    archive: ArchiveBase,
    ax: Any = None,
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    marker_size: float = 4.0,
) -> Any:
    """Draw the archive's elite objectives over measure space; returns the matplotlib ``Axes``.

    Grid archives with 1 or 2 measures draw one square per cell (empty cells blank); a 2-measure
    :class:`CVTArchive` draws each filled centroid as a coloured dot (a Voronoi-like picture at
    thousands of cells) over the empty ones in light grey.

    Example::

        ax = archive_heatmap(archive); ax.figure.savefig("heatmap.png")
    """
    import matplotlib.pyplot as plt  # lazy: plotting is optional

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    occ = archive._occupied
    obj = np.where(occ, archive._objectives, np.nan)
    if isinstance(archive, GridArchive) and archive.measure_dim in (1, 2):
        lo, hi = archive.lower_bounds, archive.upper_bounds
        if archive.measure_dim == 1:
            image = obj[None, :]
            extent = (lo[0], hi[0], 0.0, 1.0)
            ax.set_yticks([])
        else:
            # Cells are raveled in C order as (measure 0, measure 1); imshow rows are y.
            image = obj.reshape(archive.dims).T
            extent = (lo[0], hi[0], lo[1], hi[1])
            ax.set_ylabel("measure 1")
        mappable = ax.imshow(
            image,
            origin="lower",
            extent=extent,
            aspect="auto",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
    elif isinstance(archive, CVTArchive) and archive.measure_dim == 2:
        c = archive.centroids
        ax.scatter(c[~occ, 0], c[~occ, 1], s=marker_size, c="0.85", linewidths=0)
        mappable = ax.scatter(
            c[occ, 0],
            c[occ, 1],
            s=marker_size,
            c=obj[occ],
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            linewidths=0,
        )
        ax.set_xlim(archive.lower_bounds[0], archive.upper_bounds[0])
        ax.set_ylim(archive.lower_bounds[1], archive.upper_bounds[1])
        ax.set_ylabel("measure 1")
    else:
        raise ValueError(
            "archive_heatmap draws GridArchive with 1 or 2 measures and CVTArchive with 2 "
            f"(got {type(archive).__name__} with measure_dim = {archive.measure_dim})"
        )
    ax.set_xlabel("measure 0")
    if colorbar:
        ax.figure.colorbar(mappable, ax=ax, label="objective")
    return ax
