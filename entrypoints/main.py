"""MLproject entry point `main`: the end-to-end job on the embedded default.

Today it logs the default windowed dataset (`log_dataset` with its defaults and any -P overrides).
"""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("log-dataset", sys.argv[1:])
