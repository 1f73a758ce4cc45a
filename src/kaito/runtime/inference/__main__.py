"""`python -m kaito.runtime.inference`: run the inference server."""

from __future__ import annotations

import sys

from kaito.runtime.inference.server import main

sys.exit(main())
