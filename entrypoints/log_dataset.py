"""MLproject entry point `log_dataset` (parameters: `biosig log-dataset --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("log-dataset", sys.argv[1:])
