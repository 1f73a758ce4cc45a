"""Local planning: the operator's validation, volume mapping, and refusing what cannot run here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaito.local import HostInfo, LocalModeError, ServePlan, TuningPlan, plan_workspace
from kaito.local.plan import MEMORY_HEADROOM, RUNTIME_OVERHEAD_GIB, volume_path
from kaito.presets import get_preset

LAPTOP = HostInfo(memory_gib=16.0)
GPU_BOX = HostInfo(memory_gib=64.0, cuda_devices=1, gpu_memory_gib=80.0)


def tuning_workspace(**tuning: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "preset": {"name": "smollm2-135m-instruct"},
        "method": "lora",
        "input": {
            "name": "facts",
            "volumeSource": {"persistentVolumeClaim": {"claimName": "facts"}},
        },
        "output": {"volumeSource": {"persistentVolumeClaim": {"claimName": "adapter"}}},
    }
    spec.update(tuning)
    return {
        "apiVersion": "kaito.sh/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": "tune-small"},
        "resource": {"labelSelector": {"matchLabels": {"apps": "small"}}},
        "tuning": spec,
    }


def inference_workspace(preset: str = "smollm2-135m-instruct", **inference: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": "serve-small"},
        "resource": {"labelSelector": {"matchLabels": {"apps": "small"}}},
        "inference": {"preset": {"name": preset}, **inference},
    }


def test_a_tuning_workspace_maps_its_volumes_to_directories(tmp_path: Path) -> None:
    plan = plan_workspace(
        tuning_workspace(),
        host=LAPTOP,
        volumes={"facts": tmp_path / "data", "adapter": tmp_path / "out"},
    )
    assert isinstance(plan, TuningPlan)
    assert plan.input_dir == tmp_path / "data"
    assert plan.output_dir == tmp_path / "out"
    assert plan.method == "lora"
    assert plan.preset.name == "smollm2-135m-instruct"


def test_an_unmapped_volume_says_which_flag_to_add() -> None:
    with pytest.raises(LocalModeError, match="--volume facts=PATH"):
        plan_workspace(tuning_workspace(), host=LAPTOP, volumes={"adapter": Path("/tmp/x")})


def test_host_path_volumes_need_no_mapping() -> None:
    source = {"hostPath": {"path": "/srv/data"}}
    assert volume_path(source, None, {}, field_path="x") == Path("/srv/data")


def test_loopback_urls_are_allowed_here_though_the_cluster_refuses_them() -> None:
    body = tuning_workspace(input={"urls": ["http://127.0.0.1:8000/train.jsonl"]})
    plan = plan_workspace(body, host=LAPTOP, volumes={"adapter": Path("/tmp/out")})
    assert isinstance(plan, TuningPlan)
    assert plan.input_urls == ("http://127.0.0.1:8000/train.jsonl",)


def test_private_network_urls_are_still_refused() -> None:
    body = tuning_workspace(input={"urls": ["http://10.0.0.5/train.jsonl"]})
    with pytest.raises(LocalModeError, match=r"tuning\.input\.urls\[0\]"):
        plan_workspace(body, host=LAPTOP, volumes={"adapter": Path("/tmp/out")})


def test_a_gpu_preset_on_a_cpu_machine_is_refused_with_what_it_needs() -> None:
    with pytest.raises(LocalModeError, match="needs an NVIDIA GPU") as info:
        plan_workspace(inference_workspace("phi-3-mini-128k-instruct"), host=LAPTOP)
    assert "smollm2-135m-instruct" in str(info.value)


def test_a_gpu_preset_is_served_on_a_gpu_machine() -> None:
    plan = plan_workspace(inference_workspace("phi-3-mini-128k-instruct"), host=GPU_BOX)
    assert isinstance(plan, ServePlan)
    assert (plan.name, plan.preset.name, plan.adapters, plan.config_file, plan.warnings) == (
        "serve-small",
        "phi-3-mini-128k-instruct",
        (),
        None,
        (),
    )


def test_a_gpu_preset_needs_its_weights_plus_headroom_in_gpu_memory_not_ram() -> None:
    preset = get_preset("phi-3-mini-128k-instruct")
    assert preset is not None
    needed = preset.weights_gib * MEMORY_HEADROOM + RUNTIME_OVERHEAD_GIB
    body = inference_workspace(preset.name)
    exactly = HostInfo(memory_gib=1.0, cuda_devices=1, gpu_memory_gib=needed)
    assert isinstance(plan_workspace(body, host=exactly), ServePlan)
    short = HostInfo(memory_gib=512.0, cuda_devices=1, gpu_memory_gib=needed - 0.1)
    with pytest.raises(LocalModeError, match=f"needs about {needed:.1f} GiB"):
        plan_workspace(body, host=short)


def test_too_little_memory_is_refused() -> None:
    with pytest.raises(LocalModeError, match="GiB of memory"):
        plan_workspace(inference_workspace(), host=HostInfo(memory_gib=0.5))


def test_an_unknown_preset_is_an_admission_error() -> None:
    with pytest.raises(LocalModeError, match="preset"):
        plan_workspace(inference_workspace("no-such-model"), host=LAPTOP)


def test_a_named_tuning_config_must_be_given_as_a_file() -> None:
    body = tuning_workspace(config="my-config")
    with pytest.raises(LocalModeError, match="--config FILE"):
        plan_workspace(body, host=LAPTOP, volumes={"facts": Path("/d"), "adapter": Path("/o")})


def test_adapters_keep_their_names_and_strengths(tmp_path: Path) -> None:
    adapters = [
        {
            "source": {"name": "velora", "volumeSource": {"hostPath": {"path": str(tmp_path)}}},
            "strength": "0.5",
        },
        {"source": {"name": "remote", "image": "127.0.0.1:5000/adapters/remote:1"}},
    ]
    plan = plan_workspace(inference_workspace(adapters=adapters), host=LAPTOP)
    assert isinstance(plan, ServePlan)
    assert [(a.name, a.strength, a.directory, a.image) for a in plan.adapters] == [
        ("velora", 0.5, tmp_path, None),
        ("remote", 1.0, None, "127.0.0.1:5000/adapters/remote:1"),
    ]
