"""`python -m ddgan ...` is the `ddgan` command (torchrun: `torchrun --nproc_per_node N -m ddgan train ...`)."""

import sys

from ddgan.cli import main

sys.exit(main())
