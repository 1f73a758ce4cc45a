"""KAITO_WORKLOAD_TOLERATIONS and KAITO_PLAIN_HTTP_REGISTRIES: parsed, checked at start."""

from __future__ import annotations

import json

import pytest

from kaito.operator.settings import Settings, SettingsError

DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}


def test_workload_tolerations_reach_the_cluster_options() -> None:
    raw = json.dumps([DEDICATED, {"operator": "Exists"}])
    options = Settings.from_env({"KAITO_WORKLOAD_TOLERATIONS": raw}).cluster_options()
    assert options.workload_tolerations == (DEDICATED, {"operator": "Exists"})
    assert Settings.from_env({}).cluster_options().workload_tolerations == ()
    assert Settings.from_env({"KAITO_WORKLOAD_TOLERATIONS": " "}).cluster_options() == (
        Settings.from_env({}).cluster_options()
    )


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("[{", "not JSON"),
        (json.dumps(DEDICATED), "JSON list"),
        ("[1]", "item 0: expected an object"),
        (json.dumps([DEDICATED, {**DEDICATED, "operator": "In"}]), "item 1: operator"),
        (json.dumps([{**DEDICATED, "effect": "NoSchedul"}]), "effect must be"),
        (json.dumps([{**DEDICATED, "operator": "Exists"}]), "Exists takes no value"),
        (json.dumps([{**DEDICATED, "tolerationSecond": 5}]), "unknown field(s) tolerationSecond"),
        (json.dumps([{"value": "x", "effect": "NoSchedule"}]), "empty key needs operator Exists"),
        (json.dumps([{**DEDICATED, "tolerationSeconds": "5"}]), "must be an integer"),
        (json.dumps([{**DEDICATED, "value": 1}]), "value must be a string"),
    ],
)
def test_bad_workload_tolerations_stop_the_operator_with_a_clear_error(raw: str, says: str) -> None:
    with pytest.raises(SettingsError, match="KAITO_WORKLOAD_TOLERATIONS") as caught:
        Settings.from_env({"KAITO_WORKLOAD_TOLERATIONS": raw})
    assert says in str(caught.value)


def test_a_toleration_with_every_field_is_accepted() -> None:
    full = {**DEDICATED, "effect": "NoExecute", "tolerationSeconds": 300}
    options = Settings.from_env({"KAITO_WORKLOAD_TOLERATIONS": json.dumps([full])})
    assert options.cluster_options().workload_tolerations == (full,)


def test_plain_http_registries_are_split_and_trimmed() -> None:
    env = {"KAITO_PLAIN_HTTP_REGISTRIES": " 10.245.0.1:5000, mirror.internal ,,"}
    options = Settings.from_env(env).cluster_options()
    assert options.plain_http_registries == ("10.245.0.1:5000", "mirror.internal")
    assert Settings.from_env({}).cluster_options().plain_http_registries == ()


@pytest.mark.parametrize("entry", ["http://10.245.0.1:5000", "reg.example/path", "a b"])
def test_a_plain_http_entry_that_is_not_host_port_is_refused(entry: str) -> None:
    with pytest.raises(SettingsError, match="KAITO_PLAIN_HTTP_REGISTRIES"):
        Settings.from_env({"KAITO_PLAIN_HTTP_REGISTRIES": entry})
