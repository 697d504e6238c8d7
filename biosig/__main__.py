"""`python -m biosig …` (what `torchrun -m biosig pretrain …` starts in every process)."""

import sys

from biosig.cli import main

sys.exit(main())
