"""MLproject entry point `import_checkpoint` (parameters: `biosig import-checkpoint --help`)."""

import sys

from biosig.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("import-checkpoint", sys.argv[1:])
