"""``python -m flexprice_mock``: run the Flexprice stand-in until SIGINT/SIGTERM."""

import sys

from .server import main

sys.exit(main())
