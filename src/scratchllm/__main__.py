"""`python -m scratchllm` (what `torchrun -m scratchllm train ...` runs)."""

import sys

from scratchllm.cli import main

sys.exit(main())
