"""`python -m morph_net` runs the `morphnet` command-line tool."""

import sys

from morph_net.cli.main import main

sys.exit(main())
