"""`python -m kaito.runtime.tuning`: the tuning Job's entry point (same flags as `kaito tune`)."""

from __future__ import annotations

import sys

from kaito.runtime.tuning.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m kaito.runtime.tuning"))
