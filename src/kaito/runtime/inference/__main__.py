"""`python -m kaito.runtime.inference`: run the inference server."""

from __future__ import annotations

import os
import sys

# Idle OpenMP workers spin by default; on a shared or oversubscribed CPU the spinning starves the
# thread doing real work and a batched step becomes many times slower. Must precede torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kaito.runtime.inference.server import main

sys.exit(main())
