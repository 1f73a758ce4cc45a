"""Local mode: run a Workspace on this machine with no cluster (tune, then serve)."""

from kaito.local.plan import (
    AdapterPlan,
    HostInfo,
    LocalModeError,
    ServePlan,
    TuningPlan,
    plan_workspace,
)

__all__ = [
    "AdapterPlan",
    "HostInfo",
    "LocalModeError",
    "ServePlan",
    "TuningPlan",
    "plan_workspace",
]
