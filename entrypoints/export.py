"""MLproject entry point `export` (parameters: `biosig export --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("export", sys.argv[1:])
