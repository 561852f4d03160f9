"""`python -m kdmsi.cli`: the `kdmsi` console script."""

import sys

from .main import main

sys.exit(main())
