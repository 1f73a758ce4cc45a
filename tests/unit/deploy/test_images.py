"""The Dockerfiles pin their bases, run as non-root and install what their image is for."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.unit.deploy.chart import REPO, require_tool

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_there_is_an_operator_and_a_runtime_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["operator.Dockerfile", "runtime.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_exact_tags(dockerfile: Path) -> None:
    args = dict(
        rest.split("=", 1)
        for keyword, rest in instructions(dockerfile)
        if keyword == "ARG" and "=" in rest
    )
    for keyword, rest in instructions(dockerfile):
        if keyword != "FROM":
            continue
        image = rest.split()[0]
        image = args.get(image.strip("${}"), image) if image.startswith("$") else image
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?$", image), image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [rest for keyword, rest in instructions(dockerfile) if keyword == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_operator_image_installs_only_the_operator_extra() -> None:
    runs = " ".join(
        rest
        for keyword, rest in instructions(REPO / "docker" / "operator.Dockerfile")
        if keyword == "RUN"
    )
    assert re.findall(r"--extra \S+", runs) == ["--extra operator"]
    assert "torch" not in runs


def default_extras(dockerfile: Path) -> list[str]:
    steps = instructions(dockerfile)
    value = next(r.split("=", 1)[1] for k, r in steps if k == "ARG" and r.startswith("EXTRAS="))
    return value.split(",")


def test_the_runtime_image_has_cpu_and_cuda_variants_with_inference_tuning_and_llamacpp() -> None:
    dockerfile = REPO / "docker" / "runtime.Dockerfile"
    steps = instructions(dockerfile)
    args = {rest.split("=", 1)[0] for keyword, rest in steps if keyword == "ARG"}
    assert {"BASE", "TORCH_INDEX", "EXTRAS", "CUDA_LIBS"} <= args
    assert default_extras(dockerfile) == ["inference", "tuning", "llamacpp"]
    # The usage comment's continuation lines joined, so the CUDA recipe reads as one command.
    text = re.sub(r"\\\n#\s*", " ", dockerfile.read_text())
    # The CUDA recipe installs the gpu extra on a CUDA 13 base (vLLM's wheels are built for 13),
    # and llamacpp too: one runtime image serves the cluster's GPU-less nodes as well.
    assert re.search(
        r"BASE=nvidia/cuda:13\.\d+\.\d+-\w+-ubuntu\S+ .*EXTRAS=inference,tuning,llamacpp,gpu",
        text,
    )


def test_the_default_runtime_extras_bring_the_llamacpp_engine_and_gguf() -> None:
    # GGUF presets on CPU nodes run `--engine llamacpp` (xllamacpp); adapters for it are
    # converted to GGUF at load (gguf).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {
        re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        for extra in default_extras(REPO / "docker" / "runtime.Dockerfile")
        for requirement in extras[extra]
    }
    assert {"xllamacpp", "gguf", "torch", "transformers", "peft"} <= names


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (a FROM and what follows it), global ARGs dropped."""
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_from_takes_the_base_build_argument(dockerfile: Path) -> None:
    # A daemonless dev build swaps every base (public ones are unreachable there) with one
    # --build-arg BASE=...: no FROM may name an image directly.
    steps = instructions(dockerfile)
    first_from = next(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    global_args = {
        rest.split("=", 1)[0] for keyword, rest in steps[:first_from] if keyword == "ARG"
    }
    assert "BASE" in global_args
    for keyword, rest in steps:
        if keyword == "FROM":
            assert rest.split()[0] == "${BASE}", rest


def test_the_arg_from_check_rejects_a_literal_base(tmp_path: Path) -> None:
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text("ARG BASE=python:3.11.13-slim\nFROM python:3.11.13-slim AS build\n")
    with pytest.raises(AssertionError):
        test_every_from_takes_the_base_build_argument(dockerfile)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_install_before_the_kaito_wheel(dockerfile: Path) -> None:
    # Layer order: a change under src/ must rebuild only what follows the dependency layer.
    final = stages(dockerfile)[-1]
    text = [f"{keyword} {rest}" for keyword, rest in final]
    deps = next(
        i for i, line in enumerate(text) if "uv pip install" in line and "pyproject.toml" in line
    )
    wheel_copy = next(i for i, line in enumerate(text) if line.startswith("COPY --from=build"))
    wheel_install = next(i for i, line in enumerate(text) if "kaito-*.whl" in line)
    assert deps < wheel_copy < wheel_install
    assert "--no-deps" in text[wheel_install]
    assert not any(line.startswith("COPY src") for line in text)


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    hadolint = require_tool("hadolint", "40-hadolint.sh")
    # Default rules and threshold (info): any finding fails; ignores must be inline and say why.
    result = subprocess.run(
        [str(hadolint), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_image_has_the_openmp_runtime_xllamacpp_links() -> None:
    # xllamacpp's extension needs the system libgomp.so.1 (not bundled): the final stage
    # installs libgomp1 where the base lacks it, and the dev base made by mmdebstrap has it.
    from kaito.devcluster.images import BASE_PACKAGES

    final = stages(REPO / "docker" / "runtime.Dockerfile")[-1]
    first_run = next(rest for keyword, rest in final if keyword == "RUN")
    assert "libgomp.so.1" in first_run and "packages+=(libgomp1)" in first_run
    assert "libgomp1" in BASE_PACKAGES
