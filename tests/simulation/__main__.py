"""``python -m tests.simulation``: see tests.simulation.runner."""

import sys

from tests.simulation.runner import main

sys.exit(main())
