"""`python -m scalekit ...` is the same as the `scalekit` command."""

import sys

from scalekit.cli import main

sys.exit(main())
