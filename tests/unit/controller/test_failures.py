"""A failing pass: its condition and Event, the error backoff, and the settings behind it."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from kaito.k8s.ownership import ChildWriteError, NameConflictError, Owner
from kaito.operator.controller import Controller
from kaito.operator.failures import (
    RECONCILE_ERROR,
    Failure,
    NodeClaimLimitError,
    backoff_seconds,
    failed_status,
    failure_of,
    recovered_status,
)
from kaito.operator.settings import Settings, SettingsError
from kaito.reconcile.types import Event, Plan
from tests.unit.controller.builders import NOW, legacy_tuning
from tests.unit.controller.test_controller_loop import Stopper
from tests.unit.controller.test_k8s_client import FakeApiServer, not_found

JSON = dict[str, Any]
SERVICE = {"kind": "Service", "metadata": {"name": "ws", "namespace": "ns"}}


def test_a_refused_write_names_the_object_and_keeps_the_apiservers_message() -> None:
    failure = failure_of(ChildWriteError("apply", SERVICE, 422, "spec.ports[0].port: Invalid"))
    assert failure == Failure(
        "Invalid", "apply Service ns/ws failed (422): spec.ports[0].port: Invalid", False
    )


@pytest.mark.parametrize(
    ("code", "message", "reason", "retryable"),
    [
        (403, "services is forbidden: User cannot patch", "Forbidden", False),
        (403, "exceeded quota: compute, requested: pods=1, used: pods=4", "QuotaExceeded", False),
        (409, "the object has been modified", "Conflict", True),
        (500, "etcd timeout", "ApiError", True),
    ],
)
def test_api_codes_become_reasons(code: int, message: str, reason: str, retryable: bool) -> None:
    failure = failure_of(ChildWriteError("apply", SERVICE, code, message))
    assert failure is not None
    assert (failure.reason, failure.retryable) == (reason, retryable)
    assert message in failure.message


def test_a_name_conflict_is_reported_with_the_kind_and_the_object() -> None:
    existing = {"kind": "Job", "metadata": {"name": "ws", "namespace": "ns"}}
    failure = failure_of(NameConflictError(existing, Owner("uid-1", "ws", "ns")))
    assert failure is not None and failure.reason == "NameConflict"
    assert failure.message.startswith("Job ns/ws already exists and was not created by kaito")


def test_errors_that_are_not_the_apis_answer_are_not_reported_as_failures() -> None:
    assert failure_of(RuntimeError("bug")) is None


def test_backoff_doubles_from_the_setting_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff_seconds(1000, 5, 60) == 60


def test_the_failure_goes_into_reconcile_error_and_workspace_succeeded_once() -> None:
    failure = Failure("Forbidden", "apply Service ns/ws failed (403): forbidden")
    status = failed_status({"state": "Pending"}, failure, generation=3, now=NOW)
    assert status is not None
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type[RECONCILE_ERROR]["status"] == "True"
    assert by_type["WorkspaceSucceeded"]["status"] == "False"
    assert {c["reason"] for c in by_type.values()} == {"Forbidden"}
    assert {c["observedGeneration"] for c in by_type.values()} == {3}
    # The same failure again writes nothing: no status churn while it recurs.
    assert failed_status(status, failure, generation=3, now="2026-11-28T13:00:00Z") is None
    cleared = recovered_status(status)
    assert cleared is not None
    assert [c["type"] for c in cleared["conditions"]] == ["WorkspaceSucceeded"]
    assert recovered_status(cleared) is None


class FailingController(Controller):
    """Every pass fails with `error`; reports go to the fake apiserver."""

    def __init__(self, error: BaseException, settings: Settings, server: FakeApiServer) -> None:
        super().__init__(kube=server.kube(), settings=settings)
        self.error = error
        self.calls: list[float] = []

    async def reconcile(self, body: Mapping[str, Any]) -> Plan:
        self.calls.append(time.monotonic())
        raise self.error


async def run_for(controller: Controller, body: JSON, seconds: float) -> None:
    stopper = Stopper()
    task = asyncio.create_task(controller.run_loop(body, stopper))
    await asyncio.sleep(seconds)
    stopper.event.set()
    controller.wake("default", "workspace-tuning-phi-3")
    await asyncio.wait_for(task, timeout=5)


async def test_a_refused_write_is_reported_and_retried_with_exponential_backoff() -> None:
    server = FakeApiServer()
    error = ChildWriteError("apply", SERVICE, 403, "forbidden")
    settings = Settings(error_backoff_seconds=0.2, error_backoff_max_seconds=10)
    controller = FailingController(error, settings, server)
    await run_for(controller, legacy_tuning(), 1.6)
    gaps = [b - a for a, b in zip(controller.calls, controller.calls[1:], strict=False)]
    # 0.2, 0.4, 0.8 s: three retries in 1.6 s, each wait about twice the one before.
    assert len(controller.calls) == 4, gaps
    assert all(later > 1.6 * earlier for earlier, later in itertools.pairwise(gaps))
    status_writes = [r for r in server.requests if r.url.path.endswith("/status")]
    body = json.loads(status_writes[0].content)
    conditions = {c["type"]: c for c in body["status"]["conditions"]}
    assert conditions[RECONCILE_ERROR]["reason"] == "Forbidden"
    assert conditions[RECONCILE_ERROR]["message"] == "apply Service ns/ws failed (403): forbidden"


async def test_child_events_do_not_cut_the_backoff_short() -> None:
    server = FakeApiServer()
    error = ChildWriteError("apply", SERVICE, 422, "invalid")
    settings = Settings(error_backoff_seconds=5)
    controller = FailingController(error, settings, server)
    stopper = Stopper()
    task = asyncio.create_task(controller.run_loop(legacy_tuning(), stopper))
    for _ in range(5):
        await asyncio.sleep(0.1)
        controller.wake("default", "workspace-tuning-phi-3")  # a pod or Job changed
    assert len(controller.calls) == 1
    stopper.event.set()
    controller.wake("default", "workspace-tuning-phi-3")
    await asyncio.wait_for(task, timeout=5)


async def test_a_new_generation_retries_at_once() -> None:
    server = FakeApiServer()
    error = ChildWriteError("apply", SERVICE, 422, "invalid")
    controller = FailingController(error, Settings(error_backoff_seconds=30), server)
    body = legacy_tuning()
    stopper = Stopper()
    task = asyncio.create_task(controller.run_loop(body, stopper))
    await asyncio.sleep(0.2)
    body["metadata"]["generation"] += 1  # kopf updates the body in place
    controller.wake("default", "workspace-tuning-phi-3")
    await asyncio.sleep(0.2)
    assert len(controller.calls) == 2
    stopper.event.set()
    controller.wake("default", "workspace-tuning-phi-3")
    await asyncio.wait_for(task, timeout=5)


async def test_a_recurring_event_is_one_object_whose_count_grows() -> None:
    name_prefix = "/api/v1/namespaces/default/events"
    server = FakeApiServer()
    kube = server.kube()
    body = legacy_tuning()
    event = Event("Warning", "Forbidden", "apply Service default/x failed (403): no")
    await kube.event(body, event)
    created = json.loads(server.requests[0].content)
    name = created["metadata"]["name"]
    path = f"{name_prefix}/{name}"
    conflict = {"kind": "Status", "apiVersion": "v1", "code": 409, "message": "exists"}
    seen = {**created, "count": 4}
    again = FakeApiServer(
        {
            ("POST", name_prefix): (409, conflict),
            ("GET", path): (200, seen),
            ("PATCH", path): (200, {**seen, "count": 5}),
        }
    )
    await again.kube().event(body, event)
    assert [r.method for r in again.requests] == ["POST", "GET", "PATCH"]
    assert json.loads(again.requests[-1].content)["count"] == 5
    other = FakeApiServer()
    await other.kube().event(body, Event("Warning", "Forbidden", "another message"))
    assert json.loads(other.requests[0].content)["metadata"]["name"] != name


async def test_a_successful_pass_clears_the_failure() -> None:
    body = legacy_tuning()
    failing = failed_status(body["status"], Failure("Invalid", "x"), generation=1, now=NOW)
    assert failing is not None
    body["status"] = failing
    server = FakeApiServer()
    controller = Controller(server.kube(), Settings())
    await controller.execute(body, Plan())
    (write,) = [r for r in server.requests if r.url.path.endswith("/status")]
    conditions = json.loads(write.content)["status"]["conditions"]
    assert RECONCILE_ERROR not in {c["type"] for c in conditions}


async def test_an_unreachable_status_write_does_not_hide_the_failure() -> None:
    """Reporting is best effort: the loop backs off either way."""
    workspace = "/apis/kaito.sh/v1beta1/namespaces/default/workspaces/workspace-tuning-phi-3"
    server = FakeApiServer({("PATCH", f"{workspace}/status"): not_found()})
    controller = Controller(server.kube(), Settings())
    await controller.report(legacy_tuning(), Failure("Invalid", "x"))
    assert any(r.url.path.endswith("/events") for r in server.requests)


@pytest.mark.parametrize(
    "variable",
    ["KAITO_RESYNC_SECONDS", "KAITO_ERROR_BACKOFF_SECONDS", "KAITO_ERROR_BACKOFF_MAX_SECONDS"],
)
def test_zero_delays_are_refused(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: "0"})
    assert Settings.from_env({variable: "0.5"})


def test_nodeclaim_caps_are_checked() -> None:
    with pytest.raises(SettingsError, match="KAITO_MAX_NODECLAIMS_PER_WORKSPACE"):
        Settings.from_env({"KAITO_MAX_NODECLAIMS_PER_WORKSPACE": "0"})
    with pytest.raises(SettingsError, match="KAITO_MAX_NODECLAIMS_TOTAL"):
        Settings.from_env({"KAITO_MAX_NODECLAIMS_TOTAL": "-1"})
    assert Settings.from_env({}).max_nodeclaims_per_workspace == 8


async def test_api_errors_while_observing_are_reported_too() -> None:
    error = ApiError(status=Status(code=403, message="nodes is forbidden"))
    failure = failure_of(error)
    assert failure is not None and failure.reason == "Forbidden"
    assert "nodes is forbidden" in failure.message


def claims_list(count: int) -> tuple[int, JSON]:
    items = [
        {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": f"c{i}"}}
        for i in range(count)
    ]
    return 200, {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaimList",
        "metadata": {},
        "items": items,
    }


def two_claims() -> Plan:
    return Plan(
        apply=tuple(
            {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": n}}
            for n in ("wsa", "wsb")
        )
    )


@pytest.mark.parametrize(("existing", "refused"), [(62, False), (63, True)])
async def test_the_cluster_wide_nodeclaim_total_holds(existing: int, refused: bool) -> None:
    routes = {
        ("GET", "/apis/karpenter.sh/v1/nodeclaims"): claims_list(existing),
        ("GET", "/apis/karpenter.sh/v1/nodeclaims/wsa"): not_found(),
        ("GET", "/apis/karpenter.sh/v1/nodeclaims/wsb"): not_found(),
    }
    server = FakeApiServer(routes)
    controller = Controller(server.kube(), Settings(max_nodeclaims_total=64))
    if refused:
        with pytest.raises(NodeClaimLimitError) as caught:
            await controller.execute(legacy_tuning(), two_claims())
        assert "2 more NodeClaim(s) would pass the limit of 64" in str(caught.value)
        failure = failure_of(caught.value)
        assert failure is not None and failure.reason == "NodeClaimLimitReached"
        assert not [r for r in server.requests if r.method == "PATCH"]
    else:
        await controller.execute(legacy_tuning(), two_claims())
        patched = [r.url.path for r in server.requests if r.method == "PATCH"]
        assert patched[:2] == [
            "/apis/karpenter.sh/v1/nodeclaims/wsa",
            "/apis/karpenter.sh/v1/nodeclaims/wsb",
        ]


def test_troubleshooting_explains_every_failure_reason() -> None:
    from kaito.k8s.ownership import WRITE_REASONS
    from kaito.reconcile.guard import NODECLAIM_TIMEOUT
    from tests.unit.deploy.chart import REPO

    text = (REPO / "docs" / "troubleshooting.md").read_text()
    reasons = {
        *WRITE_REASONS.values(),
        "ApiError",
        "QuotaExceeded",
        NameConflictError.reason,
        NodeClaimLimitError.reason,
        NODECLAIM_TIMEOUT,
        "InvalidWorkspace",
        RECONCILE_ERROR,
    }
    assert sorted(r for r in reasons if f"`{r}`" not in text) == []


async def test_a_taken_name_stops_a_pass_but_never_a_deletion() -> None:
    from kaito.api.workspace import parse_workspace
    from tests.unit.controller.builders import OPTIONS
    from tests.unit.controller.test_k8s_client import empty_list

    ns, name = "default", "workspace-tuning-phi-3"
    theirs = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns}}
    routes = {
        ("GET", "/apis/karpenter.sh/v1/nodeclaims"): empty_list("NodeClaim"),
        ("GET", "/api/v1/nodes"): empty_list("Node"),
        ("GET", f"/api/v1/namespaces/{ns}/services"): empty_list("Service"),
        ("GET", f"/api/v1/namespaces/{ns}/pods"): empty_list("Pod"),
        ("GET", f"/apis/apps/v1/namespaces/{ns}/controllerrevisions"): empty_list("X"),
        ("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}"): (200, theirs),
        ("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}-preflight"): not_found(),
        ("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}-results"): not_found(),
        ("GET", f"/api/v1/namespaces/{ns}/configmaps/qlora-params-template"): not_found(),
        ("GET", "/api/v1/namespaces/kaito-system/configmaps/qlora-params-template"): not_found(),
    }
    workspace = parse_workspace(legacy_tuning())
    with pytest.raises(NameConflictError, match=f"Job {ns}/{name} already exists"):
        await FakeApiServer(routes).kube().observe(workspace, OPTIONS)
    observed = await FakeApiServer(routes).kube().observe(workspace, OPTIONS, check_names=False)
    assert observed.nodeclaims == ()


def test_the_webhook_handler_stays_registered_when_the_operator_stops() -> None:
    from kaito.operator.handlers import build_registry

    registry = build_registry(Settings(webhook_enabled=True))
    handlers = registry._webhooks.get_all_handlers()
    assert "workspace" in [h.id for h in handlers]
    for handler in handlers:
        assert handler.persistent is True  # kopf keeps it in the configuration on exit
        assert not handler.ignore_failures  # failurePolicy Fail


async def test_the_ca_is_written_into_the_charts_configuration_and_nothing_else() -> None:
    from kaito.operator.inferenceset import HANDLER_ID
    from kaito.operator.webhook import WEBHOOK_ENTRY, WEBHOOK_NAME, CaPublisher

    async def server(fn: Any) -> Any:
        yield {"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}

    api = FakeApiServer()
    publisher = CaPublisher(server, api.kube(), "validation.workspace.kaito.sh")  # type: ignore[arg-type]
    configs = [config async for config in publisher(lambda *_: None)]
    assert configs == [{"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}]
    (request,) = api.requests
    assert request.method == "PATCH"
    assert request.url.path == (
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
        "validation.workspace.kaito.sh"
    )
    assert request.headers["content-type"] == "application/strategic-merge-patch+json"
    # Both entries the chart registers (Workspace and InferenceSet) trust the same server.
    assert json.loads(request.content) == {
        "webhooks": [
            {"name": WEBHOOK_ENTRY, "clientConfig": {"caBundle": "Q0E="}},
            {"name": f"{HANDLER_ID}.{WEBHOOK_NAME}", "clientConfig": {"caBundle": "Q0E="}},
        ]
    }


async def test_shared_tuning_objects_are_owned_by_their_label_not_by_name() -> None:
    from tests.unit.controller.test_k8s_client import OWNER

    path = "/api/v1/namespaces/ns/serviceaccounts/kaito-tuning"
    desired = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "kaito-tuning",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/managed-by": "kaito"},
        },
    }
    kaitos = copy.deepcopy(desired)
    ok = FakeApiServer({("GET", path): (200, kaitos)})
    await ok.kube().apply(desired, OWNER)
    assert [r.method for r in ok.requests] == ["GET", "PATCH"]
    someone = {**desired, "metadata": {"name": "kaito-tuning", "namespace": "ns"}}
    taken = FakeApiServer({("GET", path): (200, someone)})
    with pytest.raises(NameConflictError, match="ServiceAccount ns/kaito-tuning"):
        await taken.kube().apply(desired, OWNER)
