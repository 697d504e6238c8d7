"""MLproject entry point `pretrain` (parameters: `biosig pretrain --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("pretrain", sys.argv[1:])
