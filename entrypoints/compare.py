"""MLproject entry point `compare` (parameters: `biosig compare --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("compare", sys.argv[1:])
