"""The images `kaito dev images build` makes run what they are for, and rebuild only what changed.

Built with buildah (no daemon) into a registry kept under $KAITO_HOME (tests/support/images.py),
so a warm run builds nothing; the containers run with `buildah run` (chroot isolation).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from kaito.devcluster.images import (
    Builder,
    ImageRefs,
    build_images,
    dev_registry,
    in_registry,
    run_in_image,
    stop_dev_registry,
)
from tests.support.images import image_builder, image_registry, kaito_images
from tests.support.registry import LocalRegistry, free_port, registry_binary

__all__ = ["image_builder", "image_registry", "kaito_images"]
REPO = Path(__file__).resolve().parents[2]


def diff_ids(builder: Builder, image: str) -> list[str]:
    import json

    data = json.loads(builder.run("inspect", "--type", "image", image).stdout)
    return list(data["OCIv1"]["rootfs"]["diff_ids"])


def test_both_images_are_in_the_registry(kaito_images: ImageRefs) -> None:
    assert in_registry(kaito_images.operator)
    assert in_registry(kaito_images.runtime)
    assert not in_registry(kaito_images.operator + "-absent")


def test_the_operator_entrypoint_prints_its_help_as_a_non_root_user(
    kaito_images: ImageRefs, image_builder: Builder
) -> None:
    image = kaito_images.local["operator"]
    config = image_builder.image_config(image)
    assert config["User"] == "65532:65532"
    entrypoint = config["Entrypoint"]
    assert isinstance(entrypoint, list)
    # One container: print the uid buildah runs it as, then exec the entrypoint verbatim.
    command = ["sh", "-c", 'id -u && exec "$@"', "sh", *entrypoint, "--help"]
    result = run_in_image(image_builder, image, command)
    assert result.returncode == 0, result.stderr[-2000:]
    uid, _, help_text = result.stdout.partition("\n")
    assert uid == "65532"
    assert "--leader-elect" in help_text


def test_the_runtime_imports_torch_and_kaito_runtime_on_cpu(
    kaito_images: ImageRefs, image_builder: Builder
) -> None:
    probe = (
        "import torch, kaito.runtime.inference.server, kaito.runtime.tuning.cli\n"
        "x = torch.ones(8, 8)\n"
        "print(torch.__version__, float((x @ x).sum()), torch.cuda.is_available())\n"
    )
    result = run_in_image(image_builder, kaito_images.local["runtime"], ["python", "-c", probe])
    assert result.returncode == 0, result.stderr[-3000:]
    version, total, cuda = result.stdout.split()
    assert version.startswith("2.")
    assert float(total) == 512.0
    assert cuda == "False"


def test_a_rerun_with_nothing_changed_builds_nothing(
    kaito_images: ImageRefs, image_registry: LocalRegistry, image_builder: Builder
) -> None:
    started = time.monotonic()
    again = build_images(image_registry.host, builder=image_builder)
    assert again.as_dict() == kaito_images.as_dict()
    assert again.built == ()
    assert time.monotonic() - started < 60


def test_a_change_under_src_rebuilds_only_the_layers_after_the_dependencies(
    kaito_images: ImageRefs, image_registry: LocalRegistry, image_builder: Builder, tmp_path: Path
) -> None:
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for tree in ("docker", "src"):
        shutil.copytree(REPO / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    with (source / "src" / "kaito" / "__init__.py").open("a") as module:
        module.write(f"# {uuid.uuid4()}\n")  # a change no earlier run has built
    started = time.monotonic()
    changed = build_images(
        image_registry.host, only=["operator"], root=source, clean=False, builder=image_builder
    )
    elapsed = time.monotonic() - started
    try:
        assert changed.built == ("operator",)
        assert changed.operator != kaito_images.operator
        before = diff_ids(image_builder, kaito_images.local["operator"])
        after = diff_ids(image_builder, changed.local["operator"])
        # The layers up to the dependency install are the same blobs; only the wheel's differ.
        assert len(after) == len(before)
        assert after[:-2] == before[:-2]
        assert after[-1] != before[-1]
        assert elapsed < 120
    finally:
        image_builder.run("rmi", changed.local["operator"], check=False)


def test_the_dev_registry_starts_once_keeps_its_storage_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_binary()  # skip (fail in CI) without docker-registry
    monkeypatch.setenv("KAITO_HOME", str(tmp_path))
    port = free_port()
    host = dev_registry(port=port)
    try:
        assert host == f"127.0.0.1:{port}"
        assert dev_registry(port=port) == host  # already running: reused, not restarted
        assert (tmp_path / "registry" / "dev" / "storage").is_dir()
        assert httpx.get(f"http://{host}/v2/", timeout=5).status_code == 200
    finally:
        assert stop_dev_registry()
    assert not stop_dev_registry()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://{host}/v2/", timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the dev registry still answers after stop")
