"""OpenMP's idle policy for the CPU runtimes, chosen before torch loads."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Measured on 2 cores (docs/inference.md): a short spin keeps OpenMP's workers awake across the
# gaps between the hundreds of small ops in a decode step (a batched step ~1.4x faster than with
# sleeping workers), but when another process wants the same cores, spinning workers starve the
# one doing the work (~3x slower). So spin only where the cores are the pod's own.
SPIN_COUNT = "20000"
TRUE = {"1", "true", "yes", "on"}


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> str:
    """Set the policy unless the user chose one; returns what applies ("user", "spin", "passive").

    `KAITO_DEDICATED_CPUS=true` (cores not shared, e.g. a Guaranteed pod with the static CPU
    manager) selects a bounded spin; anything else sleeps idle workers at once.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return "user"
    if env.get("KAITO_DEDICATED_CPUS", "").strip().lower() in TRUE:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
        return "spin"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"
