"""MLproject entry point `main`: the end-to-end job on the embedded default
(parameters: `biosig main --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("main", sys.argv[1:])
