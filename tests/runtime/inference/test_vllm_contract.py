"""vLLM contract: every preset's generated command passes the pinned vLLM's own checks.

For each catalog preset whose default runtime is vLLM, on the smallest single-node SKU, on a
multi-GPU SKU, and with a LoRA adapter, this builds the pod the operator would create (the real
manifest builders), emulates its mounts (ConfigMap file, adapter directory, weights volume),
runs the runtime's own flag parsing to get the exact vLLM command it would exec, checks that
every file the command names exists, and hands all commands to ONE subprocess in the pinned
vLLM environment (tools/setup.d/60-vllm-contract.sh) that runs vLLM's parser, serve-argument
checks and model-free engine configs (tests/support/vllm_probe.py). Placements that need more
than one node must be refused at admission and by the planner, naming a single-node SKU.

Verdicts are cached under $KAITO_HOME/vllm-contract/verdicts, keyed by every input (commands,
template contents, probe source, pin), so an unchanged tree costs no vLLM start-up;
KAITO_VLLM_CONTRACT_CACHE=0 forces a fresh run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kaito.api.workspace import ANNOTATION_API_KEY_SECRET, parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.errors import SpecError
from kaito.manifests.inference import build_inference_objects
from kaito.manifests.options import ClusterOptions
from kaito.presets import Preset, default_catalog, default_skus, select_runtime
from kaito.presets.estimator import estimate_nodes
from kaito.presets.validation import admission_message, suggest_skus, validate_workspace
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from kaito.runtime.chat_templates import TEMPLATE_DIR
from kaito.runtime.inference.config import parse_args
from kaito.runtime.inference.vllm import (
    VLLM_API_KEY_ENV,
    VLLM_MODULE,
    build_vllm_argv,
    vllm_environment,
)
from tests.unit.api.builders import inference_workspace
from tests.unit.controller.builders import NOW, stored

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = REPO / "pyproject.toml"
PROBE = REPO / "tests" / "support" / "vllm_probe.py"
KAITO_HOME = Path(os.environ.get("KAITO_HOME") or Path.home() / ".cache" / "kaito")
ENV_DIR = KAITO_HOME / "vllm-contract"
ENV_PYTHON = ENV_DIR / "bin" / "python"
VERDICTS = ENV_DIR / "verdicts"
CLOUD = "azure"
ADAPTER_RANK = 32  # above vLLM's default --max-lora-rank, so the runtime must raise it
SKUS = default_skus()
OPTIONS = ClusterOptions()


def pinned_requirement() -> str:
    """The `vllm==` pin of the gpu extra: what the GPU image and the contract environment get."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return next(r for r in extras["gpu"] if r.replace(" ", "").startswith("vllm=="))


def pinned_version() -> str:
    return pinned_requirement().split("==", 1)[1].strip()


def vllm_presets() -> list[Preset]:
    return [p for p in default_catalog() if not p.deprecated and select_runtime(p) == "vllm"]


@dataclass(frozen=True)
class Placement:
    """One preset on one instance type, with or without a LoRA adapter."""

    preset: str
    sku: str
    adapter: bool = False
    api_key: bool = False

    @property
    def name(self) -> str:
        return (
            f"{self.preset} on {self.sku}"
            + (" with a LoRA adapter" if self.adapter else "")
            + (" with an API key" if self.api_key else "")
        )

    def body(self) -> dict[str, Any]:
        body = workspace(self.preset, self.sku, adapter=self.adapter)
        if self.api_key:
            body["metadata"]["annotations"] = {ANNOTATION_API_KEY_SECRET: "serve-key"}
        return body


def workspace(
    preset_name: str, sku: str, *, adapter: bool = False, count: int = 1
) -> dict[str, Any]:
    """The Workspace a user would apply for `preset_name` on `sku`, as the apiserver stores it."""
    preset = default_catalog().get(preset_name)
    assert preset is not None
    body = inference_workspace(name="contract", preset=preset_name, instance_type=sku)
    body["resource"]["count"] = count
    if preset.download_auth_required and preset.download_at_runtime:
        body["inference"]["preset"]["modelAccessSecret"] = "hf-token"
    if adapter:
        image = "registry.example.com/adapters/my-adapter:1"
        body["inference"]["adapters"] = [{"source": {"name": "my-adapter", "image": image}}]
    return stored(body)


# The acceptance placement (phi-4-mini on one A100), and one serving with an API key.
EXTRA = [
    Placement("phi-4-mini-instruct", "Standard_NC24ads_A100_v4"),
    Placement("phi-4-mini-instruct", "Standard_NC24ads_A100_v4", api_key=True),
]
# What the emulated kubelet writes for every Secret volume item.
SECRET_TEXT = "contract-secret-0123456789"


def placements() -> list[Placement]:
    """Per preset: the smallest single-node SKU, a multi-GPU one, and an adapter variant."""
    out: list[Placement] = []
    for preset in vllm_presets():
        fitting = suggest_skus(preset, SKUS, CLOUD, limit=100)
        assert fitting, f"{preset.name}: no single-node instance type holds it"
        multi_gpu = next(s for s in fitting if (sku := SKUS.get(s)) and sku.gpus > 1)
        out.append(Placement(preset.name, fitting[0]))
        if multi_gpu != fitting[0]:
            out.append(Placement(preset.name, multi_gpu))
        if preset.allow_lora:
            out.append(Placement(preset.name, fitting[0], adapter=True))
    return out + [p for p in EXTRA if p not in out]


def multi_node_placements() -> list[tuple[str, str]]:
    """Per preset, the smallest current SKU on which it would need several nodes (if any)."""
    out = []
    current = sorted(
        (s for s in SKUS if s.cloud == CLOUD and not s.is_legacy and s.compute_capability),
        key=lambda s: (s.gpu_memory_gib, s.name),
    )
    for preset in vllm_presets():
        spread = next((s for s in current if estimate_nodes(preset, s).nodes > 1), None)
        if spread is not None:
            out.append((preset.name, spread.name))
    return out


@dataclass(frozen=True)
class Command:
    """What the pod would exec, with pod paths (as vLLM sees them) and where files are."""

    module: str
    argv: list[str]
    env: dict[str, str]
    missing_files: list[str]


def _main_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = statefulset["spec"]["template"]["spec"]["containers"]
    return containers[0]


def pod_command(placement: Placement, root: Path) -> Command:
    """Build the operator's objects, emulate the pod's mounts under `root`, run the runtime's
    own parsing, and return the vLLM command it would exec."""
    body = placement.body()
    assert admission_message(validate_workspace(body)) == "", placement.name
    ctx = resolve(parse_workspace(body), OPTIONS)
    objects = build_inference_objects(ctx)
    statefulset = next(o for o in objects if o["kind"] == "StatefulSet")
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    pod = statefulset["spec"]["template"]["spec"]
    main = _main_container(statefulset)
    assert main["command"] == ["python", "-m", "kaito.runtime.inference"], placement.name

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = sorted((m["mountPath"] for m in main["volumeMounts"]), key=len, reverse=True)
    for mount in main["volumeMounts"]:
        where = root / mount["mountPath"].lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        config_map = volumes.get(mount["name"], {}).get("configMap")
        if config_map is not None:
            for key, text in config_maps[config_map["name"]]["data"].items():
                (where / key).write_text(text)
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is not None:
            for item in secret.get("items", []):
                (where / item["path"]).write_text(SECRET_TEXT + "\n")
    for init in pod.get("initContainers", []):
        if init["name"].startswith("puller-"):
            # What the puller leaves behind: a PEFT adapter directory.
            target = root / init["args"][1].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            (target / "adapter_config.json").write_text(
                json.dumps({"peft_type": "LORA", "r": ADAPTER_RANK})
            )

    def into_pod(value: str) -> str:
        for mount in mounts:
            if value == mount or value.startswith(mount + "/"):
                return str(root) + value
        return value

    args = []
    for arg in main["args"]:
        key, sep, value = arg.partition("=")
        args.append(f"{key}={into_pod(value)}" if sep else arg)
    env = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
    config = parse_args(args, environ=env)
    assert config.engine == "vllm", placement.name
    argv = build_vllm_argv(config, environ=env)

    missing = []
    for token in argv:
        path = token.split("=", 1)[1] if "=" in token and not token.startswith("-") else token
        if path.startswith("/") and not Path(path).exists():
            missing.append(path)
    pod_argv = [token.replace(str(root), "") for token in argv]
    return Command(VLLM_MODULE, pod_argv, vllm_environment(config, env), missing)


def _path_digest(argv: list[str]) -> dict[str, str]:
    """Content digests of the real files a command names (the chat templates)."""
    out = {}
    for token in argv:
        path = Path(token)
        if token.startswith("/") and path.is_file():
            out[token] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_probe(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM's verdicts on `cases`, from the cache when every input is unchanged."""
    key_material = json.dumps(
        {
            "cases": cases,
            "files": {c["name"]: _path_digest(c["argv"]) for c in cases},
            "probe": PROBE.read_text(),
            "pin": pinned_requirement(),
            "stamp": (ENV_DIR / ".kaito-stamp").read_text(),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:32]
    cached = VERDICTS / f"{key}.json"
    use_cache = os.environ.get("KAITO_VLLM_CONTRACT_CACHE", "1") != "0"
    if use_cache and cached.is_file():
        verdicts: dict[str, Any] = json.loads(cached.read_text())
        return verdicts
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        # vLLM's parser needs no GPU; the CPU platform keeps it from probing CUDA devices.
        "VLLM_TARGET_DEVICE": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    done = subprocess.run(
        [str(ENV_PYTHON), str(PROBE)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"the vLLM probe crashed:\n{done.stderr[-4000:]}"
    verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    VERDICTS.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(verdicts))
    # Keep the few newest: one per recently tested tree is all a re-run can hit.
    for old in sorted(VERDICTS.glob("*.json"), key=lambda f: f.stat().st_mtime)[:-8]:
        old.unlink(missing_ok=True)
    return verdicts


def _require_env() -> None:
    if ENV_PYTHON.exists() and (ENV_DIR / ".kaito-stamp").is_file():
        return
    message = f"no vLLM contract environment at {ENV_DIR}: run tools/setup.d/60-vllm-contract.sh"
    # CI sets these so a missing environment can never pass as a skipped test.
    if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1" or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


SABOTAGE = {
    "renamed flag": lambda argv: [*argv, "--max-num-sequences", "8"],
    "missing chat template": lambda argv: [
        *argv,
        "--chat-template",
        "/workspace/chat_templates/no-such-template.jinja",
    ],
    "invalid value": lambda argv: [*argv, "--gpu-memory-utilization", "1.5"],
    # What the operator generated before: pipeline parallel over nodes through Ray.
    "multi-node Ray flags": lambda argv: [
        *argv,
        "--pipeline-parallel-size",
        "2",
        "--distributed-executor-backend",
        "ray",
    ],
    "unknown tool parser": lambda argv: [
        *argv,
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "no-such-parser",
    ],
}


@dataclass(frozen=True)
class Contract:
    commands: dict[str, Command]
    verdicts: dict[str, str | None]
    vllm_version: str


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contract]:
    _require_env()
    commands: dict[str, Command] = {}
    for index, placement in enumerate(placements()):
        root = tmp_path_factory.mktemp(f"pod{index}")
        commands[placement.name] = pod_command(placement, root)
    cases = [
        {"name": name, "module": c.module, "argv": c.argv, "env": c.env}
        for name, c in commands.items()
    ]
    base = commands[Placement("phi-4-mini-instruct", "Standard_NC24ads_A100_v4").name]
    cases += [
        {"name": f"sabotage: {what}", "module": base.module, "argv": change(base.argv), "env": {}}
        for what, change in SABOTAGE.items()
    ]
    cases.append(
        {"name": "sabotage: renamed module", "module": "vllm.no_such_server", "argv": base.argv}
    )
    answer = run_probe(cases)
    yield Contract(commands, answer["results"], answer["vllm"])


def test_the_probe_runs_the_pinned_vllm(contract: Contract) -> None:
    assert contract.vllm_version == pinned_version()


def test_every_vllm_preset_command_passes_vllms_own_checks(contract: Contract) -> None:
    failures = [
        f"{name}: {verdict}"
        for name, verdict in contract.verdicts.items()
        if verdict is not None and not name.startswith("sabotage")
    ]
    assert failures == [], "\n".join(failures)
    assert len(contract.commands) >= 2 * len(vllm_presets())


def test_every_file_a_command_names_exists_in_the_pod(contract: Contract) -> None:
    missing = [f"{n}: {c.missing_files}" for n, c in contract.commands.items() if c.missing_files]
    assert missing == []


@pytest.mark.parametrize("what", [*SABOTAGE, "renamed module"])
def test_the_check_catches_what_would_stop_vllm_before_it_loads(
    contract: Contract, what: str
) -> None:
    verdict = contract.verdicts[f"sabotage: {what}"]
    assert verdict is not None
    expected = {
        "renamed flag": "parse:",
        "missing chat template": "doesn't exist",
        "invalid value": "gpu_memory_utilization",
        "multi-node Ray flags": "parallel config",
        "unknown tool parser": "invalid tool call parser",
        "renamed module": "does not exist",
    }[what]
    assert expected in verdict


def test_phi_4_mini_on_an_a100_keeps_vllms_batch_size_and_a_shipped_template(
    tmp_path: Path,
) -> None:
    # No vLLM needed: this is the command the runtime would exec.
    argv = pod_command(Placement("phi-4-mini-instruct", "Standard_NC24ads_A100_v4"), tmp_path).argv
    assert not [a for a in argv if a.startswith("--max-num-seqs")]
    template = Path(flag_value(argv, "--chat-template"))
    assert template.parent == TEMPLATE_DIR and template.is_file()
    assert flag_value(argv, "--revision") == flag_value(argv, "--code-revision") == "c0fb9e74abda"
    assert "--trust-remote-code" not in argv


def flag_value(argv: list[str], flag: str) -> str:
    """The value of `flag` in either spelling, `--flag value` or `--flag=value`."""
    for index, token in enumerate(argv):
        if token == flag:
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {argv}")


def test_the_api_key_reaches_vllm_in_its_environment_not_its_command_line(
    contract: Contract,
) -> None:
    keyed = Placement("phi-4-mini-instruct", "Standard_NC24ads_A100_v4", api_key=True)
    command = contract.commands[keyed.name]
    assert command.env.get(VLLM_API_KEY_ENV) == SECRET_TEXT
    assert not [a for a in command.argv if SECRET_TEXT in a or a.startswith("--api-key")]
    assert contract.verdicts[keyed.name] is None


def test_adapters_raise_the_lora_rank_to_fit(contract: Contract) -> None:
    argv = contract.commands[Placement("phi-4-mini-instruct", "Standard_NV36ads_A10_v5", True).name]
    assert "--enable-lora" in argv.argv
    assert flag_value(argv.argv, "--max-lora-rank") == str(ADAPTER_RANK)


def test_a_multi_gpu_node_shares_the_model_by_tensor_parallelism(contract: Contract) -> None:
    argv = contract.commands[Placement("llama-3.3-70b-instruct", "Standard_NC80adis_H100_v5").name]
    assert flag_value(argv.argv, "--tensor-parallel-size") == "2"
    assert not [a for a in argv.argv if "pipeline-parallel" in a or "distributed-executor" in a]


@pytest.mark.parametrize(("preset", "sku"), multi_node_placements())
def test_a_placement_needing_several_nodes_is_refused_naming_one_that_fits(
    preset: str, sku: str
) -> None:
    found, instance = default_catalog().get(preset), SKUS.get(sku)
    assert found is not None and instance is not None
    # As many nodes as the estimate asks for, so only the multi-node rule can refuse it.
    body = workspace(preset, sku, count=estimate_nodes(found, instance).nodes)
    message = admission_message(validate_workspace(body))
    fits = suggest_skus(found, SKUS, CLOUD)
    assert "single node" in message and fits[0] in message, message
    with pytest.raises(SpecError) as refused:
        resolve(parse_workspace(body), OPTIONS)
    assert refused.value.reason == "MultiNodeUnsupported"
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert not [o for o in result.apply if o["kind"] in ("StatefulSet", "NodeClaim")]
