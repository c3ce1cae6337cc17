"""`python3 -m hookd.cli`: the same as `hookctl` (the packages' build steps run it so);
it only calls hookd.cli.main.main and must hold nothing else."""

import sys

from hookd.cli.main import main

sys.exit(main())
