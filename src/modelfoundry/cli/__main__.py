"""`python -m modelfoundry.cli`: the `foundry` command."""

import sys

from modelfoundry.cli import main

sys.exit(main())
