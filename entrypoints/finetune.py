"""MLproject entry point `finetune` (parameters: `biosig finetune --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("finetune", sys.argv[1:])
