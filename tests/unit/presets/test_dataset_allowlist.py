"""One operator setting lets dataset URLs reach named internal hosts: admission and the Job."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.api.workspace import parse_workspace
from kaito.local import HostInfo, LocalModeError, TuningPlan, plan_workspace
from kaito.manifests.context import resolve
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_job
from kaito.operator.settings import Settings
from kaito.presets.validation import validate_workspace
from tests.unit.api.builders import tuning_workspace, with_
from tests.unit.controller.builders import legacy_tuning
from tests.unit.local.test_plan import tuning_workspace as local_tuning

BRIDGE_URL = "http://172.18.0.1:8000/train.jsonl"


def test_an_internal_dataset_host_is_refused_until_the_operator_allows_it() -> None:
    body = with_(tuning_workspace(), "tuning.input.urls", [BRIDGE_URL])
    refused = validate_workspace(body)
    assert [e.field for e in refused] == ["tuning.input.urls[0]"]
    assert validate_workspace(body, allowed_hosts=("172.18.0.1",)) == []
    assert validate_workspace(body, allowed_hosts=("172.18.0.0/16",)) == []
    assert [e.field for e in validate_workspace(body, allowed_hosts=("172.19.0.0/16",))] == [
        "tuning.input.urls[0]"
    ]
    named = with_(tuning_workspace(), "tuning.input.urls", ["http://localhost:8000/x"])
    assert validate_workspace(named, allowed_hosts=("localhost",)) == []


def test_the_setting_reaches_the_tuning_jobs_downloader() -> None:
    settings = Settings.from_env({"KAITO_TUNING_ALLOWED_HOSTS": "172.18.0.1, data.ns.svc"})
    options = settings.cluster_options()
    assert options.tuning_allowed_hosts == ("172.18.0.1", "data.ns.svc")
    ctx = resolve(parse_workspace(legacy_tuning()), options)
    pod = build_job(ctx)["spec"]["template"]["spec"]
    [downloader] = [c for c in pod["initContainers"] if c["name"] == "data-downloader"]
    assert downloader["env"] == [
        {"name": "KAITO_TUNING_ALLOWED_HOSTS", "value": "172.18.0.1,data.ns.svc"}
    ]
    default = resolve(parse_workspace(legacy_tuning()), ClusterOptions())
    pod = build_job(default)["spec"]["template"]["spec"]
    [downloader] = [c for c in pod["initContainers"] if c["name"] == "data-downloader"]
    assert downloader["env"] == [{"name": "KAITO_TUNING_ALLOWED_HOSTS", "value": ""}]


def test_local_mode_reads_the_same_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    body = local_tuning(input={"urls": [BRIDGE_URL]})
    volumes = {"adapter": Path("/tmp/out")}
    monkeypatch.delenv("KAITO_TUNING_ALLOWED_HOSTS", raising=False)
    with pytest.raises(LocalModeError, match=r"tuning\.input\.urls\[0\]"):
        plan_workspace(body, host=HostInfo(memory_gib=16.0), volumes=volumes)
    monkeypatch.setenv("KAITO_TUNING_ALLOWED_HOSTS", "172.18.0.0/16")
    plan = plan_workspace(body, host=HostInfo(memory_gib=16.0), volumes=volumes)
    assert isinstance(plan, TuningPlan) and plan.input_urls == (BRIDGE_URL,)
