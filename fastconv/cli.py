"""The ``fastconv`` command (placeholder until the bench harness lands)."""
import sys


def main(argv=None) -> int:
    print("fastconv: bench harness not yet available", file=sys.stderr)
    return 2
