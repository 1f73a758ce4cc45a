"""Serving logic: validated requests become engine work; errors are returned as values."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaito.runtime.inference import protocol as p
from kaito.runtime.inference.adapters import (
    AdapterError,
    AdapterSpec,
    discover,
    strength_from_env,
)
from kaito.runtime.inference.config import ServerConfig, resolve_chat_template
from kaito.runtime.inference.engine import (
    Delta,
    EngineConfig,
    EngineStoppedError,
    QueueFullError,
    TransformersEngine,
    load_model,
)
from kaito.runtime.inference.metrics import ServerMetrics
from kaito.runtime.inference.packed_linear import (
    try_pack,
)
from kaito.runtime.inference.sampling import SamplingParams

log = logging.getLogger(__name__)

# A model's advertised context can be huge (128k); a CPU server caps it unless told otherwise.
DEFAULT_CONTEXT_CAP = 8192
DISCONNECT_POLL_S = 0.5

Disconnected = Callable[[], Awaitable[bool]]
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


@dataclass(frozen=True)
class ServingError:
    """An error to send back: HTTP status plus OpenAI's error fields."""

    status: int
    message: str
    type: str = "BadRequestError"
    code: str | None = None
    param: str | None = None

    def openai_body(self) -> dict[str, Any]:
        info = p.ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return p.ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None = None) -> ServingError:
    return ServingError(400, message, param=param)


NOT_READY = ServingError(503, "the model is still loading", "ServiceUnavailableError")


class _Run:
    """Several sequences of one request (n choices, several prompts) read as one stream."""

    def __init__(self, started: float, metrics: ServerMetrics) -> None:
        self.queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        self.cancels: list[Callable[[], None]] = []
        self.open: set[int] = set()
        self.started = started
        self.metrics = metrics
        self.first_token_seen = False

    def sink_for(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[Delta], None]:
        def sink(delta: Delta) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (index, delta))

        return sink

    async def next(self, disconnected: Disconnected | None) -> tuple[int, Delta] | None:
        """The next delta of any sequence; None once all have finished or the client left."""
        while self.open:
            try:
                index, delta = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if disconnected is not None and await disconnected():
                    self.close()
                    return None
                continue
            if delta.finish_reason is not None:
                self.open.discard(index)
            if not self.first_token_seen and (delta.token_ids or delta.text):
                self.first_token_seen = True
                self.metrics.time_to_first_token.observe(time.monotonic() - self.started)
            return index, delta
        return None

    def close(self) -> None:
        for index, cancel in enumerate(self.cancels):
            if index in self.open:
                cancel()
        self.open.clear()


class InferenceServing:
    """The model server's behaviour, independent of HTTP."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        preloaded: tuple[Any, Any] | None = None,
    ) -> None:
        """`preloaded` is (model, tokenizer) already in memory; the engine takes ownership."""
        self.config = config
        self._preloaded = preloaded
        self.metrics = metrics or ServerMetrics()
        self.engine: TransformersEngine | None = None
        self.tokenizer: Any = None
        self.max_model_len = config.max_model_len or 0
        self.load_error: str | None = None
        self.vocab_size = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load model, tokenizer and adapters, then start the engine (blocking; run off-loop).

        Loading happens on the engine's own thread, which then runs the engine: all model work
        stays on one thread (see `TransformersEngine.run`).
        """
        started: concurrent.futures.Future[TransformersEngine] = concurrent.futures.Future()

        def work() -> None:
            try:
                engine = self._load()
            except BaseException as exc:
                started.set_exception(exc)
                return
            engine.run(on_started=lambda: self._publish(engine, started))

        threading.Thread(target=work, name="kaito-engine", daemon=True).start()
        try:
            started.result()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
            raise

    def _publish(
        self, engine: TransformersEngine, started: concurrent.futures.Future[TransformersEngine]
    ) -> None:
        self.metrics.watch_engine(lambda: engine.num_waiting, lambda: engine.num_running)
        self.engine = engine
        self.metrics.ready.set(1)
        started.set_result(engine)

    def _load(self) -> TransformersEngine:
        import torch

        config = self.config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        kwargs = dict(config.load_kwargs)
        if config.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if self._preloaded is not None:
            model, tokenizer = self._preloaded
            self._preloaded = None
        else:
            model, tokenizer = load_model(config.model, config.dtype, **kwargs)
        if config.weight_packing:
            try_pack(model)
        template = resolve_chat_template(config.chat_template)
        if template is not None:
            tokenizer.chat_template = template
        limit = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT_CAP)
        if config.max_model_len is None:
            self.max_model_len = min(limit, DEFAULT_CONTEXT_CAP)
        elif config.max_model_len > limit:
            raise ValueError(
                f"--max-model-len {config.max_model_len} exceeds the model's limit of {limit}"
            )
        else:
            self.max_model_len = config.max_model_len
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        engine = TransformersEngine(
            model,
            tokenizer,
            EngineConfig(
                max_num_seqs=config.max_num_seqs,
                max_queue_len=config.max_queue_len,
                max_prefill_tokens=config.max_prefill_tokens,
                max_model_len=self.max_model_len,
            ),
            base_names=self.base_names(model),
            on_step=self.metrics.batch_size.observe,
        )
        adapter_dir = Path(config.adapter_dir) if config.adapter_dir else None
        for spec in discover(adapter_dir):
            engine.load_adapter(spec)
        self.tokenizer = tokenizer
        return engine

    def base_names(self, model: Any = None) -> tuple[str, ...]:
        names = [self.config.model_name, self.config.model]
        if model is not None:
            names.append(str(getattr(model.config, "name_or_path", "") or ""))
        return tuple(n for n in names if n)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def health(self) -> tuple[int, dict[str, str]]:
        if self.engine is not None:
            return 200, {"status": "Healthy"}
        if self.load_error is not None:
            return 500, {"detail": f"Model not initialized: {self.load_error}"}
        return 503, {"status": "Loading"}

    # ---- models and adapters -----------------------------------------------------------------

    def models(self) -> p.ModelList:
        base = self.config.model_name
        cards = [p.ModelCard(id=base, root=self.config.model, max_model_len=self.max_model_len)]
        if self.engine is not None:
            for spec in self.engine.adapters.values():
                cards.append(p.ModelCard(id=spec.name, root=str(spec.path), parent=base))
        return p.ModelList(data=cards)

    def resolve_model(self, name: str) -> str | ServingError | None:
        """None for the base model, an adapter name, a 404, or a 503 while still loading."""
        if self.engine is None:
            return NOT_READY
        if name in (self.config.model_name, self.config.model):
            return None
        if name in self.engine.adapters:
            return name
        return ServingError(
            404, f"The model `{name}` does not exist.", "NotFoundError", "model_not_found", "model"
        )

    async def load_adapter(self, request: p.LoadLoRAAdapterRequest) -> str | ServingError:
        engine = self.engine
        if engine is None:
            return NOT_READY
        try:
            strength = (
                request.strength
                if request.strength is not None
                else strength_from_env(request.lora_name)
            )
            spec = AdapterSpec(request.lora_name, Path(request.lora_path), strength)
            await asyncio.wrap_future(engine.call_in_worker(lambda: engine.load_adapter(spec)))
        except AdapterError as exc:
            return bad_request(str(exc), "lora_name")
        return f"Success: LoRA adapter '{request.lora_name}' added successfully."

    async def unload_adapter(self, request: p.UnloadLoRAAdapterRequest) -> str | ServingError:
        engine = self.engine
        if engine is None:
            return NOT_READY
        if request.lora_name not in engine.adapters:
            return ServingError(
                404,
                f"The lora adapter '{request.lora_name}' cannot be found.",
                "NotFoundError",
                param="lora_name",
            )
        try:
            await asyncio.wrap_future(
                engine.call_in_worker(lambda: engine.unload_adapter(request.lora_name))
            )
        except AdapterError as exc:
            return bad_request(str(exc), "lora_name")
        return f"Success: LoRA adapter '{request.lora_name}' removed successfully."

    # ---- request preparation -----------------------------------------------------------------

    def _check_length(
        self, prompt_len: int, max_tokens: int | None, what: str
    ) -> int | ServingError:
        if prompt_len == 0:
            return bad_request("the prompt is empty", what)
        room = self.max_model_len - prompt_len
        if room < 1 or (max_tokens is not None and max_tokens > room):
            requested = prompt_len + (max_tokens or 1)
            return bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {requested} tokens ({prompt_len} in the {what}, "
                f"{max_tokens or 1} in the completion). Please reduce the length of the {what} "
                "or completion.",
                what,
            )
        return max_tokens if max_tokens is not None else min(self.config.default_max_tokens, room)

    def _sampling(self, req: p.SamplingFields, max_tokens: int, index: int) -> SamplingParams:
        temperature = 1.0 if req.temperature is None else req.temperature
        top_k = req.top_k or 0
        seed = None if req.seed is None else (req.seed + index) % 2**63
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(top_k, 0),
            repetition_penalty=req.repetition_penalty or 1.0,
            seed=seed,
            stop=tuple(req.stop_list()),
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            min_tokens=min(req.min_tokens, max_tokens),
        )

    def _validate_common(self, req: p.SamplingFields) -> ServingError | None:
        extra = req.model_extra or {}
        if extra.get("logprobs") or extra.get("top_logprobs"):
            return bad_request("logprobs are not supported by this server", "logprobs")
        stops = req.stop_list()
        if len(stops) > p.MAX_STOP or any(len(s) > 256 for s in stops):
            return bad_request(f"at most {p.MAX_STOP} stop strings of 256 characters", "stop")
        for token in req.stop_token_ids or ():
            if not 0 <= token < self.vocab_size:
                return bad_request(f"stop token id {token} is outside the vocabulary", "stop")
        return None

    def _chat_prompt(self, req: p.ChatCompletionRequest) -> list[int] | ServingError:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return self._render_chat(messages, req.add_generation_prompt, req.chat_template_kwargs)

    def _render_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int] | ServingError:
        extra = {k: v for k, v in (template_kwargs or {}).items() if k not in _TEMPLATE_ARGS}
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
            )
        except Exception as exc:  # a template rejecting the conversation is the client's error
            return bad_request(f"the chat template rejected these messages: {exc}", "messages")
        return self._encode(str(text), add_special_tokens=False, param="messages")

    def _encode(self, text: str, add_special_tokens: bool, param: str) -> list[int] | ServingError:
        try:
            ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        except Exception as exc:  # e.g. lone surrogates that JSON allows but UTF-8 does not
            return bad_request(f"the text cannot be tokenized: {exc}", param)
        return [int(i) for i in ids]

    def _start(
        self,
        prompts: list[list[int]],
        params: list[SamplingParams],
        adapter: str | None,
        started: float,
    ) -> _Run | ServingError:
        engine = self.engine
        if engine is None:
            return NOT_READY
        loop = asyncio.get_running_loop()
        run = _Run(started, self.metrics)
        request_id = uuid.uuid4().hex
        try:
            for index, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
                run.open.add(index)
                run.cancels.append(
                    engine.submit(
                        prompt, param, run.sink_for(loop, index), adapter, f"{request_id}-{index}"
                    )
                )
        except QueueFullError as exc:
            run.close()
            self.metrics.rejected.inc()
            return ServingError(429, f"Too many requests: {exc}", "requests", "rate_limit_exceeded")
        except EngineStoppedError as exc:
            run.close()
            return ServingError(503, str(exc), "ServiceUnavailableError")
        self.metrics.prompt_tokens.inc(sum(len(prompt) for prompt in prompts))
        return run

    async def _collect(
        self, run: _Run, count: int, disconnected: Disconnected | None
    ) -> tuple[list[str], list[str | None], int] | ServingError | None:
        texts = [""] * count
        reasons: list[str | None] = [None] * count
        generated = 0
        while (item := await run.next(disconnected)) is not None:
            index, delta = item
            texts[index] += delta.text
            generated += len(delta.token_ids)
            if delta.error is not None:
                run.close()
                return ServingError(500, delta.error, "InternalServerError")
            if delta.finish_reason is not None:
                reasons[index] = delta.finish_reason
        self.metrics.generation_tokens.inc(generated)
        if any(reason is None for reason in reasons):
            return None  # the client went away
        return texts, reasons, generated

    # ---- OpenAI chat -------------------------------------------------------------------------

    async def chat(
        self, req: p.ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> p.ChatCompletionResponse | AsyncIterator[str] | ServingError | None:
        started = time.monotonic()
        adapter = self.resolve_model(req.model)
        if isinstance(adapter, ServingError):
            return adapter
        if (error := self._validate_common(req)) is not None:
            return error
        prompt = self._chat_prompt(req)
        if isinstance(prompt, ServingError):
            return prompt
        budget = self._check_length(
            len(prompt), req.max_completion_tokens or req.max_tokens, "messages"
        )
        if isinstance(budget, ServingError):
            return budget
        params = [self._sampling(req, budget, i) for i in range(req.n)]
        run = self._start([prompt] * req.n, params, adapter, started)
        if isinstance(run, ServingError):
            return run
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._chat_stream(req, run, len(prompt), include_usage)
        collected = await self._collect(run, req.n, disconnected)
        if collected is None or isinstance(collected, ServingError):
            return collected
        texts, reasons, generated = collected
        return p.ChatCompletionResponse(
            model=req.model,
            choices=[
                p.ChatChoice(index=i, message=p.ChatResponseMessage(content=t), finish_reason=r)
                for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
            ],
            usage=_usage(len(prompt) * req.n, generated),
        )

    async def _chat_stream(
        self, req: p.ChatCompletionRequest, run: _Run, prompt_len: int, include_usage: bool
    ) -> AsyncIterator[str]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        generated = 0

        def chunk(choices: list[p.ChatChunkChoice], usage: p.UsageInfo | None = None) -> str:
            body = p.ChatCompletionChunk(
                id=chunk_id, created=created, model=req.model, choices=choices, usage=usage
            )
            return f"data: {body.model_dump_json(exclude_none=usage is None)}\n\n"

        try:
            for index in range(req.n):
                role = p.DeltaMessage(role="assistant", content="")
                yield chunk([p.ChatChunkChoice(index=index, delta=role)])
            while (item := await run.next(None)) is not None:
                index, delta = item
                generated += len(delta.token_ids)
                if delta.error is not None:
                    yield _stream_error(delta.error)
                    break
                if delta.text or delta.finish_reason is not None:
                    content = p.DeltaMessage(content=delta.text or None)
                    choice = p.ChatChunkChoice(
                        index=index, delta=content, finish_reason=delta.finish_reason
                    )
                    yield chunk([choice])
            if include_usage:
                yield chunk([], _usage(prompt_len * req.n, generated))
            yield "data: [DONE]\n\n"
        finally:
            # Runs on normal end and when the client disconnects (the generator is closed).
            run.close()
            self.metrics.generation_tokens.inc(generated)

    # ---- OpenAI completions ------------------------------------------------------------------

    def _completion_prompts(self, req: p.CompletionRequest) -> list[list[int]] | ServingError:
        raw: Any = req.prompt
        items: list[str | list[int]]
        if isinstance(raw, str):
            items = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [[int(x) for x in raw]]
        else:
            items = list(raw)
        if not items:
            return bad_request("the prompt is empty", "prompt")
        if len(items) > p.MAX_N:
            return bad_request(f"at most {p.MAX_N} prompts per request", "prompt")
        prompts: list[list[int]] = []
        for item in items:
            if isinstance(item, str):
                encoded = self._encode(item, add_special_tokens=True, param="prompt")
                if isinstance(encoded, ServingError):
                    return encoded
                prompts.append(encoded)
                continue
            if any(not 0 <= token < self.vocab_size for token in item):
                return bad_request("a prompt token id is outside the vocabulary", "prompt")
            prompts.append(list(item))
        return prompts

    async def completion(
        self, req: p.CompletionRequest, disconnected: Disconnected | None = None
    ) -> p.CompletionResponse | AsyncIterator[str] | ServingError | None:
        started = time.monotonic()
        adapter = self.resolve_model(req.model)
        if isinstance(adapter, ServingError):
            return adapter
        if req.suffix:
            return bad_request("suffix is not supported", "suffix")
        if req.n * (1 if isinstance(req.prompt, str) else len(req.prompt)) > p.MAX_N * p.MAX_N:
            return bad_request("too many choices requested", "n")
        if (error := self._validate_common(req)) is not None:
            return error
        prompts = self._completion_prompts(req)
        if isinstance(prompts, ServingError):
            return prompts
        all_prompts: list[list[int]] = []
        params: list[SamplingParams] = []
        for prompt in prompts:
            budget = self._check_length(len(prompt), req.max_tokens, "prompt")
            if isinstance(budget, ServingError):
                return budget
            for i in range(req.n):
                all_prompts.append(prompt)
                params.append(self._sampling(req, budget, i))
        run = self._start(all_prompts, params, adapter, started)
        if isinstance(run, ServingError):
            return run
        prompt_tokens = sum(len(x) for x in all_prompts)
        echoes = [self.tokenizer.decode(x) if req.echo else "" for x in all_prompts]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._completion_stream(req, run, echoes, prompt_tokens, include_usage)
        collected = await self._collect(run, len(all_prompts), disconnected)
        if collected is None or isinstance(collected, ServingError):
            return collected
        texts, reasons, generated = collected
        return p.CompletionResponse(
            model=req.model,
            choices=[
                p.CompletionChoice(index=i, text=echoes[i] + t, finish_reason=r)
                for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
            ],
            usage=_usage(prompt_tokens, generated),
        )

    async def _completion_stream(
        self,
        req: p.CompletionRequest,
        run: _Run,
        echoes: list[str],
        prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        chunk_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        generated = 0
        echoed: set[int] = set()

        def chunk(choices: list[p.CompletionChoice], usage: p.UsageInfo | None = None) -> str:
            body = p.CompletionResponse(
                id=chunk_id, created=created, model=req.model, choices=choices, usage=usage
            )
            return f"data: {body.model_dump_json(exclude_none=usage is None)}\n\n"

        try:
            while (item := await run.next(None)) is not None:
                index, delta = item
                generated += len(delta.token_ids)
                if delta.error is not None:
                    yield _stream_error(delta.error)
                    break
                text = delta.text
                if index not in echoed:
                    echoed.add(index)
                    text = echoes[index] + text
                if text or delta.finish_reason is not None:
                    choice = p.CompletionChoice(
                        index=index, text=text, finish_reason=delta.finish_reason
                    )
                    yield chunk([choice])
            if include_usage:
                yield chunk([], _usage(prompt_tokens, generated))
            yield "data: [DONE]\n\n"
        finally:
            run.close()
            self.metrics.generation_tokens.inc(generated)

    # ---- legacy /chat ------------------------------------------------------------------------

    async def legacy_chat(
        self, req: p.UnifiedRequestModel, disconnected: Disconnected | None = None
    ) -> p.LegacyResult | ServingError | None:
        """Upstream's `/chat`: prompt (text generation) or messages (conversation)."""
        started = time.monotonic()
        if self.engine is None:
            return ServingError(503, "Model not initialized")
        kwargs = req.generate_kwargs
        if kwargs.num_beams > 1:
            return ServingError(400, "beam search (num_beams > 1) is not supported")
        if req.prompt:
            encoded = self._encode((req.prefix or "") + req.prompt, True, "prompt")
            if isinstance(encoded, ServingError):
                return ServingError(400, encoded.message)
            prompt = encoded
        elif req.messages:
            prompt_or_error = self._render_chat(
                [{"role": m.role, "content": m.content} for m in req.messages]
            )
            if isinstance(prompt_or_error, ServingError):
                return ServingError(400, prompt_or_error.message)
            prompt = prompt_or_error
        elif self.config.pipeline == "conversational":
            return ServingError(400, "Conversational parameter messages required")
        else:
            return ServingError(400, "Text generation parameter prompt required")
        max_new = kwargs.max_new_tokens or max(1, kwargs.max_length - len(prompt))
        budget = self._check_length(len(prompt), max_new, "prompt")
        if isinstance(budget, ServingError):
            return ServingError(400, budget.message)
        min_new = kwargs.min_new_tokens or max(0, kwargs.min_length - len(prompt))
        params = SamplingParams(
            max_tokens=budget,
            temperature=kwargs.temperature if kwargs.do_sample else 0.0,
            top_k=kwargs.top_k if kwargs.do_sample else 0,
            top_p=kwargs.top_p if kwargs.do_sample else 1.0,
            repetition_penalty=kwargs.repetition_penalty,
            seed=kwargs.seed,
            min_tokens=min(min_new, budget),
        )
        run = self._start([prompt], [params], None, started)
        if isinstance(run, ServingError):
            return ServingError(run.status, run.message)
        collected = await self._collect(run, 1, disconnected)
        if collected is None or isinstance(collected, ServingError):
            return collected
        (answer,), _, _ = collected
        if req.prompt and req.return_full_text:
            answer = req.prompt + answer
        return p.LegacyResult(Result=answer)


def _usage(prompt_tokens: int, completion_tokens: int) -> p.UsageInfo:
    return p.UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _stream_error(message: str) -> str:
    body = ServingError(500, message, "InternalServerError").openai_body()
    return f"data: {json.dumps(body)}\n\n"
