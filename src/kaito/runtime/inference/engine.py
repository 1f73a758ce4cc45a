"""Batched transformers engine: one worker thread steps every active sequence together.

Design: a bounded waiting queue feeds a worker thread that owns the model. Between decode steps
the worker admits new requests (one padded prefill for all of them), merges their KV cache into
the running batch (left padding, per-row positions from the attention mask), drops finished or
cancelled rows, and runs queued control commands such as loading an adapter. Blocking model work
never touches the event loop; results flow back through callbacks that the caller makes
thread-safe.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kaito.runtime.inference.adapters import AdapterError, AdapterSpec, apply_strength, validate
from kaito.runtime.inference.detokenizer import OutputText
from kaito.runtime.inference.engines import (
    ChatTurn,
    Delta,
    EngineHooks,
    EngineStoppedError,
    QueueFullError,
    Sink,
)
from kaito.runtime.inference.sampling import SamplingParams, choose_tokens, make_generator

if TYPE_CHECKING:
    from kaito.runtime.inference.config import ServerConfig

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
# A model's advertised context can be huge (128k); a CPU server caps it unless told otherwise.
DEFAULT_CONTEXT_CAP = 8192
# apply_chat_template arguments the server sets itself; clients may not override them.
_TEMPLATE_ARGS = frozenset(
    {
        "conversation",
        "messages",
        "tokenize",
        "add_generation_prompt",
        "return_dict",
        "return_tensors",
        "chat_template",
        "tokenizer_kwargs",
        "continue_final_message",
    }
)

__all__ = [
    "Delta",
    "EngineConfig",
    "EngineStoppedError",
    "HFCodec",
    "QueueFullError",
    "TransformersEngine",
    "load_model",
    "load_transformers_engine",
]


@dataclass(frozen=True)
class EngineConfig:
    """Capacity knobs of the batched engine."""

    max_num_seqs: int = 16  # sequences decoded together in one step
    max_queue_len: int = 256  # requests waiting for a batch slot before 429
    max_prefill_tokens: int = 4096  # padded prompt tokens admitted in one prefill
    max_model_len: int = 2048  # prompt plus generated tokens per sequence
    # An idle engine waits this long after the latest arrival before its first prefill, so
    # clients that arrive together share one prefill (each prefill is a full pass over the model).
    arrival_window_s: float = 0.01
    max_arrival_wait_s: float = 0.05


class HFCodec:
    """`PromptCodec` over a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @functools.cached_property
    def max_chars_per_token(self) -> int:
        # A token's string has at least as many characters as its text (byte-level BPE writes
        # one character per byte; SentencePiece writes the text itself, or <0xNN> per byte).
        return max((len(token) for token in self.tokenizer.get_vocab()), default=1)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        try:
            ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        except Exception as exc:  # e.g. lone surrogates that JSON allows but UTF-8 does not
            raise ValueError(f"the text cannot be tokenized: {exc}") from exc
        return [int(i) for i in ids]

    def render_chat(
        self,
        turns: Sequence[ChatTurn],
        *,
        add_generation_prompt: bool,
        template_kwargs: Mapping[str, object],
    ) -> str:
        messages = [{"role": turn.role, "content": turn.content} for turn in turns]
        extra = {k: v for k, v in template_kwargs.items() if k not in _TEMPLATE_ARGS}
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
            )
        except Exception as exc:  # a template rejecting the conversation is the client's error
            raise ValueError(f"the chat template rejected these messages: {exc}") from exc
        return str(text)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))


@dataclass
class _Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    sink: Sink
    generator: torch.Generator | None
    output: OutputText
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    pending: int = -1  # last sampled token, not yet in the KV cache


@dataclass
class _Batch:
    seqs: list[_Sequence]
    cache: Any
    mask: torch.Tensor  # [rows, cached length]; 0 marks left padding


class TransformersEngine:
    """Continuous batching over a transformers causal LM, with LoRA adapters via peft."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        base_names: tuple[str, ...] = (),
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.base_model = model
        self.model = model
        self.tokenizer = tokenizer
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))
        self.codec = HFCodec(tokenizer, vocab)
        self.config = config
        self.base_names = base_names
        self.adapters: dict[str, AdapterSpec] = {}
        self._on_step = on_step
        self._eos = _eos_ids(model, tokenizer)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._commands: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._commands = collections.deque()
        self._wake = threading.Condition()
        self._batch: _Batch | None = None
        self._stopping = False
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._last_arrival = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Run the worker loop on a new thread."""
        thread = threading.Thread(target=self.run, name="kaito-engine", daemon=True)
        self._thread = thread
        thread.start()

    def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Run the worker loop on the calling thread until `stop`.

        The thread that loaded the model should be the one that runs it: OpenMP keeps one worker
        team per calling thread, and a second team costs a batched step ~1.5x on 2 cores.
        """
        self._thread = threading.current_thread()
        if on_started is not None:
            on_started()
        self._loop()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        batch = self._batch  # read once: the worker may swap it concurrently
        return len(batch.seqs) if batch is not None else 0

    # ---- requests ----------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Sink,
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> Callable[[], None]:
        """Queue one sequence; returns a function that cancels it (frees its slot)."""
        seq = _Sequence(
            request_id=request_id or f"seq-{next(self._ids)}",
            prompt_ids=list(prompt_ids),
            params=params,
            adapter=adapter,
            sink=sink,
            generator=make_generator(params.seed),
            output=OutputText(self._decoder(params.skip_special_tokens), params.stop),
        )
        with self._wake:
            if self._stopping:
                raise EngineStoppedError("the engine is shutting down")
            if len(self._waiting) >= self.config.max_queue_len:
                raise QueueFullError(
                    f"the waiting queue is full ({self.config.max_queue_len} requests)"
                )
            self._waiting.append(seq)
            self._last_arrival = time.monotonic()
            self._wake.notify_all()

        def cancel() -> None:
            seq.cancelled = True
            with self._wake:
                self._wake.notify_all()

        return cancel

    def _decoder(self, skip_special_tokens: bool) -> Callable[[Sequence[int]], str]:
        tokenizer = self.tokenizer

        def decode(ids: Sequence[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

        return decode

    def call_in_worker(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn` on the worker thread between two steps, where touching the model is safe."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._wake:
            self._commands.append((fn, future))
            self._wake.notify_all()
        if self._thread is None:  # not started (tests, or loading): run inline
            self._run_commands()
        return future

    def add_adapter(self, spec: AdapterSpec) -> concurrent.futures.Future[None]:
        return self.call_in_worker(lambda: self.load_adapter(spec))

    def remove_adapter(self, name: str) -> concurrent.futures.Future[None]:
        return self.call_in_worker(lambda: self.unload_adapter(name))

    # ---- adapters (worker thread only) ------------------------------------------------------

    def load_adapter(self, spec: AdapterSpec) -> None:
        """Validate and load one LoRA adapter under its name; call through `call_in_worker`."""
        if spec.name in self.adapters:
            raise AdapterError(f"adapter {spec.name!r} is already loaded")
        if spec.name in self.base_names:
            raise AdapterError(f"adapter name {spec.name!r} clashes with the base model's name")
        validate(spec, self.base_model, self.base_names)
        from peft import PeftModel

        try:
            if self.model is self.base_model:
                self.model = PeftModel.from_pretrained(
                    self.base_model, str(spec.path), adapter_name=spec.name, is_trainable=False
                )
            else:
                self.model.load_adapter(str(spec.path), adapter_name=spec.name, is_trainable=False)
        except Exception as exc:
            # peft's message may quote the files it read; the log keeps it, the client does not.
            log.warning("adapter %r failed to load", spec.name, exc_info=True)
            raise AdapterError(
                f"adapter {spec.name!r} failed to load ({type(exc).__name__}); see the server log"
            ) from exc
        self.model.eval()
        apply_strength(self.model, spec.name, spec.strength)
        self.adapters[spec.name] = spec
        log.info("Adapter added: %s (strength %s)", spec.name, spec.strength)

    def unload_adapter(self, name: str) -> None:
        """Remove one adapter; sequences still using it end with an error."""
        if name not in self.adapters:
            raise AdapterError(f"adapter {name!r} is not loaded")
        self._abort_where(lambda seq: seq.adapter == name, f"adapter {name!r} was unloaded")
        del self.adapters[name]
        if self.adapters:
            self.model.delete_adapter(name)
        else:
            # peft cannot run with zero adapters; hand back the untouched base layers instead.
            self.model = self.model.unload()
            self.base_model = self.model
        log.info("Adapter removed: %s", name)

    # ---- worker loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while (
                        not self._stopping
                        and not self._commands
                        and not self._waiting
                        and self._batch is None
                    ):
                        self._wake.wait(timeout=1.0)
                    if self._stopping:
                        break
                    if self._batch is None and self._waiting:
                        self._gather_arrivals()
                self._run_commands()
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._batch is not None:
                        self._decode()
                except Exception as exc:  # a broken step must not take the server down
                    log.exception("engine step failed")
                    self._abort_where(lambda _seq: True, f"generation failed: {exc}")
        self._abort_where(lambda _seq: True, "the server is shutting down")
        for seq in list(self._waiting):
            seq.sink(_error_delta(seq, "the server is shutting down"))

    def _gather_arrivals(self) -> None:
        """Hold an idle engine's first prefill while requests are still arriving (lock held)."""
        deadline = time.monotonic() + self.config.max_arrival_wait_s
        while not self._stopping and len(self._waiting) < self.config.max_num_seqs:
            now = time.monotonic()
            quiet_at = min(self._last_arrival + self.config.arrival_window_s, deadline)
            if now >= quiet_at:
                return
            self._wake.wait(timeout=quiet_at - now)

    def _run_commands(self) -> None:
        while True:
            with self._wake:
                if not self._commands:
                    return
                fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _abort_where(self, predicate: Callable[[_Sequence], bool], message: str) -> None:
        if self._batch is None:
            return
        keep = []
        for row, seq in enumerate(self._batch.seqs):
            if predicate(seq):
                if not seq.cancelled:
                    seq.sink(_error_delta(seq, message))
                seq.finished = True
            else:
                keep.append(row)
        self._keep_rows(keep)

    def _drop_cancelled(self) -> None:
        if self._batch is not None and any(seq.cancelled for seq in self._batch.seqs):
            self._keep_rows([r for r, s in enumerate(self._batch.seqs) if not s.cancelled])

    def _take_admissions(self) -> list[_Sequence]:
        free = self.config.max_num_seqs - (len(self._batch.seqs) if self._batch else 0)
        taken: list[_Sequence] = []
        longest = 0
        with self._wake:
            while self._waiting and len(taken) < free:
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    continue
                longest_next = max(longest, len(seq.prompt_ids))
                if taken and longest_next * (len(taken) + 1) > self.config.max_prefill_tokens:
                    break
                longest = longest_next
                taken.append(self._waiting.popleft())
        return taken

    def _admit(self) -> None:
        new = self._take_admissions()
        if not new:
            return
        for seq in list(new):
            if seq.adapter is not None and seq.adapter not in self.adapters:
                seq.sink(_error_delta(seq, f"adapter {seq.adapter!r} is not loaded"))
                new.remove(seq)
        if not new:
            return
        width = max(len(seq.prompt_ids) for seq in new)
        pad_id = 0
        input_ids = torch.full((len(new), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for row, seq in enumerate(new):
            n = len(seq.prompt_ids)
            input_ids[row, width - n :] = torch.tensor(seq.prompt_ids, dtype=torch.long)
            mask[row, width - n :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.base_model.config)
        try:
            logits = self._forward(new, input_ids, mask, positions, cache)
        except Exception as exc:  # fail only the newcomers; the running batch is intact
            log.exception("prefill failed")
            for seq in new:
                seq.sink(_error_delta(seq, f"generation failed: {exc}"))
            return
        self._merge(_Batch(seqs=new, cache=cache, mask=mask))
        self._emit(new, logits)

    def _decode(self) -> None:
        batch = self._batch
        assert batch is not None
        seqs = batch.seqs
        input_ids = torch.tensor([[seq.pending] for seq in seqs], dtype=torch.long)
        positions = batch.mask.sum(dim=1, keepdim=True)
        mask = torch.cat([batch.mask, torch.ones((len(seqs), 1), dtype=torch.long)], dim=1)
        logits = self._forward(seqs, input_ids, mask, positions, batch.cache)
        batch.mask = mask
        if self._on_step is not None:
            self._on_step(len(seqs))
        self._emit(seqs, logits)

    def _forward(
        self,
        seqs: list[_Sequence],
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.model is not self.base_model:
            kwargs["adapter_names"] = [seq.adapter or BASE_ADAPTER for seq in seqs]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :]

    def _merge(self, new: _Batch) -> None:
        old = self._batch
        if old is None:
            self._batch = new
            return
        width = max(old.mask.shape[1], new.mask.shape[1])
        for old_layer, new_layer in zip(old.cache.layers, new.cache.layers, strict=True):
            old_layer.keys = _cat_left_padded(old_layer.keys, new_layer.keys, width)
            old_layer.values = _cat_left_padded(old_layer.values, new_layer.values, width)
        old.mask = torch.cat(
            [_pad_left(old.mask, width, dim=1), _pad_left(new.mask, width, dim=1)], dim=0
        )
        old.seqs = old.seqs + new.seqs

    def _keep_rows(self, rows: list[int]) -> None:
        batch = self._batch
        if batch is None:
            return
        if not rows:
            self._batch = None
            return
        if len(rows) == len(batch.seqs):
            return
        index = torch.tensor(rows, dtype=torch.long)
        mask = batch.mask.index_select(0, index)
        # Columns that are padding in every remaining row only cost attention time: drop them.
        used = (mask.sum(dim=0) > 0).nonzero()
        start = int(used[0]) if used.numel() else 0
        mask = mask[:, start:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]
        batch.mask = mask
        batch.seqs = [batch.seqs[r] for r in rows]

    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        histories = [
            seq.prompt_ids + seq.generated if seq.params.repetition_penalty != 1.0 else []
            for seq in seqs
        ]
        tokens = choose_tokens(
            logits, [s.params for s in seqs], [s.generator for s in seqs], histories
        )
        for seq, token in zip(seqs, tokens, strict=True):
            if seq.cancelled:
                seq.finished = True
                continue
            self._advance(seq, token)
        if self._batch is not None:
            self._keep_rows([r for r, s in enumerate(self._batch.seqs) if not s.finished])

    def _advance(self, seq: _Sequence, token: int) -> None:
        params = seq.params
        finish: str | None = None
        stop_token = (
            not params.ignore_eos and token in self._eos
        ) or token in params.stop_token_ids
        new_ids: list[int] = []
        new_text = ""
        if stop_token and len(seq.generated) >= params.min_tokens:
            finish = "stop"
        else:
            seq.generated.append(token)
            new_ids = [token]
        search = len(seq.generated) >= params.min_tokens
        stopped = False
        if new_ids:
            new_text, stopped = seq.output.push(token, search=search)
            if stopped:
                finish = "stop"
        if finish is None and (
            len(seq.generated) >= params.max_tokens
            or len(seq.prompt_ids) + len(seq.generated) >= self.config.max_model_len
        ):
            finish = "length"
        if finish is not None and not stopped:
            # Ending for another reason: the held-back tail is final text (or holds a stop).
            rest, stopped = seq.output.finish(search=search)
            new_text += rest
            if stopped:
                finish = "stop"
        seq.pending = token
        seq.finished = finish is not None
        if new_text or new_ids or finish is not None:
            seq.sink(
                Delta(
                    text=new_text,
                    token_ids=new_ids,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.generated),
                    finish_reason=finish,
                )
            )


def _error_delta(seq: _Sequence, message: str) -> Delta:
    return Delta(
        text="",
        token_ids=[],
        prompt_tokens=len(seq.prompt_ids),
        completion_tokens=len(seq.generated),
        finish_reason="error",
        error=message,
    )


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _cat_left_padded(old: torch.Tensor, new: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([_pad_left(old, width, dim=2), _pad_left(new, width, dim=2)], dim=0)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def load_transformers_engine(config: ServerConfig, hooks: EngineHooks) -> TransformersEngine:
    """Load the model on a new thread that then runs the engine; return once it accepts work.

    All model work stays on that one thread (see `TransformersEngine.run`).
    """
    started: concurrent.futures.Future[TransformersEngine] = concurrent.futures.Future()

    def work() -> None:
        try:
            engine = _build_engine(config, hooks)
        except BaseException as exc:
            started.set_exception(exc)
            return
        engine.run(on_started=lambda: started.set_result(engine))

    threading.Thread(target=work, name="kaito-engine", daemon=True).start()
    return started.result()


def _build_engine(config: ServerConfig, hooks: EngineHooks) -> TransformersEngine:
    from kaito.runtime.inference.config import resolve_chat_template
    from kaito.runtime.inference.packed_linear import try_pack

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    kwargs = dict(config.load_kwargs)
    if config.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if hooks.preloaded is not None:
        model, tokenizer = hooks.preloaded
    else:
        model, tokenizer = load_model(config.model, config.dtype, **kwargs)
    if config.weight_packing:
        try_pack(model)
    template = resolve_chat_template(config.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    limit = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT_CAP)
    if config.max_model_len is None:
        max_model_len = min(limit, DEFAULT_CONTEXT_CAP)
    elif config.max_model_len > limit:
        raise ValueError(
            f"--max-model-len {config.max_model_len} exceeds the model's limit of {limit}"
        )
    else:
        max_model_len = config.max_model_len
    names = [config.model_name, config.model, str(getattr(model.config, "name_or_path", "") or "")]
    engine = TransformersEngine(
        model,
        tokenizer,
        EngineConfig(
            max_num_seqs=config.max_num_seqs,
            max_queue_len=config.max_queue_len,
            max_prefill_tokens=config.max_prefill_tokens,
            max_model_len=max_model_len,
        ),
        base_names=tuple(n for n in names if n),
        on_step=hooks.on_step,
    )
    for spec in hooks.adapters:
        engine.load_adapter(spec)
    return engine


def load_model(path: str | Path, dtype: str = "auto", **kwargs: Any) -> tuple[Any, Any]:
    """Load tokenizer and causal LM for CPU serving; `dtype` is auto or a torch dtype name.

    `auto` is the checkpoint's format, or bf16 where this CPU computes it natively (precision.py).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kaito.runtime.inference.precision import native_bf16, serving_dtype

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if dtype == "auto":
        config = AutoConfig.from_pretrained(str(path), **kwargs)
        # Handed on, so the model's load does not read the config again.
        kwargs = {**kwargs, "config": config}
        stored = getattr(config, "dtype", None)
        if isinstance(stored, str):
            stored = getattr(torch, stored, None)
        torch_dtype = serving_dtype(
            stored if isinstance(stored, torch.dtype) else None, native=native_bf16()
        )
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **kwargs)
    model.eval()
    log.info("loaded %s as %s in %.1f s", path, torch_dtype, time.monotonic() - started)
    return model, tokenizer
