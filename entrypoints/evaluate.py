"""MLproject entry point `evaluate` (parameters: `biosig evaluate --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("evaluate", sys.argv[1:])
