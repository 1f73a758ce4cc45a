"""Names kaito derives from a Workspace, and the Kubernetes limits each must meet.

The operator names Services, StatefulSets, Jobs, containers and volumes after the Workspace
and its adapters; a name that one of them cannot carry would only fail at the apiserver
(422) long after admission. These rules reject such a Workspace up front, naming the object
that needs the limit. tests/unit/api/test_names.py builds every manifest of Workspaces at
each limit and checks the objects against the apiserver's own rules, so the table cannot
drift from the builders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kaito.api.errors import FieldError
from kaito.api.workspace import AdapterSpec, Workspace

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_LIMIT = 63
# A StatefulSet's pods carry controller-revision-hash=<statefulset>-<hash of up to 10 chars>.
REVISION_HASH_CHARS = 10


@dataclass(frozen=True)
class Derived:
    """One name built from a Workspace (or adapter) name, and the limit its object sets.

    `what` says where the name goes (for the error message); `template` builds the longest
    form of the derived name from the source name.
    """

    what: str
    template: str
    limit: int = LABEL_LIMIT
    applies: Callable[[Workspace], bool] = lambda _: True

    def longest(self) -> int:
        """The longest source name whose derived name still fits."""
        return self.limit - (len(self.template) - 2)


def _inference(ws: Workspace) -> bool:
    return ws.inference is not None


def _tuning(ws: Workspace) -> bool:
    return ws.tuning is not None


WORKSPACE_NAMES = (
    Derived("it names the Service <name>", "{}"),
    Derived("it names the headless Service <name>-headless", "{}-headless", applies=_inference),
    Derived(
        "the StatefulSet's pods carry the label controller-revision-hash=<name>-<hash of "
        f"up to {REVISION_HASH_CHARS} characters>",
        "{}-" + "h" * REVISION_HASH_CHARS,
        applies=_inference,
    ),
    Derived(
        "it names the preflight Job <name>-preflight (its pods' job-name label)",
        "{}-preflight",
        applies=_tuning,
    ),
)

PULLER = Derived("it names the init container puller-<name>", "puller-{}")
ADAPTER_VOLUME = Derived("it names the volume adapter-volume-<name>", "adapter-volume-{}")
PULL_SECRET_VOLUME = Derived(
    "it names the pull-secret volume docker-config-<name>-inference-adapter",
    "docker-config-{}-inference-adapter",
)


def adapter_rules(adapter: AdapterSpec) -> tuple[Derived, ...]:
    """The names one adapter's source gives to objects (as the inference builder names them)."""
    source = adapter.source
    if source.volume_source is not None:
        return (ADAPTER_VOLUME,)
    if source.image is None:
        return ()
    return (PULLER, PULL_SECRET_VOLUME) if source.image_pull_secrets else (PULLER,)


def longest_workspace_name(ws: Workspace) -> tuple[int, Derived]:
    """The longest name this Workspace may have, and the object that sets that limit."""
    rules = [rule for rule in WORKSPACE_NAMES if rule.applies(ws)]
    rule = min(rules, key=Derived.longest)
    return rule.longest(), rule


def _too_long(
    field: str, name: str, rules: tuple[Derived, ...], ws: Workspace
) -> Iterator[FieldError]:
    applicable = [rule for rule in rules if rule.applies(ws)]
    if not applicable:
        return
    rule = min(applicable, key=Derived.longest)
    if len(name) > rule.longest():
        yield FieldError(
            field,
            f"{name!r} is {len(name)} characters; the maximum here is {rule.longest()}: "
            f"{rule.what}, which Kubernetes limits to {rule.limit} characters",
        )


def workspace_name_errors(ws: Workspace) -> list[FieldError]:
    """The Workspace name: a DNS-1035 label (it names a Service) short enough for every
    name derived from it."""
    name = ws.metadata.name
    if not name:
        return []
    if not DNS1035_LABEL.fullmatch(name):
        return [
            FieldError(
                "metadata.name",
                f"{name!r} must start with a lowercase letter and contain only lowercase "
                "letters, digits and '-' (ending in a letter or digit): it names the Service "
                f"{name}, and Service names are DNS-1035 labels",
            )
        ]
    return list(_too_long("metadata.name", name, WORKSPACE_NAMES, ws))


def adapter_name_errors(ws: Workspace) -> list[FieldError]:
    """Adapter names become container and volume names: DNS-1123 labels within limits."""
    errors: list[FieldError] = []
    adapters = (ws.inference.adapters or []) if ws.inference is not None else []
    for index, adapter in enumerate(adapters):
        name = adapter.source.name
        if not name:
            continue
        field = f"inference.adapters[{index}].source.name"
        if not DNS1123_LABEL.fullmatch(name):
            errors.append(
                FieldError(
                    field,
                    f"{name!r} may contain only lowercase letters, digits and '-' (starting "
                    f"and ending with a letter or digit): it names the container puller-{name}",
                )
            )
            continue
        errors += _too_long(field, name, adapter_rules(adapter), ws)
    return errors


def label_problem(key: str, value: str) -> str | None:
    """Why `key: value` cannot be a Kubernetes label, or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain of at most 253 characters"
    if not name or len(name) > LABEL_LIMIT or not LABEL_NAME.fullmatch(name):
        return (
            f"label key {key!r}: the name must be at most {LABEL_LIMIT} letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit"
        )
    if value and (len(value) > LABEL_LIMIT or not LABEL_NAME.fullmatch(value)):
        return (
            f"label value {value!r} of {key!r}: at most {LABEL_LIMIT} letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit"
        )
    return None


def label_errors(ws: Workspace) -> list[FieldError]:
    """labelSelector labels are put on NodeClaims and their nodes: valid labels only."""
    resource = ws.resource
    if resource is None:
        return []
    errors = []
    for key, value in resource.label_selector.as_map().items():
        problem = label_problem(key, value)
        if problem is not None:
            errors.append(FieldError("resource.labelSelector", f"{problem}; it labels the nodes"))
    return errors


def name_errors(ws: Workspace) -> list[FieldError]:
    """Every derived-name problem of a Workspace."""
    return [*workspace_name_errors(ws), *adapter_name_errors(ws), *label_errors(ws)]
