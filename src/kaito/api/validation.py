"""Catalog-free Workspace validation: the CRD schema and CEL rules, names, URLs, configs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from kaito.api import rules
from kaito.api.errors import FieldError
from kaito.api.names import name_errors
from kaito.api.workspace import (
    ANNOTATION_NODE_IMAGE_FAMILY,
    ANNOTATION_PERFORMANCE_MODE,
    ANNOTATION_RUNTIME,
    ANNOTATION_USE_LOCAL_WEIGHTS,
    API_VERSIONS,
    DOCKER_REFERENCE,
    KIND,
    Workspace,
    apply_version_defaults,
    parse_workspace,
)
from kaito.contract import inference, training
from kaito.contract.files import (
    INFERENCE_CONFIG_FILE,
    MOUNT_ROOT,
    RESULTS_DIR,
    TRAINING_CONFIG_FILE,
    under_mount_root,
)

# (namespace, ConfigMap name) -> its `data`, or None when it does not exist.
ConfigMapLookup = Callable[[str, str], Mapping[str, str] | None]

BLOCKED_HOSTS = (
    "localhost",
    "metadata.google.internal",
    "metadata.google",
    "instance-data.ec2.internal",
)
NODE_IMAGE_FAMILIES = ("ubuntu", "azurelinux")
PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")

# Fix hints by the last path element, so pydantic's generic messages say what to write.
_PATTERN_HINTS = {
    "image": "use an image reference such as registry.example.com/repo:tag",
    "name": "use a DNS-1123 name: lowercase letters, digits, '-' and '.', e.g. my-data",
    "urls": "use an http:// or https:// URL with a host",
    "strength": "use a number from 0 to 1, e.g. 0.5",
}
_TYPE_HINTS = {
    "missing": "is required: add it",
    "extra_forbidden": "is not a Workspace field: remove it or fix the spelling "
    "(fields are camelCase, e.g. instanceType, labelSelector)",
}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if kind in _TYPE_HINTS:
        return _TYPE_HINTS[kind]
    msg = str(error.get("msg", "is invalid"))
    if kind == "string_pattern_mismatch":
        names = [p for p in error.get("loc", ()) if isinstance(p, str)]
        hint = _PATTERN_HINTS.get(names[-1] if names else "", "fix the value's format")
        return f"{error.get('input')!r} has the wrong format: {hint}"
    if kind in ("literal_error", "enum"):
        return f"{error.get('input')!r} is not allowed: {msg[:1].lower()}{msg[1:]}"
    if kind in ("too_long", "too_short") and "List" in msg:
        return f"{msg}: remove or add entries"
    return f"{msg[:1].lower()}{msg[1:]}"


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    """Translate pydantic errors into FieldErrors with camelCase paths and fix hints."""
    return [FieldError(_path(tuple(e["loc"])), _message(e)) for e in exc.errors()]


def _parse(body: Any) -> tuple[Workspace | None, list[FieldError]]:
    if not isinstance(body, dict):
        return None, [FieldError("(root)", "a Workspace must be a YAML/JSON mapping")]
    problems = []
    if body.get("apiVersion") not in API_VERSIONS:
        problems.append(FieldError("apiVersion", f"must be one of {', '.join(API_VERSIONS)}"))
    if body.get("kind") != KIND:
        problems.append(FieldError("kind", f"must be {KIND}"))
    if problems:
        return None, problems
    try:
        return parse_workspace(body), []
    except ValidationError as exc:
        return None, pydantic_errors(exc)


def without_status(body: Any) -> Any:
    """The body as admission sees it: with the status subresource, writes ignore `status`."""
    if isinstance(body, dict) and "status" in body:
        return {k: v for k, v in body.items() if k != "status"}
    return body


def check_structure(body: Any, *, old: Any = None) -> tuple[Workspace | None, list[FieldError]]:
    """What the apiserver enforces from the CRD (schema, then CEL; old = update), plus the
    parsed Workspace when the schema holds, so callers need not parse again."""
    body, old = without_status(body), without_status(old)
    workspace, errors = _parse(body)
    if workspace is None:
        if not errors or errors[0].field in ("(root)", "apiVersion", "kind"):
            return None, errors
        # Report the CEL findings too, so one typo does not hide the other problems; a
        # rule on a field that already has a schema error would only repeat it.
        reported = [e.field for e in errors]
        for field, message in rules.evaluate(apply_version_defaults(body)):
            if not any(field.startswith(r) or r.startswith(field) for r in reported):
                errors.append(FieldError(field, message))
        return None, errors
    old_body: dict[str, Any] | None = None
    if old is not None:
        old_ws, _ = _parse(old)
        # An unparseable stored object cannot be compared; the apiserver would skip it too.
        old_body = old_ws.to_body() if old_ws is not None else None
    failures = rules.evaluate(workspace.to_body(), old_body)
    return workspace, [FieldError(f, m) for f, m in failures]


def validate_structure(body: Any, *, old: Any = None) -> list[FieldError]:
    """What the apiserver enforces from the CRD: schema, then CEL rules (old = update)."""
    return check_structure(body, old=old)[1]


def validate_metadata(workspace: Workspace) -> list[FieldError]:
    """Name and annotation checks the webhook adds on top of the CRD."""
    errors = []
    name = workspace.metadata.name
    if not name and not workspace.metadata.generate_name:
        errors.append(FieldError("metadata.name", "is required: name the Workspace"))
    # It names Services, a StatefulSet or Jobs, and so do the adapters' names containers.
    errors += name_errors(workspace)
    annotations = workspace.annotations
    family = annotations.get(ANNOTATION_NODE_IMAGE_FAMILY)
    if family is not None and family.strip().lower() not in NODE_IMAGE_FAMILIES:
        errors.append(
            FieldError(
                f"metadata.annotations[{ANNOTATION_NODE_IMAGE_FAMILY}]",
                f"{family!r} is not supported: use one of {', '.join(NODE_IMAGE_FAMILIES)}",
            )
        )
    runtime = annotations.get(ANNOTATION_RUNTIME)
    if runtime is not None and runtime.strip().lower() not in ("vllm", "transformers"):
        errors.append(
            FieldError(
                f"metadata.annotations[{ANNOTATION_RUNTIME}]",
                f"{runtime!r} is not a runtime: use vllm or transformers",
            )
        )
    mode = annotations.get(ANNOTATION_PERFORMANCE_MODE)
    if mode is not None and mode not in PERFORMANCE_MODES:
        errors.append(
            FieldError(
                f"metadata.annotations[{ANNOTATION_PERFORMANCE_MODE}]",
                f"{mode!r} is not supported: use one of {', '.join(PERFORMANCE_MODES)}",
            )
        )
    local = annotations.get(ANNOTATION_USE_LOCAL_WEIGHTS)
    if local is not None and local not in ("true", "false"):
        errors.append(
            FieldError(
                f"metadata.annotations[{ANNOTATION_USE_LOCAL_WEIGHTS}]",
                f'{local!r} must be "true" or "false"',
            )
        )
    return errors


def _allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether the operator's allowlist (names, addresses, networks) names `host`."""
    for entry in (e.strip().lower().rstrip(".") for e in allowed_hosts):
        if entry and entry == host:
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry.strip("[]"), strict=False):
                return True
        except ValueError:
            continue
    return False


def url_problem(url: str, allowed_hosts: Collection[str] = ()) -> str | None:
    """Why a dataset URL may not be fetched (SSRF guard), or None when it is fine.

    `allowed_hosts` is the operator's `KAITO_TUNING_ALLOWED_HOSTS` (host names, addresses,
    networks); the tuning pod's downloader enforces the same list at every hop.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not host:
        return "must be an http:// or https:// URL with a host"
    host = host.lower().rstrip(".")
    if _allowed(host, allowed_hosts):
        return None
    if host in BLOCKED_HOSTS or host.endswith(".localhost"):
        return f"points at {host}, which is blocked: use a public data host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
    ):
        return f"points at the internal address {host}, which is blocked: use a public host"
    return None


def validate_tuning_input(
    workspace: Workspace, allowed_hosts: Collection[str] = ()
) -> list[FieldError]:
    """Dataset URLs must be public http(s) (v1beta1's SSRF rules, applied to both versions)."""
    if workspace.tuning is None:
        return []
    errors = []
    for i, url in enumerate(workspace.tuning.input.urls or []):
        problem = url_problem(url, allowed_hosts)
        if problem:
            errors.append(FieldError(f"tuning.input.urls[{i}]", problem))
    return errors


def image_warnings(workspace: Workspace) -> list[FieldError]:
    """Images admitted only by the v0.3.0 rule (e.g. uppercase placeholders) get a warning."""
    images: list[tuple[str, str | None]] = []
    if workspace.tuning is not None:
        images += [
            ("tuning.input.image", workspace.tuning.input.image),
            ("tuning.output.image", workspace.tuning.output.image),
        ]
    if workspace.inference is not None:
        for i, adapter in enumerate(workspace.inference.adapters or []):
            images.append((f"inference.adapters[{i}].source.image", adapter.source.image))
    return [
        FieldError(
            field,
            f"{image!r} is not a valid Docker reference (repository names must be "
            "lowercase); it is accepted for compatibility, but pushing or pulling will fail "
            "until it names a real registry",
            severity="warning",
        )
        for field, image in images
        if image is not None and not re.fullmatch(DOCKER_REFERENCE, image)
    ]


def _output_dir_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string path under {MOUNT_ROOT}, e.g. {RESULTS_DIR}"
    if under_mount_root(value) is None:
        return (
            f"{value!r} must stay under {MOUNT_ROOT} (and not be {MOUNT_ROOT} itself), "
            f"e.g. {RESULTS_DIR}"
        )
    return None


def validate_training_config(text: str, method: str, *, field: str) -> list[FieldError]:
    """Check training_config.yaml content against the tuning method (upstream §6.2)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [FieldError(field, f"{TRAINING_CONFIG_FILE} is not valid YAML: {exc}")]
    top = training.TOP_KEY
    if not isinstance(data, dict) or not isinstance(data.get(top), dict):
        return [FieldError(field, f"{TRAINING_CONFIG_FILE} must be a mapping with key {top}")]
    config = data[top]
    errors = []
    unknown = sorted(set(config) - set(training.SECTIONS))
    if unknown:
        errors.append(
            FieldError(
                field,
                f"unknown {top} sections {unknown}: use only {', '.join(training.SECTIONS)}",
            )
        )
    quant = config.get(training.QUANTIZATION) or {}
    if not isinstance(quant, dict):
        quant = {}
    flags = {}
    for key in ("load_in_4bit", "load_in_8bit"):
        value = quant.get(key)
        if value is not None and not isinstance(value, bool):
            errors.append(FieldError(field, f"QuantizationConfig.{key} must be true or false"))
        flags[key] = value is True
    if flags["load_in_4bit"] and flags["load_in_8bit"]:
        errors.append(
            FieldError(
                field, "QuantizationConfig: load_in_4bit and load_in_8bit cannot both be true"
            )
        )
    quantized = flags["load_in_4bit"] or flags["load_in_8bit"]
    if method == "lora" and quantized:
        errors.append(
            FieldError(
                field, "method lora must not quantize: set load_in_4bit/8bit false, or use qlora"
            )
        )
    if method == "qlora" and not quantized:
        errors.append(
            FieldError(field, "method qlora needs QuantizationConfig.load_in_4bit (or 8bit): true")
        )
    args = config.get(training.TRAINING_ARGUMENTS)
    if isinstance(args, dict) and training.OUTPUT_DIR_KEY in args:
        problem = _output_dir_problem(args[training.OUTPUT_DIR_KEY])
        if problem:
            errors.append(FieldError(field, f"TrainingArguments.output_dir {problem}"))
    return errors


def validate_config_maps(
    workspace: Workspace,
    lookup: ConfigMapLookup,
    *,
    release_namespace: str,
    max_context_length: int | None = None,
) -> list[FieldError]:
    """The referenced ConfigMaps exist and hold valid configs (lookup is injected: no I/O)."""
    if workspace.tuning is not None:
        tuning = workspace.tuning
        namespace = workspace.namespace if tuning.config else release_namespace
        name = tuning.config_map_name
        data = lookup(namespace, name)
        if data is None:
            return [
                FieldError(
                    "tuning.config",
                    f"ConfigMap {name!r} not found in namespace {namespace!r}: create it "
                    f"(key {TRAINING_CONFIG_FILE}) or leave tuning.config empty for the default",
                )
            ]
        if TRAINING_CONFIG_FILE not in data:
            return [
                FieldError("tuning.config", f"ConfigMap {name!r} has no key {TRAINING_CONFIG_FILE}")
            ]
        return validate_training_config(
            data[TRAINING_CONFIG_FILE], tuning.method, field="tuning.config"
        )
    if workspace.inference is not None and workspace.inference.config:
        name = workspace.inference.config
        data = lookup(workspace.namespace, name)
        if data is None:
            return [
                FieldError(
                    "inference.config",
                    f"ConfigMap {name!r} not found in namespace {workspace.namespace!r}: "
                    f"create it with key {INFERENCE_CONFIG_FILE}",
                )
            ]
        return _inference_config_errors(data, name, max_context_length)
    return []


def _vllm_section(text: str) -> dict[str, Any]:
    """The `vllm:` map of inference_config.yaml ({} when absent); raises yaml.YAMLError, or
    InferenceConfigError when it is not a mapping."""
    return inference.vllm_section(yaml.safe_load(text))


def _inference_config_errors(
    data: Mapping[str, str], name: str, max_context_length: int | None
) -> list[FieldError]:
    text = data.get(INFERENCE_CONFIG_FILE)
    if text is None:
        return [
            FieldError("inference.config", f"ConfigMap {name!r} has no key {INFERENCE_CONFIG_FILE}")
        ]
    try:
        vllm = _vllm_section(text)
    except yaml.YAMLError as exc:
        return [FieldError("inference.config", f"{INFERENCE_CONFIG_FILE} is not valid YAML: {exc}")]
    except inference.InferenceConfigError as exc:
        return [FieldError("inference.config", f"{INFERENCE_CONFIG_FILE}: {exc}")]
    if inference.MAX_MODEL_LEN not in vllm:
        return []
    value = inference.max_model_len(vllm)
    if value is None or value < 1:
        return [
            FieldError(
                "inference.config",
                f"{inference.VLLM_SECTION}.{inference.MAX_MODEL_LEN} must be a positive integer",
            )
        ]
    if max_context_length is not None and value > max_context_length:
        return [
            FieldError(
                "inference.config",
                f"{inference.VLLM_SECTION}.{inference.MAX_MODEL_LEN} {value} exceeds the "
                f"model's limit "
                f"{max_context_length}: lower it",
            )
        ]
    return []


def max_model_len(data: Mapping[str, str] | None) -> int | None:
    """vllm.max-model-len from an inference ConfigMap's data, if set and an integer."""
    if not data or INFERENCE_CONFIG_FILE not in data:
        return None
    try:
        return inference.max_model_len(_vllm_section(data[INFERENCE_CONFIG_FILE]))
    except (yaml.YAMLError, inference.InferenceConfigError):
        return None
