"""Adapters and datasets travel as OCI images in upstream's layout through a real registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from kaito.runtime.oci.adapter import AdapterError, pull_adapter, push_adapter
from kaito.runtime.oci.blobs import BlobClient, fetch_manifest
from kaito.runtime.oci.image import (
    UnsafeLayerError,
    extract_layer,
    pull_image_data,
    push_data_image,
)
from kaito.runtime.oci.registry import (
    ANNOTATION_MODEL,
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    ImageReference,
    RegistryError,
)
from kaito.runtime.tuning.inputs import fetch_image, read_inputs
from tests.runtime.tuning.builders import messages_rows, write_rows
from tests.support.registry import LocalRegistry, free_port


def _fake_adapter(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text('{"r": 4}')
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    return directory


def _blob(registry: LocalRegistry, repository: str, digest: str) -> bytes:
    return httpx.get(f"http://{registry.host}/v2/{repository}/blobs/{digest}").content


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", ImageReference("docker.io", "library/busybox", "latest")),
        ("127.0.0.1:5000/a/b:1.0", ImageReference("127.0.0.1:5000", "a/b", "1.0")),
        (
            "myacr.azurecr.io/x@sha256:ab",
            ImageReference("myacr.azurecr.io", "x", None, "sha256:ab"),
        ),
    ],
)
def test_image_references_are_normalised_like_upstreams_puller(
    ref: str, expected: ImageReference
) -> None:
    assert ImageReference.parse(ref) == expected


def test_a_pushed_adapter_has_upstreams_layout_and_media_types(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    pushed = push_adapter(adapter, oci_registry.ref("adapters/fake", "0.0.1"), model_name="phi-3")
    manifest, digest = fetch_manifest(pushed.reference)
    assert digest == pushed.digest
    assert manifest["mediaType"] == MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MEDIA_LAYER_GZIP]
    assert manifest["annotations"][ANNOTATION_MODEL] == "phi-3"
    layer = gzip.decompress(_blob(oci_registry, "adapters/fake", manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == ["data/adapter_config.json", "data/adapter_model.safetensors"]
    config = json.loads(_blob(oci_registry, "adapters/fake", manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"][0].startswith("sha256:")


def test_a_pulled_adapter_matches_what_was_pushed(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    ref = oci_registry.ref("adapters/roundtrip", "v1")
    push_adapter(adapter, ref, model_name="m")
    pulled = pull_adapter(ref, tmp_path / "pulled")
    assert sorted(p.name for p in pulled.files) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (tmp_path / "pulled/adapter_model.safetensors").read_bytes() == b"weights"


def test_an_incomplete_adapter_is_refused_before_any_push(tmp_path: Path) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors"):
        push_adapter(adapter, "127.0.0.1:1/x:y", model_name="m")


def test_a_failing_push_is_retried_reported_and_deletes_nothing(tmp_path: Path) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    attempts: list[str] = []
    with pytest.raises(RegistryError, match="failed after 3 attempts"):
        push_adapter(
            adapter,
            f"127.0.0.1:{free_port()}/a:b",
            model_name="m",
            attempts=3,
            backoff_s=0.01,
            log=attempts.append,
        )
    assert len(attempts) == 2
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_an_authenticated_registry_takes_credentials_from_a_docker_config(
    oci_registry_auth: LocalRegistry, tmp_path: Path
) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    ref = oci_registry_auth.ref("private/adapter", "1")
    secret = oci_registry_auth.docker_config(tmp_path)
    push_adapter(adapter, ref, model_name="m", docker_config=secret)
    pulled = pull_adapter(ref, tmp_path / "pulled", docker_config=secret)
    assert len(pulled.files) == 2


def test_an_authenticated_registry_refuses_anonymous_pushes(
    oci_registry_auth: LocalRegistry, tmp_path: Path
) -> None:
    adapter = _fake_adapter(tmp_path / "adapter")
    anonymous = tmp_path / "empty.json"
    anonymous.write_text('{"auths": {}}')
    with pytest.raises(RegistryError):
        push_adapter(
            adapter,
            oci_registry_auth.ref("private/anon", "1"),
            model_name="m",
            docker_config=anonymous,
            attempts=1,
        )


def test_a_dataset_image_fills_the_data_directory(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "src" / "dataset.parquet", messages_rows(3))
    ref = oci_registry.ref("datasets/dolly", "1")
    push_data_image(ref, {"dataset.parquet": source})
    fetched = fetch_image(ref, tmp_path / "data")
    assert [f.path.name for f in fetched] == ["dataset.parquet"]
    assert (tmp_path / "data" / "dataset.parquet").read_bytes() == source.read_bytes()
    assert read_inputs(tmp_path / "data")[0]["source"].startswith(ref + "@sha256:")


def test_the_trained_adapter_round_trips_and_generates(
    trained: Path, oci_registry: LocalRegistry, model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = oci_registry.ref("adapters/smollm2-kiwi", "0.0.1")
    push_adapter(trained, ref, model_name="smollm2-135m-instruct")
    manifest, _ = fetch_manifest(ref)
    assert manifest["annotations"]["sh.kaito.tuning.base-model"] == str(model_dir)
    pulled = tmp_path / "adapter"
    pull_adapter(ref, pulled)
    assert (pulled / "tuning_metadata.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(pulled)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), pulled)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the code for the door?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()


def test_the_oci_command_pushes_a_finished_directory_and_pulls_it_back(
    oci_registry: LocalRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaito.runtime.oci.__main__ import main

    adapter = _fake_adapter(tmp_path / "results")
    ref = oci_registry.ref("adapters/cli", "1")
    waiting = main(
        ["push-adapter", str(adapter), ref, "--model-name", "m", "--wait", "--wait-timeout", "0.5"]
    )
    assert waiting == 1  # no sentinel yet: nothing is pushed
    (adapter / "fine_tuning_completed.txt").write_text("Fine-Tuning completed at x")
    assert main(["push-adapter", str(adapter), ref, "--model-name", "m", "--wait"]) == 0
    pushed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["pull", ref, str(tmp_path / "pulled")]) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == pushed["digest"]
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == b"weights"


def test_kaito_tune_pushes_a_finished_run_with_lineage_annotations(
    trained: Path,
    oci_registry: LocalRegistry,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kaito.runtime.tuning.cli import main

    ref = oci_registry.ref("adapters/from-cli", "0.0.1")
    argv = ["--model", str(model_dir), "--dataset-dir", str(tmp_path), "--output-dir", str(trained)]
    code = main([*argv, "--push", ref, "--model-name", "smollm2-135m-instruct", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["already_complete"] is True
    manifest, digest = fetch_manifest(ref)
    assert result["pushed"]["digest"] == digest
    annotations = manifest["annotations"]
    assert annotations[ANNOTATION_MODEL] == "smollm2-135m-instruct"
    assert annotations["sh.kaito.tuning.method"] == "lora"
    assert annotations["sh.kaito.tuning.datasets"].count("sha256:") == 4


# Hostile layers


def _layer(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A gzip'd tar of (name, content) entries; None content is a directory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def _layer_at(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    path.write_bytes(_layer(entries))
    return path


def _push_layers(registry: LocalRegistry, repository: str, layers: list[bytes]) -> str:
    ref = registry.ref(repository, "1")
    blobs = BlobClient(ref)
    config = b"{}"
    descriptors = []
    for body in [config, *layers]:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        blobs.upload(body, digest, len(body))
        descriptors.append({"mediaType": MEDIA_LAYER_GZIP, "digest": digest, "size": len(body)})
    descriptors[0]["mediaType"] = MEDIA_CONFIG
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    blobs.put_manifest("1", json.dumps(manifest).encode(), MEDIA_MANIFEST)
    return ref


def test_a_whiteout_that_climbs_out_of_the_root_refuses_the_image_and_deletes_nothing(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "dataset"
    # The puller unpacks into <dest's parent>/<staging>/rootfs: three levels up is out/.
    victim = tmp_path / "out" / "x" / "y"
    victim.parent.mkdir(parents=True)
    victim.write_text("must survive")
    lower = _layer([("data", None), ("data/keep.jsonl", b"{}")])
    hostile = _layer([("data/new.jsonl", b"{}"), ("data/../../../x/.wh.y", b"")])
    ref = _push_layers(oci_registry, "datasets/whiteout", [lower, hostile])
    with pytest.raises(UnsafeLayerError, match=r"would land outside the root"):
        pull_image_data(ref, dest, attempts=1)
    assert victim.read_text() == "must survive"
    assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x"]


def test_a_hostile_layer_is_refused_before_it_touches_the_lower_layers(tmp_path: Path) -> None:
    rootfs = tmp_path / "stage" / "rootfs"
    extract_layer(_layer_at(tmp_path / "l1", [("data", None), ("data/keep", b"k")]), rootfs)
    outside = tmp_path / "stage" / "precious"
    outside.write_text("p")
    cases = [
        [("data/.wh.keep", b""), ("data/../../precious", b"overwritten")],
        [("data/.wh.keep", b""), ("../.wh.precious", b"")],
        [("data/.wh.keep", b""), ("/../../.wh.precious", b"")],
        [("data/.wh.keep", b""), ("data/.wh..", b"")],
    ]
    for index, entries in enumerate(cases):
        with pytest.raises(UnsafeLayerError):
            extract_layer(_layer_at(tmp_path / f"bad{index}", entries), rootfs)
        assert (rootfs / "data" / "keep").read_bytes() == b"k", entries
        assert outside.read_text() == "p", entries


def test_whiteouts_inside_the_root_remove_lower_layer_entries_only(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    lower = [("data", None), ("data/a", b"a"), ("data/b", b"b"), ("data/sub", None)]
    extract_layer(_layer_at(tmp_path / "l1", [*lower, ("data/sub/c", b"c")]), rootfs)
    upper = [("data/.wh.a", b""), ("data/sub/.wh..wh..opq", b""), ("data/sub/d", b"d")]
    extract_layer(_layer_at(tmp_path / "l2", upper), rootfs)
    assert sorted(p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")) == [
        "data",
        "data/b",
        "data/sub",
        "data/sub/d",
    ]


def test_extraction_stops_at_the_size_cap(tmp_path: Path) -> None:
    blob = _layer_at(
        tmp_path / "layer", [("data", None), ("data/a", b"x" * 1000), ("data/b", b"y" * 24)]
    )
    assert extract_layer(blob, tmp_path / "fits", max_bytes=1024) == 1024
    with pytest.raises(UnsafeLayerError, match="1023 byte limit"):
        extract_layer(blob, tmp_path / "over", max_bytes=1023)
    assert not (tmp_path / "over").exists()


def test_a_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        link = tarfile.TarInfo("data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    blob = tmp_path / "layer"
    blob.write_bytes(raw.getvalue())
    with pytest.raises(UnsafeLayerError, match="outside the root"):
        extract_layer(blob, tmp_path / "rootfs")


def test_links_in_a_data_image_never_reach_the_data_directory(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    # `data/link -> ../outside` stays inside the image's root, but moved into dest it would
    # point at dest's parent: only regular files are moved.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in (("outside", b"o"), ("data/real.jsonl", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("data/link.jsonl")
        link.type, link.linkname = tarfile.SYMTYPE, "../outside"
        tar.addfile(link)
    ref = _push_layers(oci_registry, "datasets/links", [gzip.compress(raw.getvalue())])
    pulled = pull_image_data(ref, tmp_path / "out" / "data", attempts=1)
    assert [p.name for p in pulled.files] == ["real.jsonl"]
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["real.jsonl"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["filter", "python-3.11.2"])
def test_extraction_is_as_safe_without_tarfiles_data_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool
) -> None:
    """Debian bookworm's Python has no extraction filters: the same rules are applied by hand."""
    import kaito.runtime.oci.image as image_module

    if data_filter and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no extraction filters")
    monkeypatch.setattr(image_module, "HAS_DATA_FILTER", data_filter)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("/data/abs", 0o644), ("data/suid", 0o4777)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 2, mode
            tar.addfile(info, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("data/hard")
        link.type, link.linkname = tarfile.LNKTYPE, "data/suid"
        tar.addfile(link)
        sym = tarfile.TarInfo("data/sym")
        sym.type, sym.linkname = tarfile.SYMTYPE, "abs"
        tar.addfile(sym)
    blob = tmp_path / "layer"
    blob.write_bytes(raw.getvalue())
    rootfs = tmp_path / "rootfs"
    extract_layer(blob, rootfs)
    assert (rootfs / "data" / "abs").read_bytes() == b"ok"
    assert (rootfs / "data" / "sym").read_bytes() == b"ok"
    assert (rootfs / "data" / "hard").read_bytes() == b"ok"
    mode = (rootfs / "data" / "suid").stat().st_mode
    assert mode & 0o7000 == 0 and mode & 0o022 == 0
    fifo = io.BytesIO()
    with tarfile.open(fileobj=fifo, mode="w") as tar:
        info = tarfile.TarInfo("data/pipe")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    (tmp_path / "fifo").write_bytes(fifo.getvalue())
    with pytest.raises(UnsafeLayerError, match="special file"):
        extract_layer(tmp_path / "fifo", tmp_path / "other")
    assert not (tmp_path / "other" / "data" / "pipe").exists()
