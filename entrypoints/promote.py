"""MLproject entry point `promote` (parameters: `biosig promote --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("promote", sys.argv[1:])
