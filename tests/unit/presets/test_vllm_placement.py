"""One node per vLLM workspace: multi-node placements are refused everywhere, naming a fit."""

from __future__ import annotations

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.errors import SpecError
from kaito.manifests.options import ClusterOptions
from kaito.presets import default_skus, get_preset
from kaito.presets.placement import place
from kaito.presets.validation import admission_message, validate_workspace
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed

from ..api.builders import Body, inference_workspace

NOW = "2026-11-28T12:00:00Z"
SKUS = default_skus()


def llama_on(instance_type: str) -> Body:
    body = inference_workspace(preset="llama-3.3-70b-instruct", instance_type=instance_type)
    body["inference"]["preset"]["modelAccessSecret"] = "hf-token"  # llama is gated
    body["metadata"]["uid"] = "0b3d6c0e-uid"
    return body


def test_admission_refuses_a_vllm_placement_that_needs_three_nodes_and_names_a_fit() -> None:
    # 3 GPUs of 80 GiB are needed; Standard_NC24ads_A100_v4 has one per node. Two nodes hold
    # the weights (the total-memory check passes), but vLLM would have to span them.
    body = llama_on("Standard_NC24ads_A100_v4")
    body["resource"]["count"] = 2
    message = admission_message(validate_workspace(body))
    assert "3 nodes of Standard_NC24ads_A100_v4" in message
    assert "single node" in message and "Standard_NC80adis_H100_v5" in message


def test_a_placement_on_one_node_is_admitted() -> None:
    assert validate_workspace(llama_on("Standard_ND96asr_A100_v4")) == []


def test_the_planner_refuses_it_too_and_asks_for_no_nodes() -> None:
    result = plan(llama_on("Standard_NC24ads_A100_v4"), Observed(), ClusterOptions(), now=NOW)
    assert result.error is not None and result.error.reason == "MultiNodeUnsupported"
    assert not [o for o in result.apply if o["kind"] in ("NodeClaim", "StatefulSet")]


def test_a_node_count_frozen_before_the_rule_is_refused() -> None:
    workspace = parse_workspace(llama_on("Standard_ND96asr_A100_v4"))
    with pytest.raises(SpecError) as refused:
        resolve(workspace, ClusterOptions(), target_nodes=2)
    assert refused.value.reason == "MultiNodeUnsupported"
    assert resolve(workspace, ClusterOptions(), target_nodes=1).target_node_count == 1


@pytest.mark.parametrize(
    ("preset", "instance_type", "runs", "summary"),
    [
        ("phi-4-mini-instruct", "Standard_NC24ads_A100_v4", True, "1 node, 1 GPU (vLLM)"),
        (
            "llama-3.3-70b-instruct",
            "Standard_ND96asr_A100_v4",
            True,
            "1 node, 8 GPUs (vLLM, tensor parallel)",
        ),
        (
            "llama-3.3-70b-instruct",
            "Standard_NC24ads_A100_v4",
            False,
            "refused: 3 nodes, vLLM runs on 1 -> Standard_NC80adis_H100_v5",
        ),
        ("falcon-7b", "Standard_NC6s_v3", True, "1 node, 1 GPU (transformers)"),
        ("falcon-40b", "Standard_NC6s_v3", False, "refused: 77.9 GiB > 16 GiB of one node"),
        ("smollm2-135m-instruct", "Standard_NC6s_v3", True, "CPU: no GPU node needed"),
    ],
)
def test_place_says_how_a_preset_runs_or_why_not(
    preset: str, instance_type: str, runs: bool, summary: str
) -> None:
    found, sku = get_preset(preset), SKUS.get(instance_type)
    assert found is not None and sku is not None
    placement = place(found, sku, SKUS)
    assert (placement.runs, placement.summary) == (runs, summary)
