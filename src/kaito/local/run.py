"""Executes a local plan: fetch inputs, train, deliver the adapter; or serve a preset."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from kaito.local.plan import HostInfo, LocalModeError, ServePlan, TuningPlan
from kaito.presets import Preset


def measure_host() -> HostInfo:
    """Physical memory and CUDA devices of this machine."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    devices, gpu_memory = 0, 0.0
    try:
        import torch

        if torch.cuda.is_available():
            devices = torch.cuda.device_count()
            gpu_memory = (
                sum(torch.cuda.get_device_properties(i).total_memory for i in range(devices))
                / 2**30
            )
    except ImportError:
        pass
    return HostInfo(memory_gib=memory, cuda_devices=devices, gpu_memory_gib=gpu_memory)


def work_dir(name: str) -> Path:
    """Where local mode keeps a Workspace's downloads and pulled adapters."""
    from kaito.runtime.small_model import cache_dir

    return cache_dir() / "local" / name


def serving_engine(plan: ServePlan, override: Path | None = None) -> str:
    """The plan's engine, or transformers when llama.cpp cannot serve here: no xllamacpp
    wheel, or a --model-dir without a GGUF file."""
    import importlib.util

    if plan.engine != "llamacpp" or importlib.util.find_spec("xllamacpp") is None:
        return "transformers"
    if override is not None and not any(override.glob("*.gguf")):
        return "transformers"
    return "llamacpp"


def model_source(
    preset: Preset, override: Path | None = None, engine: str = "transformers"
) -> Callable[[], Path]:
    """Refuses a preset or --model-dir that cannot serve here, converting nothing, and returns
    the call that yields the weights (the small model converts on its first use)."""
    if override is not None:
        if not override.is_dir():
            raise LocalModeError(f"--model-dir {override}: not a directory")
        return lambda: override
    if preset.source == "local:smollm2":
        from kaito.runtime import small_model

        return small_model.gguf_path if engine == "llamacpp" else small_model.small_model_path
    raise LocalModeError(
        f"preset {preset.name} downloads {preset.hf_id} at run time: download it yourself "
        "and pass --model-dir PATH"
    )


def model_path(preset: Preset, override: Path | None = None, engine: str = "transformers") -> Path:
    """The weights for a preset on this machine: a directory, or the GGUF file for llama.cpp."""
    return model_source(preset, override, engine)()


@dataclass(frozen=True)
class TuningSummary:
    """What a person wants to know when tuning ends."""

    output: str
    digest: str
    duration_s: float
    metrics: Mapping[str, Any]

    def lines(self) -> list[str]:
        m = self.metrics
        tokens = m.get("trained_tokens") or 0
        runtime = m.get("train_runtime_s") or 0
        out = [f"adapter      {self.output}", f"digest       {self.digest}"]
        out.append(f"duration     {self.duration_s:.1f} s ({m.get('global_step', '?')} steps)")
        if tokens and runtime:
            out.append(f"throughput   {tokens / runtime:.0f} trained tokens/s")
        if "initial_eval_loss" in m:
            out.append(f"eval loss    {m['initial_eval_loss']:.4f} before tuning")
        if "eval_loss" in m:
            out.append(f"eval loss    {m['eval_loss']:.4f} after tuning")
        if "train_loss" in m:
            out.append(f"train loss   {m['train_loss']:.4f} (mean over the run)")
        return out


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _fetch_inputs(
    plan: TuningPlan, data_dir: Path, console: Console, docker_config: Path | None
) -> Path:
    from kaito.runtime.tuning.inputs import DownloadPolicy, fetch_image, fetch_urls

    if plan.input_dir is not None:
        if not plan.input_dir.is_dir():
            raise LocalModeError(f"tuning.input: {plan.input_dir} is not a directory")
        return plan.input_dir
    if plan.input_urls:
        with console.status(f"downloading {len(plan.input_urls)} file(s)"):
            try:
                policy = DownloadPolicy.on_this_machine()
                fetched = fetch_urls(list(plan.input_urls), data_dir, policy=policy)
            except Exception as exc:
                raise LocalModeError(f"tuning.input.urls: {exc}") from exc
        for item in fetched:
            size = f"{item.size} bytes, sha256 {item.sha256[:12]}"
            console.print(f"[dim]downloaded {item.source} ({size})[/dim]")
        return data_dir
    assert plan.input_image is not None
    with console.status(f"pulling {plan.input_image}"):
        try:
            fetch_image(plan.input_image, data_dir, docker_config=docker_config)
        except Exception as exc:
            raise LocalModeError(f"tuning.input.image: {exc}") from exc
    return data_dir


def run_tuning_plan(
    plan: TuningPlan,
    *,
    console: Console,
    model_dir: Path | None = None,
    training_overrides: Mapping[str, Any] | None = None,
    docker_config: Path | None = None,
    allow_lora_fallback: bool = False,
) -> TuningSummary:
    """Fetch, train and deliver; raises LocalModeError with one line on bad input."""
    from kaito.runtime.oci.registry import RegistryError
    from kaito.runtime.tuning.config import ConfigError, load_config, template_path
    from kaito.runtime.tuning.data import DatasetError
    from kaito.runtime.tuning.preflight import QLoRAUnavailableError
    from kaito.runtime.tuning.train import run_tuning

    started = time.monotonic()
    base = work_dir(plan.name)
    try:
        config = load_config(plan.config_file or template_path(plan.method))
    except (ConfigError, OSError) as exc:
        raise LocalModeError(f"tuning config: {exc}") from exc
    # Inputs before weights: converting the model takes tens of seconds, and a bad URL or
    # image should fail in the seconds its download takes.
    weights = model_source(plan.preset, model_dir)
    data_dir = _fetch_inputs(plan, base / "data", console, docker_config)
    output = plan.output_dir or base / "results"
    overrides = {k: v for k, v in (training_overrides or {}).items() if v is not None}
    config = config.with_training(output_dir=str(output.absolute()), **overrides)
    try:
        result = run_tuning(
            config,
            data_dir,
            output,
            model_path=str(weights()),
            allow_lora_fallback=allow_lora_fallback,
            console=True,
        )
    except (DatasetError, QLoRAUnavailableError, ConfigError) as exc:
        raise LocalModeError(str(exc)) from exc
    location, digest = (
        str(result.output_dir),
        _file_digest(result.output_dir / "adapter_model.safetensors"),
    )
    if plan.output_image is not None:
        from kaito.runtime.oci.adapter import push_adapter

        with console.status(f"pushing {plan.output_image}"):
            try:
                pushed = push_adapter(
                    result.output_dir,
                    plan.output_image,
                    model_name=plan.preset.name,
                    docker_config=docker_config,
                )
            except RegistryError as exc:
                raise LocalModeError(
                    f"tuning.output.image: push failed, adapter kept in {location}: {exc}"
                ) from exc
        location, digest = pushed.reference, pushed.digest
    return TuningSummary(location, digest, time.monotonic() - started, result.metrics)


def prepare_adapters(
    plan: ServePlan, console: Console, docker_config: Path | None = None
) -> Path | None:
    """Lay the plan's adapters out as `<dir>/<name>`, the layout the server scans."""
    if not plan.adapters:
        return None
    root = work_dir(plan.name) / "adapters"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for adapter in plan.adapters:
        target = root / adapter.name
        if adapter.directory is not None:
            if not (adapter.directory / "adapter_config.json").is_file():
                raise LocalModeError(
                    f"adapter {adapter.name}: {adapter.directory} has no adapter_config.json; "
                    "point it at a tuning output directory"
                )
            target.symlink_to(adapter.directory.absolute(), target_is_directory=True)
        else:
            assert adapter.image is not None
            from kaito.runtime.oci.adapter import pull_adapter

            with console.status(f"pulling adapter {adapter.image}"):
                try:
                    pull_adapter(adapter.image, target, docker_config=docker_config)
                except Exception as exc:
                    raise LocalModeError(f"adapter {adapter.name}: pull failed: {exc}") from exc
    return root


def server_args(
    plan: ServePlan,
    weights: Path,
    adapter_dir: Path | None,
    host: str,
    port: int,
    log_level: str | None = None,
    engine: str = "transformers",
) -> list[str]:
    """The inference server's flags for a plan (the same flags a pod gets)."""
    args = [
        "--engine",
        engine,
        "--model",
        str(weights),
        "--served-model-name",
        plan.preset.served_name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if adapter_dir is not None:
        args += ["--adapter-dir", str(adapter_dir)]
    if plan.config_file is not None:
        args += ["--config", str(plan.config_file)]
    if log_level is not None:
        args += ["--log-level", log_level]
    return args


@contextmanager
def strength_environment(plan: ServePlan) -> Iterator[None]:
    """Upstream passes adapter strengths as env vars named after the adapter."""
    saved = {a.name: os.environ.get(a.name) for a in plan.adapters}
    os.environ.update({a.name: str(a.strength) for a in plan.adapters})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
