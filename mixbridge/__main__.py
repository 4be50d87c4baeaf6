"""`python -m mixbridge <command>`: the same commands as the `mixbridge` script."""

import sys

from mixbridge.cli import main

sys.exit(main())
