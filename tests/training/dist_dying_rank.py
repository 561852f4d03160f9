"""Run by torchrun in `test_distributed`: kdmsi's CLI, where rank 1 dies (exit status 3) just
before its first optimiser step, as a process killed for memory would."""

from __future__ import annotations

import os
import sys

from kdmsi.cli.main import main
from kdmsi.training import loop


def _die(*args, **kwargs) -> None:
    os._exit(3)


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        loop.poly_lr = _die  # run_epochs calls it once before each optimiser step
    sys.exit(main(sys.argv[1:]))
