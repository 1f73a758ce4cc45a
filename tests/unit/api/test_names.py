"""Names that always work: admission refuses a name a derived object cannot carry, and every
object built for a name at the limit is one the apiserver accepts."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.inference import build_inference_objects
from kaito.manifests.nodeclaim import build_nodeclaim
from kaito.manifests.options import ClusterOptions
from kaito.manifests.preflight import build_preflight_job
from kaito.manifests.tuning import build_job, build_results_claim, build_tuning_identity
from kaito.presets.validation import validate_workspace
from tests.unit.api.builders import adapter, inference_workspace, tuning_workspace

JSON = dict[str, Any]
# The apiserver's own rules (k8s.io/apimachinery/pkg/util/validation).
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONGEST_HASH = "f" * 10  # controller-revision-hash suffixes are at most 10 characters


def stored(body: JSON) -> JSON:
    out = copy.deepcopy(body)
    out["apiVersion"] = "kaito.sh/v1beta1"
    out["metadata"].update(namespace="default", uid="uid-1", generation=1)
    return out


def named(body: JSON, name: str) -> JSON:
    out = copy.deepcopy(body)
    out["metadata"]["name"] = name
    return out


def errors_of(body: JSON) -> list[str]:
    return [str(e) for e in validate_workspace(stored(body))]


def problems(obj: JSON) -> Iterator[str]:
    """Why the apiserver (or a controller creating pods from it) would refuse `obj`."""
    kind, meta = obj["kind"], obj["metadata"]
    name = meta["name"]
    if kind == "Service" and not (len(name) <= 63 and DNS1035_LABEL.fullmatch(name)):
        yield f"Service name {name}"
    if not (len(name) <= 253 and SUBDOMAIN.fullmatch(name)):
        yield f"{kind} name {name}"
    template = (obj.get("spec") or {}).get("template") or {}
    labels = {
        **(meta.get("labels") or {}),
        **((template.get("metadata") or {}).get("labels") or {}),
    }
    if kind == "StatefulSet":
        labels["controller-revision-hash"] = f"{name}-{LONGEST_HASH}"
        labels["statefulset.kubernetes.io/pod-name"] = f"{name}-0"
    if kind == "Job":
        labels["job-name"] = name
        labels["batch.kubernetes.io/job-name"] = name
    for key, value in labels.items():
        if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            yield f"{kind} {name} label {key}={value}"
    pod = template.get("spec") or {}
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        if len(container["name"]) > 63 or not DNS1123_LABEL.fullmatch(container["name"]):
            yield f"{kind} {name} container {container['name']}"
    for volume in pod.get("volumes", []):
        if len(volume["name"]) > 63 or not DNS1123_LABEL.fullmatch(volume["name"]):
            yield f"{kind} {name} volume {volume['name']}"


def built(body: JSON) -> list[JSON]:
    workspace = parse_workspace(stored(body))
    ctx = resolve(workspace, ClusterOptions())
    objects = [build_nodeclaim(ctx, 0)]
    if workspace.inference is not None:
        objects += build_inference_objects(ctx)
    else:
        objects += [
            build_job(ctx),
            build_preflight_job(ctx),
            build_results_claim(ctx),
            *build_tuning_identity(ctx),
        ]
    return objects


SECRET_ADAPTER = {"imagePullSecrets": ["pull-secret"]}


def with_adapters(body: JSON, *names: str, secrets: bool = True) -> JSON:
    out = copy.deepcopy(body)
    out["inference"]["adapters"] = [adapter(n) for n in names]
    if secrets:
        for item in out["inference"]["adapters"]:
            item["source"].update(SECRET_ADAPTER)
    return out


INFERENCE = inference_workspace()
TUNING = tuning_workspace()


@pytest.mark.parametrize(("body", "longest"), [(INFERENCE, 52), (TUNING, 53)])
def test_a_name_at_the_limit_is_admitted_and_every_object_built_from_it_is_valid(
    body: JSON, longest: int
) -> None:
    at_limit = named(body, "w" * longest)
    assert errors_of(at_limit) == []
    assert [p for obj in built(at_limit) for p in problems(obj)] == []


@pytest.mark.parametrize(("body", "longest"), [(INFERENCE, 52), (TUNING, 53)])
def test_one_character_past_the_limit_is_refused_with_the_limit_and_the_object(
    body: JSON, longest: int
) -> None:
    past = named(body, "w" * (longest + 1))
    # Without the admission rule the apiserver would refuse an object (a silent 422).
    assert [p for obj in built(past) for p in problems(obj)] != []
    (message,) = errors_of(past)
    assert f"the maximum here is {longest}" in message
    assert "StatefulSet" in message if body is INFERENCE else "preflight Job" in message


def test_a_63_character_name_is_refused_naming_the_maximum() -> None:
    (message,) = errors_of(named(INFERENCE, "a" * 63))
    assert message.startswith("metadata.name: ")
    assert "is 63 characters; the maximum here is 52" in message
    assert "Kubernetes limits to 63 characters" in message


def test_a_leading_digit_is_refused_because_the_name_is_a_service_name() -> None:
    (message,) = errors_of(named(INFERENCE, "1serve"))
    assert "must start with a lowercase letter" in message
    assert "Service names are DNS-1035 labels" in message
    assert errors_of(named(INFERENCE, "serve1")) == []


@pytest.mark.parametrize("name", ["serve\n", "serve\r", "serve\n-x"])
def test_a_line_break_in_the_name_is_refused(name: str) -> None:
    # Python's `$` also matches before a final newline; the apiserver's rule does not.
    (message,) = errors_of(named(INFERENCE, name))
    assert "must start with a lowercase letter" in message


def test_the_legacy_tuning_name_is_admitted() -> None:
    assert errors_of(named(TUNING, "workspace-tuning-phi-3")) == []


def test_adapter_names_at_their_limits_build_valid_containers_and_volumes() -> None:
    # docker-config-<name>-inference-adapter is the longest name an adapter with pull
    # secrets gives; without secrets only puller-<name> counts.
    with_secrets = with_adapters(INFERENCE, "a" * 31)
    assert errors_of(with_secrets) == []
    assert [p for obj in built(with_secrets) for p in problems(obj)] == []
    without = with_adapters(INFERENCE, "b" * 56, secrets=False)
    assert errors_of(without) == []
    assert [p for obj in built(without) for p in problems(obj)] == []


@pytest.mark.parametrize(
    ("name", "secrets", "expected"),
    [
        ("a" * 32, True, "the maximum here is 31"),
        ("b" * 57, False, "the maximum here is 56"),
        ("lora.v2", False, "may contain only lowercase letters, digits and '-'"),
        ("lora\n", False, "has the wrong format"),
    ],
)
def test_adapter_names_past_their_limits_are_refused(
    name: str, secrets: bool, expected: str
) -> None:
    body = with_adapters(INFERENCE, name, secrets=secrets)
    (message,) = errors_of(body)
    assert message.startswith("inference.adapters[0].source.name: ")
    assert expected in message
    if "maximum" in message:
        assert [p for obj in built(body) for p in problems(obj)] != []


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"app": "x" * 64}, "at most 63 characters"),  # the schema says so
        ({"app": "-bad"}, "label value"),
        ({"team/app!": "x"}, "label key"),
        ({"Bad_Prefix.io/app": "x"}, "prefix must be a DNS subdomain"),
        ({"app": "x\n"}, "label value"),
        ({"app\n": "x"}, "label key"),
        ({"example.com\n/app": "x"}, "prefix must be a DNS subdomain"),
    ],
)
def test_selector_labels_must_be_kubernetes_labels(labels: dict[str, str], expected: str) -> None:
    body = copy.deepcopy(INFERENCE)
    body["resource"]["labelSelector"] = {"matchLabels": labels}
    messages = errors_of(body)
    assert any(m.startswith("resource.labelSelector") and expected in m for m in messages), messages


def test_a_63_character_label_value_is_fine() -> None:
    body = copy.deepcopy(INFERENCE)
    body["resource"]["labelSelector"] = {"matchLabels": {"example.com/app": "v" * 63}}
    assert errors_of(body) == []
