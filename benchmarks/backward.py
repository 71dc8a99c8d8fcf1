"""Backward-pass benchmark: ``fastconv bench --pass backward`` under its older name.

The rows, timing and checks live in `fastconv.bench.backward` (one implementation for the command
and this script); every argument is passed on, e.g.

    python benchmarks/backward.py --suite resnet18 --batch 1,8 --threads 2 --json out.json
    fastconv bench --pass backward --suite resnet18 --batch 1,8 --threads 2 --json out.json   # the same
"""

from __future__ import annotations

import sys

from fastconv import cli

if __name__ == "__main__":
    sys.exit(cli.main(["bench", "--pass", "backward", *sys.argv[1:]]))
