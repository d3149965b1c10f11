"""``python -m modelplex``: the ``modelplex`` command."""

import sys

from ._driver.cli import main

sys.exit(main())
