"""`python -m seqshard` runs the command-line interface."""

import sys

from seqshard.cli import main

sys.exit(main())
