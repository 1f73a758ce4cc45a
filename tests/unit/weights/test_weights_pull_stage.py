"""The weights pull stage: init container, node cache volume and pull secrets (pure builders)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kaito.api.workspace import parse_workspace
from kaito.contract.files import WEIGHTS_DIR
from kaito.manifests.context import resolve
from kaito.manifests.inference import build_pod_template, build_statefulset
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_job
from kaito.manifests.weights import (
    CACHE_HOST_PATH,
    CACHE_MOUNT,
    INIT_NAME,
    SECRETS_DIR,
    build_weights_pull,
    weights_image,
    with_weights_pull,
)
from kaito.presets import Preset, default_catalog
from kaito.presets.catalog import preset_from_dict
from tests.unit.api.builders import inference_workspace, make_workspace, tuning_workspace
from tests.unit.controller.builders import OPTIONS, stored

JSON = dict[str, Any]
IMAGE = "registry.example.com/kaito/phi-3-mini-4k-instruct:0.2.0"


def _workspace(**options: Any) -> Any:
    builder = make_workspace("serve-phi-3").inference()
    body = (builder.preset_options(**options) if options else builder).obj()
    return parse_workspace(stored(body))


def _pod_spec() -> JSON:
    spec: JSON = build_pod_template(resolve(_workspace(), OPTIONS))["spec"]
    return spec


def test_a_preset_without_an_image_has_no_pull_stage() -> None:
    assert weights_image(_workspace().inference.preset) is None


def test_the_preset_options_image_and_its_secrets_name_the_weights_image() -> None:
    workspace = _workspace(image=IMAGE, imagePullSecrets=["acr", "acr", "backup"])
    assert weights_image(workspace.inference.preset) == (IMAGE, ["acr", "acr", "backup"])


def test_the_puller_runs_kaito_models_pull_into_the_weights_dir_through_the_node_cache() -> None:
    options = ClusterOptions(runtime_image="registry.example.com/kaito/runtime:1")
    pull = build_weights_pull(IMAGE, options)
    init = pull.init_container
    assert init["name"] == INIT_NAME
    assert init["image"] == "registry.example.com/kaito/runtime:1"
    assert init["command"][:6] == ["python", "-m", "kaito.cli.main", "models", "pull", IMAGE]
    assert init["command"][6:] == [WEIGHTS_DIR, "--cache-dir", CACHE_MOUNT]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {WEIGHTS_DIR, CACHE_MOUNT}
    assert pull.volumes == [
        {
            "name": "weights-cache",
            "hostPath": {"path": CACHE_HOST_PATH, "type": "DirectoryOrCreate"},
        }
    ]
    assert pull.image_pull_secrets == []


def test_without_a_host_path_the_cache_lives_in_the_pod() -> None:
    pull = build_weights_pull(IMAGE, OPTIONS, cache_host_path=None)
    assert pull.volumes == [{"name": "weights-cache", "emptyDir": {}}]


def test_pull_secrets_are_projected_once_each_and_offered_to_the_puller() -> None:
    pull = build_weights_pull(IMAGE, OPTIONS, pull_secrets=["acr", "acr", "backup"])
    assert pull.init_container["command"][-2:] == ["--docker-config-dir", SECRETS_DIR]
    projected = next(v for v in pull.volumes if "projected" in v)["projected"]["sources"]
    assert [s["secret"]["name"] for s in projected] == ["acr", "backup"]
    assert projected[0]["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "acr.json"}]
    assert pull.image_pull_secrets == [{"name": "acr"}, {"name": "backup"}]


def test_the_inference_pod_pulls_first_and_serves_the_pulled_weights() -> None:
    original = _pod_spec()
    hub_model = next(a for a in original["containers"][0]["args"] if a.startswith("--model="))
    assert hub_model != f"--model={WEIGHTS_DIR}"
    spec = with_weights_pull(original, build_weights_pull(IMAGE, OPTIONS, pull_secrets=["acr"]))
    assert spec["initContainers"][0]["name"] == INIT_NAME
    assert f"--model={WEIGHTS_DIR}" in spec["containers"][0]["args"]
    assert hub_model not in spec["containers"][0]["args"]
    names = [v["name"] for v in spec["volumes"]]
    assert "model-weights-volume" in names and "weights-cache" in names
    assert names.count("model-weights-volume") == 1
    assert {"name": "acr"} in spec["imagePullSecrets"]
    assert original == _pod_spec(), "the input pod spec is left untouched"


def test_secrets_already_on_the_pod_are_not_repeated() -> None:
    spec = _pod_spec()
    spec["imagePullSecrets"] = [{"name": "acr"}]
    out = with_weights_pull(spec, build_weights_pull(IMAGE, OPTIONS, pull_secrets=["acr", "b"]))
    assert out["imagePullSecrets"] == [{"name": "acr"}, {"name": "b"}]


def test_an_inference_workspace_with_a_weights_image_pulls_it_with_its_secret_and_cache() -> None:
    body = (
        make_workspace("serve-phi-3")
        .inference()
        .preset_options(image=IMAGE, imagePullSecrets=["acr"])
        .obj()
    )
    ctx = resolve(parse_workspace(stored(body)), OPTIONS)
    spec = build_statefulset(ctx)["spec"]["template"]["spec"]
    puller = spec["initContainers"][0]
    assert puller["name"] == INIT_NAME and IMAGE in puller["command"]
    assert puller["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "acr"} in spec["imagePullSecrets"]
    cache = next(v for v in spec["volumes"] if v["name"] == "weights-cache")
    assert cache["hostPath"]["path"] == CACHE_HOST_PATH
    assert f"--model={WEIGHTS_DIR}" in spec["containers"][0]["args"]


def test_a_tuning_job_whose_preset_names_a_weights_image_tunes_the_pulled_weights() -> None:
    body = make_workspace("tune-phi-3").tuning().preset_options(image=IMAGE).obj()
    ctx = resolve(parse_workspace(stored(body)), OPTIONS)
    spec = build_job(ctx)["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["name"] == INIT_NAME
    everything = [*spec["initContainers"][1:], *spec["containers"]]
    tuner = next(c for c in everything if any(str(a).startswith("--model=") for a in c["args"]))
    assert f"--model={WEIGHTS_DIR}" in tuner["args"]
    assert WEIGHTS_DIR in {m["mountPath"] for m in tuner["volumeMounts"]}


def _weights_mounts(spec: JSON) -> dict[str, JSON]:
    return {
        container["name"]: mount
        for container in [*spec["initContainers"], *spec["containers"]]
        for mount in container.get("volumeMounts", [])
        if mount["name"] == "model-weights-volume"
    }


def test_only_the_puller_may_write_the_weights_that_link_to_the_node_cache() -> None:
    body = make_workspace("serve-phi-3").inference().preset_options(image=IMAGE).obj()
    spec = build_statefulset(resolve(parse_workspace(stored(body)), OPTIONS))["spec"]
    mounts = _weights_mounts(spec["template"]["spec"])
    assert not mounts.pop(INIT_NAME).get("readOnly")
    assert mounts and all(m["readOnly"] is True for m in mounts.values())


def test_a_tuner_on_pulled_weights_keeps_its_caches_out_of_the_read_only_weights() -> None:
    body = make_workspace("tune-phi-3").tuning().preset_options(image=IMAGE).obj()
    spec = build_job(resolve(parse_workspace(stored(body)), OPTIONS))["spec"]["template"]["spec"]
    mounts = _weights_mounts(spec)
    assert not mounts.pop(INIT_NAME).get("readOnly")
    assert mounts and all(m["readOnly"] is True for m in mounts.values())
    homes = {
        variable["value"]
        for container in [*spec["initContainers"], *spec["containers"]]
        for variable in container.get("env", [])
        if variable["name"] == "HF_HOME"
    }
    assert homes and not any(home.startswith(WEIGHTS_DIR) for home in homes)


def test_workspaces_without_a_weights_image_get_no_pull_stage() -> None:
    ctx = resolve(parse_workspace(stored(inference_workspace())), OPTIONS)
    spec = build_statefulset(ctx)["spec"]["template"]["spec"]
    assert INIT_NAME not in [c["name"] for c in spec.get("initContainers", [])]
    assert "weights-cache" not in [v["name"] for v in spec["volumes"]]


MIRROR = "registry.internal.example/kaito"
MIRRORED = ClusterOptions(preset_registry=MIRROR, preset_pull_secrets=("mirror-pull",))


def _catalog_preset(name: str, **changes: Any) -> Preset:
    preset = default_catalog().get(name)
    assert preset is not None
    return replace(preset, **changes)


def test_a_preset_registry_names_an_image_for_every_preset_upstreams_way() -> None:
    tagged = _catalog_preset("phi-3-mini-4k-instruct", tag="0.2.0")
    untagged = _catalog_preset("smollm2-135m-instruct", tag=None)
    assert tagged.weights_image_in(MIRROR + "/") == f"{MIRROR}/kaito-phi-3-mini-4k-instruct:0.2.0"
    assert untagged.weights_image_in(MIRROR) == f"{MIRROR}/kaito-smollm2-135m-instruct:latest"
    assert all(p.weights_image_in(MIRROR) for p in default_catalog())


def test_without_a_registry_only_a_catalog_entry_with_its_own_image_names_one() -> None:
    assert all(p.weights_image_in("") is None for p in default_catalog())
    own = _catalog_preset("phi-3-mini-4k-instruct", weights_image=IMAGE)
    assert own.weights_image_in("") == IMAGE
    assert own.weights_image_in(MIRROR) == f"{MIRROR}/kaito-phi-3-mini-4k-instruct:0.2.0"


def test_the_catalog_reads_a_weights_image_from_an_entry() -> None:
    entry = {
        "name": "tiny",
        "hf_id": "example/tiny",
        "weights_gib": 1,
        "disk_gib": 1,
        "context_length": 1024,
        "bytes_per_token": 1,
        "runtimes": ["transformers"],
        "weights_image": IMAGE,
    }
    assert preset_from_dict(entry).weights_image == IMAGE
    assert preset_from_dict({**entry, "weights_image": None}).weights_image is None


def test_a_catalog_image_comes_with_the_workspace_and_the_operator_secrets() -> None:
    workspace = _workspace(imagePullSecrets=["acr"])
    preset = _catalog_preset(workspace.inference.preset.name)
    found = weights_image(workspace.inference.preset, preset, MIRRORED)
    assert found == (preset.weights_image_in(MIRROR), ["acr", "mirror-pull"])


def test_the_workspaces_own_image_wins_over_the_catalogs() -> None:
    workspace = _workspace(image=IMAGE, imagePullSecrets=["acr"])
    preset = _catalog_preset(workspace.inference.preset.name)
    assert weights_image(workspace.inference.preset, preset, MIRRORED) == (IMAGE, ["acr"])


def test_an_inference_workspace_on_a_mirrored_preset_pulls_it_with_secret_and_cache() -> None:
    ctx = resolve(parse_workspace(stored(inference_workspace())), MIRRORED)
    assert ctx.preset is not None
    image = ctx.preset.weights_image_in(MIRROR)
    assert image is not None and image.startswith(f"{MIRROR}/kaito-{ctx.preset.name}:")
    spec = build_statefulset(ctx)["spec"]["template"]["spec"]
    puller = spec["initContainers"][0]
    assert puller["name"] == INIT_NAME and puller["command"][5] == image
    assert puller["command"][-2:] == ["--docker-config-dir", SECRETS_DIR]
    assert {"name": "mirror-pull"} in spec["imagePullSecrets"]
    cache = next(v for v in spec["volumes"] if v["name"] == "weights-cache")
    assert cache["hostPath"]["path"] == CACHE_HOST_PATH
    assert f"--model={WEIGHTS_DIR}" in spec["containers"][0]["args"]


def test_a_tuning_job_on_a_mirrored_preset_tunes_the_pulled_weights() -> None:
    ctx = resolve(parse_workspace(stored(tuning_workspace())), MIRRORED)
    assert ctx.preset is not None
    spec = build_job(ctx)["spec"]["template"]["spec"]
    puller = spec["initContainers"][0]
    assert puller["name"] == INIT_NAME
    assert puller["command"][5] == ctx.preset.weights_image_in(MIRROR)
    assert {"name": "mirror-pull"} in spec["imagePullSecrets"]
    assert "weights-cache" in {v["name"] for v in spec["volumes"]}
    everything = [*spec["initContainers"][1:], *spec["containers"]]
    tuner = next(c for c in everything if any(str(a).startswith("--model=") for a in c["args"]))
    assert f"--model={WEIGHTS_DIR}" in tuner["args"]
