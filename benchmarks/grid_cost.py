"""What the published results cost to compute, per chain and in all (skillgraft.costs).

    python benchmarks/grid_cost.py [--root results] [--out benchmarks/results/grid_cost.md]

Each step's wall time is recorded where it was computed and kept in the published manifest, so
the report covers every machine that contributed; steps published before times were recorded
are counted apart.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skillgraft import costs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    text = costs.report(args.root)
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
