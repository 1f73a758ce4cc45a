"""The chart's operator Deployment: every setting wired, probes, pod security, webhook modes."""

from __future__ import annotations

from kaito.operator.settings import PREFIX, Settings
from tests.unit.deploy.chart import find, operator_env, render


def test_the_deployment_sets_every_operator_setting_and_nothing_else() -> None:
    env = operator_env(render())
    wanted = {variable for variable, _, _ in Settings.describe()}
    assert {k for k in env if k.startswith(PREFIX)} == wanted


def test_the_default_values_make_valid_settings_for_an_in_cluster_operator() -> None:
    settings = Settings.from_env(operator_env(render(namespace="kaito")))
    assert settings.release_namespace == "kaito"
    assert settings.runtime_image == "ghcr.io/kaito-project/kaito-python/runtime:0.1.0"
    # The chart installs the webhook configuration; the operator only writes its CA into it.
    assert settings.webhook_enabled and not settings.webhook_managed
    assert settings.webhook_configuration == "validation.workspace.kaito.sh"
    assert settings.webhook_service == "kaito/kaito-webhook"
    assert settings.webhook_host == ""
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_values_reach_the_operator_settings() -> None:
    settings = Settings.from_env(
        operator_env(
            render(
                {
                    "cloudProvider": "aws",
                    "provisioning.mode": "byo",
                    "featureGates.vLLM": False,
                    "runtime.repository": "registry.example/kaito/runtime",
                    "runtime.tag": "1.2.3",
                    "reconcile.resyncSeconds": 60,
                    "webhook.hostOverride": "127.0.0.1",
                    "webhook.port": 10443,
                    "presets.registry": "registry.internal.example/kaito",
                    "presets.pullSecrets": ["internal-registry", "backup"],
                }
            )
        )
    )
    assert settings.cloud_provider == "aws"
    assert settings.node_provisioner == "byo"
    assert settings.feature_vllm is False
    assert settings.runtime_image == "registry.example/kaito/runtime:1.2.3"
    assert settings.resync_seconds == 60.0
    options = settings.cluster_options()
    assert options.preset_registry == "registry.internal.example/kaito"
    assert options.preset_pull_secrets == ("internal-registry", "backup")
    # A local operator is called at the override, not through the Service.
    assert (settings.webhook_host, settings.webhook_service, settings.webhook_port) == (
        "127.0.0.1",
        "",
        10443,
    )


def test_the_operator_pod_is_non_root_read_only_and_probed() -> None:
    deployment = find(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_with_cert_manager_the_chart_registers_the_webhook_and_mounts_the_certificate() -> None:
    objects = render({"webhook.certManager.enabled": True})
    config = find(objects, "ValidatingWebhookConfiguration", "validation.workspace.kaito.sh")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "kaito-system/kaito-webhook"
    )
    assert config["webhooks"][0]["clientConfig"]["service"]["name"] == "kaito-webhook"
    assert find(objects, "Certificate")["spec"]["secretName"] == "kaito-webhook-tls"
    settings = Settings.from_env(operator_env(objects))
    assert settings.webhook_managed is False
    assert settings.webhook_cert_dir == "/etc/kaito/webhook-certs"


def test_without_cert_manager_the_chart_installs_the_webhook_and_the_operator_its_ca() -> None:
    objects = render()
    kinds = {o["kind"] for o in objects}
    config = find(objects, "ValidatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in (config["metadata"].get("annotations") or {})
    assert config["webhooks"][0]["clientConfig"]["service"]["name"] == "kaito-webhook"
    assert "Certificate" not in kinds
    assert "Service" in kinds


def test_with_a_host_override_the_webhook_calls_the_operator_directly() -> None:
    objects = render({"webhook.hostOverride": "127.0.0.1", "webhook.port": 9555})
    config = find(objects, "ValidatingWebhookConfiguration")
    assert config["webhooks"][0]["clientConfig"] == {"url": "https://127.0.0.1:9555/workspace"}
    assert Settings.from_env(operator_env(objects)).webhook_configuration == (
        "validation.workspace.kaito.sh"
    )


def test_workload_tolerations_and_plain_http_registries_reach_the_options() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}
    values = {
        "workloads.tolerations": [toleration],
        "registries.plainHTTP": ["10.245.0.1:5000", "mirror.internal"],
    }
    options = Settings.from_env(operator_env(render(values))).cluster_options()
    assert options.workload_tolerations == (toleration,)
    assert options.plain_http_registries == ("10.245.0.1:5000", "mirror.internal")
    defaults = Settings.from_env(operator_env(render())).cluster_options()
    assert (defaults.workload_tolerations, defaults.plain_http_registries) == ((), ())
