"""The Workspace controller on a real control plane: NodeClaims, kwok nodes, Jobs, StatefulSets."""

from __future__ import annotations

import copy
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient, ApiError, ControlPlane, install_crd
from tests.support.kubelet import finish_preflight

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKSPACE_CRD = REPO / "charts" / "kaito" / "crds" / "kaito.sh_workspaces.yaml"
LEGACY_EXAMPLE = REPO / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"
JSON = dict[str, Any]
NODECLAIMS = "/apis/karpenter.sh/v1/nodeclaims"


class Proc:
    """A background `python -m <module>` bound to the session cluster, logging to a file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=handle, stderr=handle
        )
        return self

    def kill(self) -> None:
        """SIGKILL: the hardest restart, with no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def crds(api: ApiClient, nodeclaim_crd: JSON) -> None:
    """The Workspace CRD (from the chart) next to Karpenter's NodeClaim CRD."""
    install_crd(api, yaml.safe_load(WORKSPACE_CRD.read_text()))


@pytest.fixture(scope="module")
def simulator(
    control_plane: ControlPlane, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """The kwok node provisioner: NodeClaims become Ready fake GPU nodes."""
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    proc = Proc("kaito.provisioners.kwok", control_plane.env(), log).start()
    yield proc
    proc.stop()


StartOperator = Callable[..., Proc]


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, crds: None, namespace: str, tmp_path: Path
) -> Iterator[StartOperator]:
    """Factory for operator processes that watch only this test's namespace."""
    started: list[Proc] = []

    def start(**settings: str) -> Proc:
        env = {
            **control_plane.env(),
            "KAITO_WATCH_NAMESPACE": namespace,
            "KAITO_RESYNC_SECONDS": "20",
            **{f"KAITO_{k.upper()}": v for k, v in settings.items()},
        }
        proc = Proc("kaito.operator", env, tmp_path / "operator.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def workspace_path(namespace: str, name: str) -> str:
    return f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/{name}"


def condition(workspace: JSON, type_: str) -> JSON | None:
    conditions = (workspace.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def wait_condition(
    api: ApiClient,
    namespace: str,
    name: str,
    type_: str,
    status: str = "True",
    *,
    reason: str | None = None,
    timeout_s: float = 90.0,
    logs: Proc | None = None,
) -> JSON:
    def probe() -> JSON | None:
        found = condition(api.get(workspace_path(namespace, name)), type_)
        if found and found["status"] == status and (reason is None or found["reason"] == reason):
            return found
        return None

    try:
        return api.wait_for(probe, timeout_s=timeout_s, interval_s=0.5, what=f"{type_}={status}")
    except TimeoutError:
        current = api.get(workspace_path(namespace, name)).get("status")
        raise AssertionError(
            f"{type_} never became {status}; status: {current}\n" + (logs.tail() if logs else "")
        ) from None


def claims_of(api: ApiClient, namespace: str, name: str) -> list[JSON]:
    selector = f"kaito.sh/workspace={name},kaito.sh/workspacenamespace={namespace}"
    try:
        items: list[JSON] = api.request("GET", NODECLAIMS, query={"labelSelector": selector})[
            "items"
        ]
    except ApiError as error:
        # A freshly installed CRD answers 429 while its storage initialises.
        if error.status == 429:
            return []
        raise
    return items


def listed(api: ApiClient, path: str, selector: str) -> list[JSON]:
    items: list[JSON] = api.request("GET", path, query={"labelSelector": selector})["items"]
    return items


def create_workspace(api: ApiClient, namespace: str, body: JSON) -> JSON:
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    return api.create(body)


def inference_body(name: str, preset: str, instance_type: str, **extra: Any) -> JSON:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, **extra.pop("metadata", {})},
        "resource": {
            "instanceType": instance_type,
            "labelSelector": {"matchLabels": {"app": name}},
            **extra.pop("resource", {}),
        },
        "inference": {"preset": {"name": preset}},
    }


def two_node_llama(name: str) -> JSON:
    """llama-3.3-70b on two 2-GPU A100 nodes with the transformers runtime, one copy per node
    (vLLM runs on one node: a placement that needs several is refused)."""
    body = inference_body(
        name, "llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", resource={"count": 2}
    )
    body["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    body["inference"]["preset"]["modelAccessSecret"] = "hf-token"
    return body


# --- tuning -----------------------------------------------------------------------------


def test_the_legacy_tuning_workspace_trains_on_a_simulated_v100(
    api: ApiClient,
    namespace: str,
    kubectl: Any,
    simulator: Proc,
    start_operator: StartOperator,
) -> None:
    operator = start_operator()
    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    name = "workspace-tuning-phi-3"
    # The dataset preflight runs first, on a pod kwok does not run: report a good dataset.
    finish_preflight(api, namespace, name)

    claims = api.wait_for(lambda: claims_of(api, namespace, name), timeout_s=60, what="a NodeClaim")
    assert len(claims) == 1
    claim = claims[0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1024Gi"
    assert {
        "key": "node.kubernetes.io/instance-type",
        "operator": "In",
        "values": ["Standard_NC6s_v3"],
    } in (claim["spec"]["requirements"])
    assert claim["metadata"]["labels"]["app"] == "tuning-phi-3"

    wait_condition(api, namespace, name, "ResourceReady", logs=operator)
    node = api.get(f"/api/v1/nodes/{claim['metadata']['name']}")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"

    job = api.wait_for(
        lambda: api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"),
        timeout_s=60,
        what="the tuning Job",
    )
    pod_spec = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["data-downloader", name]
    assert [c["name"] for c in pod_spec["containers"]] == ["pusher"]

    def scheduled() -> str | None:
        pods = listed(api, f"/api/v1/namespaces/{namespace}/pods", f"kaito.sh/workspace={name}")
        return next((p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName")), None)

    assert (
        api.wait_for(scheduled, timeout_s=60, what="the Job pod on a node")
        == claim["metadata"]["name"]
    )

    # kwok completes Job pods once they run, as a finished pusher would.
    wait_condition(api, namespace, name, "JobStarted", logs=operator)
    wait_condition(api, namespace, name, "WorkspaceSucceeded", timeout_s=120, logs=operator)
    workspace = api.get(workspace_path(namespace, name))
    assert workspace["status"]["state"] == "Succeeded"
    assert workspace["status"]["workerNodes"] == [claim["metadata"]["name"]]
    assert workspace["metadata"]["annotations"]["workspace.kaito.io/revision"] == "1"
    assert job["metadata"]["annotations"]["workspace.kaito.io/revision"] == "1"
    revisions = listed(
        api,
        f"/apis/apps/v1/namespaces/{namespace}/controllerrevisions",
        f"workspace.kaito.io/name={name}",
    )
    assert [r["revision"] for r in revisions] == [1]

    table = kubectl("get", "workspace", name).stdout.splitlines()
    row = printed_row(table[0], table[1])
    upstream = ["INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "JOBSTARTED", "WORKSPACESUCCEEDED"]
    assert [c for c in row if c in upstream] == upstream
    assert row["INSTANCE"] == "Standard_NC6s_v3"
    assert (row["RESOURCEREADY"], row["JOBSTARTED"], row["WORKSPACESUCCEEDED"]) == ("True",) * 3
    assert row["INFERENCEREADY"] == ""


def printed_row(header: str, line: str) -> dict[str, str]:
    """kubectl's table row by column: cells start where their header starts (cells may be empty)."""
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): line[a:b].strip() for a, b in zip(starts, bounds, strict=True)}


def test_a_failed_node_launch_is_reported_in_the_workspace(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    body = inference_body("no-capacity", "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    create_workspace(api, namespace, body)
    claim = api.wait_for(
        lambda: claims_of(api, namespace, "no-capacity"), timeout_s=60, what="a claim"
    )[0]
    # Mark it failing before the simulator brings up the node; if it already did, the
    # annotation still flips its status to Launched=False.
    api.request(
        "PATCH",
        f"{NODECLAIMS}/{claim['metadata']['name']}",
        {
            "metadata": {
                "annotations": {"kaito.sh/simulate-failure": "InsufficientCapacity: no quota"}
            }
        },
        content_type="application/merge-patch+json",
    )
    found = wait_condition(
        api,
        namespace,
        "no-capacity",
        "NodeClaimReady",
        "False",
        reason="InsufficientCapacity",
        logs=operator,
    )
    assert "no quota" in found["message"]
    resource = condition(api.get(workspace_path(namespace, "no-capacity")), "ResourceReady")
    assert resource is not None and resource["status"] == "False"


# --- inference --------------------------------------------------------------------------


def test_a_multi_gpu_preset_is_served_on_two_nodes_and_reports_crash_loops(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    name = "llama"
    create_workspace(api, namespace, two_node_llama(name))

    claims = api.wait_for(
        lambda: found if len(found := claims_of(api, namespace, name)) >= 2 else None,
        timeout_s=60,
        what="two NodeClaims",
    )
    assert len(claims) == 2
    wait_condition(api, namespace, name, "InferenceReady", timeout_s=120, logs=operator)
    wait_condition(api, namespace, name, "WorkspaceSucceeded", logs=operator)
    workspace = api.get(workspace_path(namespace, name))
    assert workspace["status"]["targetNodeCount"] == 2
    assert workspace["status"]["state"] == "Ready"

    sts = api.get(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}")
    assert sts["spec"]["replicas"] == 2
    assert sts["status"]["readyReplicas"] == 2
    main = sts["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "2"
    service = api.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    assert next((p["port"], p["targetPort"]) for p in service["spec"]["ports"]) == (80, 5000)
    headless = api.get(f"/api/v1/namespaces/{namespace}/services/{name}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    pods = listed(api, f"/api/v1/namespaces/{namespace}/pods", f"kaito.sh/workspace={name}")
    assert {p["spec"]["nodeName"] for p in pods} == {c["metadata"]["name"] for c in claims}

    # A kubelet would report a crash loop like this; kwok leaves running pods alone.
    victim = pods[0]
    container = victim["spec"]["containers"][0]["name"]
    status = copy.deepcopy(victim["status"])
    status["conditions"] = [
        {**c, "status": "False"} if c["type"] in ("Ready", "ContainersReady") else c
        for c in status.get("conditions", [])
    ]
    status["containerStatuses"] = [
        {
            "name": container,
            "image": victim["spec"]["containers"][0]["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 5,
            "started": False,
            "state": {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 2m40s restarting failed container",
                }
            },
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }
    ]
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{victim['metadata']['name']}/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )
    found = wait_condition(
        api,
        namespace,
        name,
        "InferenceReady",
        "False",
        reason="ContainerCrashLoopBackOff",
        logs=operator,
    )
    assert victim["metadata"]["name"] in found["message"]
    assert api.get(workspace_path(namespace, name))["status"]["state"] == "NotReady"


def test_existing_nodes_mode_uses_labelled_gpu_nodes_and_creates_no_nodeclaims(
    api: ApiClient,
    namespace: str,
    fake_nodes: Callable[..., JSON],
    start_operator: StartOperator,
) -> None:
    operator = start_operator(node_provisioner="byo")
    label = f"byo-{namespace}"
    nodes = {
        fake_nodes(gpus=1, instance_type="Standard_NC24ads_A100_v4", labels={"app": label})[
            "metadata"
        ]["name"]
        for _ in range(2)
    }
    fake_nodes(gpus=1, instance_type="Standard_NC24ads_A100_v4", labels={"app": "someone-else"})
    body = inference_body(
        label, "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", resource={"count": 2}
    )
    body["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    create_workspace(api, namespace, body)
    wait_condition(api, namespace, label, "WorkspaceSucceeded", timeout_s=120, logs=operator)
    pods = listed(api, f"/api/v1/namespaces/{namespace}/pods", f"kaito.sh/workspace={label}")
    assert {p["spec"]["nodeName"] for p in pods} == nodes
    assert claims_of(api, namespace, label) == []
    workspace = api.get(workspace_path(namespace, label))
    assert condition(workspace, "NodeClaimReady") is None
    assert sorted(workspace["status"]["workerNodes"]) == sorted(nodes)


def test_a_spec_change_rolls_the_statefulset_and_a_lost_nodeclaim_is_replaced(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    name = "rolling"
    create_workspace(
        api, namespace, inference_body(name, "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    )
    wait_condition(api, namespace, name, "WorkspaceSucceeded", timeout_s=120, logs=operator)
    sts_path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"
    assert api.get(sts_path)["metadata"]["annotations"]["workspace.kaito.io/revision"] == "1"

    adapter = {"source": {"name": "lora-a", "image": "registry.example.com/adapters/a:1"}}
    api.request(
        "PATCH",
        workspace_path(namespace, name),
        {"inference": {"adapters": [adapter]}},
        content_type="application/merge-patch+json",
    )

    def rolled() -> JSON | None:
        sts = api.get(sts_path)
        revision = sts["metadata"]["annotations"].get("workspace.kaito.io/revision")
        return sts if revision == "2" else None

    sts = api.wait_for(rolled, timeout_s=60, what="the StatefulSet at revision 2")
    inits = sts["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["puller-lora-a"]

    def rollout_event() -> bool:
        events = api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e["reason"] == "WorkloadRollout" for e in events)

    api.wait_for(rollout_event, timeout_s=30, what="a WorkloadRollout event")

    (claim,) = claims_of(api, namespace, name)
    api.delete(
        {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": claim["metadata"]}
    )

    def replaced() -> JSON | None:
        found = claims_of(api, namespace, name)
        fresh = [c for c in found if c["metadata"]["uid"] != claim["metadata"]["uid"]]
        return fresh[0] if fresh else None

    again = api.wait_for(replaced, timeout_s=60, what="a replacement NodeClaim")
    assert again["metadata"]["name"] == claim["metadata"]["name"]
    assert len(claims_of(api, namespace, name)) == 1
    wait_condition(api, namespace, name, "NodeClaimReady", timeout_s=60, logs=operator)


# --- restarts and deletion --------------------------------------------------------------


def test_restarting_the_operator_mid_reconcile_leaves_exactly_the_expected_objects(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    name = "restarts"
    create_workspace(api, namespace, two_node_llama(name))
    rng = random.Random(5)
    for _ in range(10):
        operator = start_operator()
        time.sleep(rng.uniform(0.5, 2.5))
        operator.kill()
    operator = start_operator()
    wait_condition(api, namespace, name, "WorkspaceSucceeded", timeout_s=150, logs=operator)

    claims = claims_of(api, namespace, name)
    assert len(claims) == 2, [c["metadata"]["name"] for c in claims]
    own = f"kaito.sh/workspace={name}"
    assert len(listed(api, f"/apis/apps/v1/namespaces/{namespace}/statefulsets", "")) == 1
    assert sorted(
        s["metadata"]["name"] for s in listed(api, f"/api/v1/namespaces/{namespace}/services", own)
    ) == [
        name,
        f"{name}-headless",
    ]
    config_maps = [
        c["metadata"]["name"]
        for c in listed(api, f"/api/v1/namespaces/{namespace}/configmaps", own)
    ]
    assert config_maps == [f"{name}-inference-config"]

    api.delete(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
        }
    )
    api.wait_for(
        lambda: not api.exists(workspace_path(namespace, name)),
        timeout_s=60,
        what="the workspace to go",
    )
    api.wait_for(lambda: not claims_of(api, namespace, name), timeout_s=30, what="NodeClaims to go")
    for claim in claims:
        node_path = f"/api/v1/nodes/{claim['metadata']['name']}"

        def node_gone(path: str = node_path) -> bool:
            return not api.exists(path)

        api.wait_for(node_gone, timeout_s=30, what=node_path)
    api.wait_for(
        lambda: not api.exists(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"),
        timeout_s=60,
        what="the StatefulSet to be garbage-collected",
    )
    api.wait_for(
        lambda: not listed(api, f"/api/v1/namespaces/{namespace}/services", own),
        timeout_s=60,
        what="the Services to be garbage-collected",
    )


# --- admission ----------------------------------------------------------------------------


def test_the_admission_webhook_rejects_what_validation_rejects_and_admits_the_legacy_yaml(
    api: ApiClient, namespace: str, kubectl: Any, start_operator: StartOperator
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook_path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    operator = start_operator(
        webhook_enabled="true", webhook_address="127.0.0.1", webhook_port=str(port)
    )
    try:
        api.wait_for(
            lambda: api.exists(f"{webhook_path}/validation.workspace.kaito.sh"),
            timeout_s=60,
            what="the managed ValidatingWebhookConfiguration",
        )
        bad = inference_body("typo", "phi-3-mini-4k-instruc", "Standard_NC24ads_A100_v4")
        bad["metadata"]["namespace"] = namespace

        def rejected() -> str | None:
            result = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
            if result.returncode != 0 and "admission webhook" in result.stderr:
                return str(result.stderr)
            if result.returncode == 0:
                kubectl("delete", "workspace", "typo", "--wait=false", check=False)
            return None

        message = api.wait_for(rejected, timeout_s=60, interval_s=1.0, what="a webhook rejection")
        assert "phi-3-mini-4k-instruct" in message, operator.tail()
        admitted = kubectl("apply", "-f", str(LEGACY_EXAMPLE))
        assert "created" in admitted.stdout
    finally:
        operator.stop()
        # failurePolicy Fail with no server would block every later Workspace write.
        api.delete(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "validation.workspace.kaito.sh"},
            }
        )
