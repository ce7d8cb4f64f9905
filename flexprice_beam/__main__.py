import sys

from flexprice_beam.cli import main

sys.exit(main())
