"""Command line of optforge: ``optforge <command>`` or ``python -m optforge <command>``.

Commands:
    bench   the AlgoPerf-style benchmark harness (see ``optforge bench --help``)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_USAGE = """usage: optforge <command> [options] | optforge --version

commands:
  bench    AlgoPerf-style benchmark of training algorithms
           (bare `optforge bench` runs the quick suite; see `optforge bench --help`)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``optforge`` command with ``argv`` (default ``sys.argv[1:]``); return the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from optforge import __version__

        print(f"optforge {__version__}")
        return 0
    if argv[0] == "bench":
        from optforge.bench.cli import bench_main

        return bench_main(argv[1:])
    print(f"optforge: error: unknown command {argv[0]!r} (known: bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
