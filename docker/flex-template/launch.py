"""The Flex Template launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE) with the template's
parameters as ``--name=value``; it only hands them to flexprice_beam.launch.main."""

import sys

from flexprice_beam.launch.main import main

if __name__ == "__main__":
    sys.exit(main())
