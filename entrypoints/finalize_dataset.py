"""MLproject entry point `finalize_dataset` (parameters: `biosig dataset finalize --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("dataset finalize", sys.argv[1:])
