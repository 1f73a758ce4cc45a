"""OpenMP idle policy: passive unless the cores are dedicated; the user's own choice wins."""

from __future__ import annotations

import pytest

from kaito.runtime.openmp import SPIN_COUNT, configure_openmp


def test_shared_cores_sleep_idle_workers() -> None:
    env: dict[str, str] = {}
    assert configure_openmp(env) == "passive"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("value", ["true", "1", "Yes", " on "])
def test_dedicated_cores_spin_briefly(value: str) -> None:
    env = {"KAITO_DEDICATED_CPUS": value}
    assert configure_openmp(env) == "spin"
    assert env["GOMP_SPINCOUNT"] == SPIN_COUNT
    assert "OMP_WAIT_POLICY" not in env


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_anything_else_is_treated_as_shared(value: str) -> None:
    env = {"KAITO_DEDICATED_CPUS": value}
    assert configure_openmp(env) == "passive"


@pytest.mark.parametrize("preset", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}])
def test_a_policy_the_user_set_is_left_alone(preset: dict[str, str]) -> None:
    env = dict(preset, KAITO_DEDICATED_CPUS="true")
    assert configure_openmp(env) == "user"
    assert env == dict(preset, KAITO_DEDICATED_CPUS="true")
