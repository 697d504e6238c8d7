"""MLproject entry point `prepare_splits` (parameters: `biosig prepare-splits --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("prepare-splits", sys.argv[1:])
