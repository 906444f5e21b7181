"""`python -m effnet` (and `torchrun -m effnet train ...`)."""

import sys

from effnet.cli import main

sys.exit(main())
