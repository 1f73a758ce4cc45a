"""`python -m kaito.runtime.inference`: run the inference server."""

from __future__ import annotations

import sys

from kaito.runtime.openmp import configure_openmp

configure_openmp()  # before torch loads

from kaito.runtime.inference.server import main  # noqa: E402  (the policy first)

sys.exit(main())
