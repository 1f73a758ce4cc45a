"""Model weights travel as OCI artifacts through a real registry and a node-local cache."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaito.cli.main import app
from kaito.runtime.oci.blobs import sha256_file
from kaito.runtime.oci.registry import RegistryError
from kaito.runtime.oci.weights import (
    ANNOTATION_FILES,
    ANNOTATION_MODEL,
    ANNOTATION_REVISION,
    ANNOTATION_TITLE,
    MEDIA_FILE,
    MEDIA_WEIGHTS,
    BlobCache,
    WeightsError,
    WeightsPackage,
    WeightsPushResult,
    package_weights,
    pull_weights,
    push_weights,
)
from tests.runtime.weights.conftest import SMOL_REF, fake_model
from tests.runtime.weights.proxy import start_proxy
from tests.support.registry import LocalRegistry


def _same_files(pulled: Path, package: WeightsPackage) -> None:
    for item in package.files:
        assert sha256_file(pulled / item.name) == item.digest, item.name


# Packaging


def test_a_package_has_one_titled_layer_per_file_and_lineage_annotations(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "model")
    (model / "original").mkdir()
    (model / "original" / "consolidated.pth").write_bytes(b"skipped")
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("skipped")
    manifest = package_weights(model, model_name="phi-4", revision="abc123").manifest_json()
    titles = {layer["annotations"][ANNOTATION_TITLE]: layer for layer in manifest["layers"]}
    assert sorted(titles) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
    ]
    assert titles["model-00001-of-00002.safetensors"]["mediaType"] == MEDIA_WEIGHTS
    assert titles["config.json"]["mediaType"] == MEDIA_FILE
    annotations = manifest["annotations"]
    assert annotations[ANNOTATION_MODEL] == "phi-4"
    assert annotations[ANNOTATION_REVISION] == "abc123"
    assert json.loads(annotations[ANNOTATION_FILES]) == {
        name: layer["digest"] for name, layer in titles.items()
    }
    assert titles["config.json"]["digest"] == sha256_file(model / "config.json")


def test_packaging_the_same_model_twice_gives_the_same_digest(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "model")
    assert package_weights(model).digest == package_weights(model).digest
    (model / "config.json").write_text('{"changed": true}')
    assert package_weights(model).digest != package_weights(fake_model(tmp_path / "m2")).digest


def test_a_directory_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="no weights"):
        package_weights(tmp_path)


def test_dry_run_prints_the_manifest_and_pushes_nothing(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "model")
    result = CliRunner().invoke(
        app,
        ["models", "package", str(model), "--image", "127.0.0.1:1/none:0", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert len(manifest["layers"]) == 4


# The small real model, end to end


def test_the_small_model_pulled_into_an_empty_directory_loads_and_generates(
    smol_pushed: WeightsPushResult, smol_package: WeightsPackage, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path / "weights"
    pulled = pull_weights(smol_pushed.reference, dest, cache_dir=tmp_path / "cache")
    assert pulled.digest == smol_pushed.digest
    assert pulled.annotations[ANNOTATION_MODEL] == "smollm2-135m-instruct"
    assert pulled.downloaded_bytes == sum(f.size for f in smol_package.files)
    _same_files(dest, smol_package)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 4
    assert tokenizer.decode(output[0][inputs["input_ids"].shape[1] :]).strip()


def test_a_second_pull_on_the_same_node_downloads_nothing_and_links_the_cache(
    smol_pushed: WeightsPushResult, smol_package: WeightsPackage, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pull_weights(smol_pushed.reference, tmp_path / "first", cache_dir=cache)
    second = pull_weights(smol_pushed.reference, tmp_path / "second", cache_dir=cache)
    assert second.downloaded_bytes == 0
    assert second.cached_blobs == len({f.digest for f in smol_package.files})
    shard = "model.safetensors"
    assert os.path.samefile(
        tmp_path / "second" / shard,
        BlobCache(cache).path(next(f.digest for f in smol_package.files if f.name == shard)),
    )


def test_pushing_an_unchanged_model_uploads_nothing(
    oci_registry: LocalRegistry, smol_pushed: WeightsPushResult, smol_package: WeightsPackage
) -> None:
    with start_proxy(oci_registry.host) as proxy:
        again = push_weights(smol_package, proxy.ref(*SMOL_REF))
    assert again.digest == smol_pushed.digest
    assert (again.uploaded_blobs, again.uploaded_bytes, again.manifest_uploaded) == (0, 0, False)
    assert proxy.stats.methods() == {"HEAD"}


def test_a_corrupted_cached_blob_is_detected_by_digest_and_fetched_again(
    cache_pushed: WeightsPushResult, cache_package: WeightsPackage, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pull_weights(cache_pushed.reference, tmp_path / "first", cache_dir=cache)
    shard = next(f for f in cache_package.files if f.name.startswith("model-00001"))
    blob = BlobCache(cache).path(shard.digest)
    blob.chmod(0o644)
    with blob.open("r+b") as fh:  # same size, different bytes: only the digest can tell
        fh.seek(shard.size // 2)
        fh.write(b"\x00garbage\x00")
    again = pull_weights(cache_pushed.reference, tmp_path / "second", cache_dir=cache)
    assert again.refetched_blobs == 1
    assert again.downloaded_bytes == shard.size
    _same_files(tmp_path / "second", cache_package)


def test_a_blob_rewritten_in_place_with_its_times_put_back_is_not_trusted(
    smol_pushed: WeightsPushResult, smol_package: WeightsPackage, tmp_path: Path
) -> None:
    # What a pod that could write the shared cache would do to poison the next pod: same
    # size, same inode, mtime restored. Only ctime (which user space cannot set) moves.
    cache = tmp_path / "cache"
    pull_weights(smol_pushed.reference, tmp_path / "first", cache_dir=cache)
    shard = next(f for f in smol_package.files if f.name == "model.safetensors")
    blob = BlobCache(cache).path(shard.digest)
    before = blob.stat()
    blob.chmod(0o644)
    with blob.open("r+b") as fh:
        fh.seek(shard.size // 3)
        fh.write(b"\x00poison\x00")
    blob.chmod(0o444)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = blob.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )
    again = pull_weights(smol_pushed.reference, tmp_path / "second", cache_dir=cache)
    assert again.refetched_blobs == 1
    assert again.downloaded_bytes == shard.size
    _same_files(tmp_path / "second", smol_package)


def test_a_blob_cached_without_a_check_on_this_node_is_hashed_before_use(
    cache_pushed: WeightsPushResult, cache_package: WeightsPackage, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache")
    shard = next(f for f in cache_package.files if f.name.startswith("model-00001"))
    # Planted under the right name, never verified here: no stamp, so it is hashed first.
    cache.path(shard.digest).write_bytes(b"\x00" * shard.size)
    pulled = pull_weights(cache_pushed.reference, tmp_path / "weights", cache_dir=cache.root)
    assert pulled.refetched_blobs == 1
    _same_files(tmp_path / "weights", cache_package)


def test_an_interrupted_pull_resumes_from_the_partial_download(
    oci_registry: LocalRegistry,
    smol_pushed: WeightsPushResult,
    smol_package: WeightsPackage,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    total = sum(f.size for f in smol_package.files)
    with (
        start_proxy(oci_registry.host, cut_after=total // 2) as flaky,
        pytest.raises(RegistryError),
    ):
        pull_weights(flaky.ref(*SMOL_REF), tmp_path / "weights", cache_dir=cache, attempts=1)
    assert flaky.stats.cut
    assert any(BlobCache(cache).partial.glob("*.json")), "progress of the partial download"
    with start_proxy(oci_registry.host) as proxy:
        resumed = pull_weights(proxy.ref(*SMOL_REF), tmp_path / "weights", cache_dir=cache)
    assert resumed.resumed_bytes > total // 4
    assert proxy.stats.downstream_bytes < total - total // 4
    assert resumed.downloaded_bytes + resumed.resumed_bytes >= total - 4096
    _same_files(tmp_path / "weights", smol_package)
    assert not any(BlobCache(cache).partial.iterdir())


# Small models: registry faults, private registries, the CLI


def test_a_registry_serving_bad_bytes_fails_the_pull_and_caches_nothing(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    package = package_weights(fake_model(tmp_path / "model", seed="bad-bytes"))
    pushed = push_weights(package, oci_registry.ref("models/bad", "1"))
    shard = next(f for f in package.files if f.name.startswith("model-00002"))
    stored = next(oci_registry.storage.rglob(f"blobs/sha256/*/{shard.digest[7:]}/data"))
    stored.write_bytes(b"y" * shard.size)
    cache = tmp_path / "cache"
    with pytest.raises(RegistryError, match="digest mismatch"):
        pull_weights(pushed.reference, tmp_path / "weights", cache_dir=cache)
    assert not BlobCache(cache).path(shard.digest).exists()
    assert not (tmp_path / "weights" / shard.name).exists()


def test_a_private_registry_is_pushed_and_pulled_with_docker_config_credentials(
    oci_registry_auth: LocalRegistry, tmp_path: Path
) -> None:
    package = package_weights(fake_model(tmp_path / "model", seed="private"))
    config = oci_registry_auth.docker_config(tmp_path)
    ref = oci_registry_auth.ref("models/private", "1")
    with pytest.raises(RegistryError):
        push_weights(package, ref, attempts=1)
    push_weights(package, ref, docker_config=config)
    pulled = pull_weights(ref, tmp_path / "weights", cache_dir=tmp_path / "c", docker_config=config)
    assert pulled.digest == package.digest
    _same_files(tmp_path / "weights", package)


def test_the_cli_packages_pushes_and_pulls_a_model(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    model = fake_model(tmp_path / "model", seed="cli")
    ref = oci_registry.ref("models/cli", "2")
    runner = CliRunner()
    pushed = runner.invoke(
        app, ["models", "package", str(model), "--image", ref, "--preset", "fake"]
    )
    assert pushed.exit_code == 0, pushed.output
    assert json.loads(pushed.stdout)["uploaded_blobs"] == 5  # four files and the config
    pulled = runner.invoke(
        app,
        ["models", "pull", ref, str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")],
    )
    assert pulled.exit_code == 0, pulled.output
    summary = json.loads(pulled.stdout)
    assert summary["annotations"][ANNOTATION_MODEL] == "fake"
    assert (tmp_path / "out" / "config.json").read_text() == (model / "config.json").read_text()
    missing = runner.invoke(app, ["models", "pull", oci_registry.ref("models/none", "0"), "x"])
    assert missing.exit_code == 1


def test_the_cli_tries_each_pull_secret_until_one_is_accepted(
    oci_registry_auth: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaito.runtime.oci import weights

    # Each refused secret is still tried three times; only the pauses (3 s in all) are short.
    monkeypatch.setattr(weights, "pull_weights", functools.partial(pull_weights, backoff_s=0.01))
    package = package_weights(fake_model(tmp_path / "model", seed="secrets"))
    ref = oci_registry_auth.ref("models/secrets", "1")
    secrets = tmp_path / "config.d"
    secrets.mkdir()
    oci_registry_auth.docker_config(secrets).rename(secrets / "b-good.json")
    wrong = {"auths": {oci_registry_auth.host: {"auth": "eDp5"}}}  # x:y
    (secrets / "a-wrong.json").write_text(json.dumps(wrong))
    push_weights(package, ref, docker_config=secrets / "b-good.json")
    result = CliRunner().invoke(
        app,
        [
            *("models", "pull", ref, str(tmp_path / "out")),
            *("--cache-dir", str(tmp_path / "c"), "--docker-config-dir", str(secrets)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["digest"] == package.digest


def test_a_cache_that_cannot_be_written_moves_into_the_weights_directory(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    package = package_weights(fake_model(tmp_path / "model", seed="no-cache"))
    pushed = push_weights(package, oci_registry.ref("models/no-cache", "1"))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    dest = tmp_path / "weights"
    pull_weights(pushed.reference, dest, cache_dir=blocked / "cache")
    _same_files(dest, package)
    assert BlobCache(dest / ".kaito-cache").path(package.files[0].digest).is_file()
