"""`python3 -m hookd.cli`: the same as `hookctl`."""

import sys

from hookd.cli.main import main

sys.exit(main())
