"""MLproject entry point `tune` (parameters: `biosig tune --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("tune", sys.argv[1:])
