"""An API-key Secret named by annotation reaches the inference pod as a read-only file only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaito.api.workspace import ANNOTATION_API_KEY_SECRET, parse_workspace
from kaito.contract.files import API_KEY_DIR, API_KEY_PATH, API_KEY_SECRET_KEY
from kaito.manifests.context import WorkspaceContext, resolve
from kaito.manifests.inference import build_statefulset
from kaito.runtime.inference.config import parse_args
from tests.unit.api.builders import make_workspace
from tests.unit.controller.builders import OPTIONS, stored

JSON = dict[str, Any]


def ctx_for(annotations: dict[str, str], preset: str | None = None) -> WorkspaceContext:
    builder = make_workspace("serve-phi-3")
    builder = builder.inference(preset) if preset else builder.inference()
    for key, value in annotations.items():
        builder = builder.annotation(key, value)
    return resolve(parse_workspace(stored(builder.obj())), OPTIONS)


def main_container(statefulset: JSON) -> JSON:
    return statefulset["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", [None, "phi-3-mini-4k-instruct"])
def test_the_secret_is_mounted_read_only_and_the_server_told_where(preset: str | None) -> None:
    sts = build_statefulset(ctx_for({ANNOTATION_API_KEY_SECRET: "serve-key"}, preset))
    pod = sts["spec"]["template"]["spec"]
    container = main_container(sts)
    volume = next(v for v in pod["volumes"] if v.get("secret"))
    assert volume["secret"] == {
        "secretName": "serve-key",
        "items": [{"key": API_KEY_SECRET_KEY, "path": API_KEY_SECRET_KEY}],
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": API_KEY_DIR, "readOnly": True}
    assert f"--api-key-file={API_KEY_PATH}" in container["args"]


def test_the_secret_reaches_the_pod_only_as_that_file() -> None:
    sts = build_statefulset(ctx_for({ANNOTATION_API_KEY_SECRET: "serve-key"}))
    container = main_container(sts)
    assert "serve-key" not in json.dumps(container.get("env", []))
    assert "serve-key" not in json.dumps(container["args"])
    pod = sts["spec"]["template"]["spec"]
    assert not any("serve-key" in json.dumps(c) for c in pod.get("initContainers", []))


def test_the_server_reads_the_key_from_the_file_the_operator_names(tmp_path: Any) -> None:
    key_file = tmp_path / API_KEY_SECRET_KEY
    key_file.write_text("s3cret\n")
    config = parse_args([f"--api-key-file={key_file}"], environ={"KAITO_API_KEY": "other"})
    assert config.api_key == "s3cret"
    assert "s3cret" not in repr(config)


def test_without_the_annotation_there_is_no_key_and_no_flag() -> None:
    sts = build_statefulset(ctx_for({}))
    pod = sts["spec"]["template"]["spec"]
    assert not any(v.get("secret", {}).get("secretName") for v in pod["volumes"])
    assert not any(a.startswith("--api-key") for a in main_container(sts)["args"])
