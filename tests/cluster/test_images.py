"""The images `kaito dev images build` makes run what they are for, and rebuild only what changed.

Built with buildah (no daemon) into a registry kept under $KAITO_HOME (tests/support/images.py),
so a warm run builds nothing; the containers run with `buildah run` (chroot isolation).
"""

from __future__ import annotations

import json
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


def test_the_runtime_has_the_llamacpp_engine_and_gguf(
    kaito_images: ImageRefs, image_builder: Builder
) -> None:
    probe = "import xllamacpp, gguf, torch, peft, transformers; print(xllamacpp.__file__)"
    result = run_in_image(image_builder, kaito_images.local["runtime"], ["python", "-c", probe])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("/opt/kaito/")


# Runs inside the runtime image: the inference server with `--engine llamacpp` on 127.0.0.1
# (chroot isolation shares the host's network), one bounded chat completion, then its log.
SERVE_PROBE = r"""
import json, subprocess, sys, tempfile, time, urllib.request
port = sys.argv[1]
base = f"http://127.0.0.1:{port}"
log = tempfile.NamedTemporaryFile("w+", suffix=".log")
server = subprocess.Popen(
    [sys.executable, "-m", "kaito.runtime.inference", "--engine", "llamacpp",
     "--model", "/models/smollm2", "--host", "127.0.0.1", "--port", port, "--num-threads", "2"],
    stdout=log, stderr=subprocess.STDOUT,
)
try:
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not become healthy")
            time.sleep(0.5)
    models = json.load(urllib.request.urlopen(base + "/v1/models", timeout=10))
    body = {
        "model": models["data"][0]["id"],
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    request = urllib.request.Request(
        base + "/v1/chat/completions", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    print(json.dumps(json.load(urllib.request.urlopen(request, timeout=120))))
finally:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.seek(0)
    sys.stderr.write(log.read()[-20000:])
"""


def small_model_files(target: Path) -> Path:
    """The small model's GGUF and tokenizer in one directory, readable by the image's user."""
    from kaito.runtime.small_model import SmallModelMissingError, gguf_path, small_model_path

    try:
        gguf, checkpoint = gguf_path(), small_model_path()
    except SmallModelMissingError as error:
        pytest.skip(str(error))
    target.mkdir(mode=0o755)
    target.chmod(0o755)  # tmp_path's own mode is 0700; the server runs as UID 10001
    shutil.copy2(gguf, target / gguf.name)
    for path in checkpoint.iterdir():
        # transformers 5 saves the chat template beside the tokenizer (chat_template.jinja).
        if path.name.startswith(("tokenizer", "special_tokens_map", "chat_template")):
            shutil.copy2(path, target / path.name)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def test_the_runtime_serves_the_small_gguf_model_with_llamacpp(
    kaito_images: ImageRefs, image_builder: Builder, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    models.chmod(0o755)
    small_model_files(models / "smollm2")
    result = run_in_image(
        image_builder,
        kaito_images.local["runtime"],
        ["python", "-c", SERVE_PROBE, str(free_port())],
        mounts=[(models, "/models")],
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Without xllamacpp the server falls back to the torch engine and still answers.
    assert "xllamacpp is not installed" not in result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["choices"][0]["message"]["content"].strip(), answer
    assert answer["usage"]["completion_tokens"] > 0


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
