"""Serving logic, independent of HTTP: validated requests become engine work; errors are raised.

Every request kind (OpenAI chat, OpenAI completions, legacy `/chat`) is turned into a `_Plan`
(prompts before tokenizing, copies, budget and sampling rules), then takes the same path:
`_prepare` (tokenize and render off the event loop, check lengths), `_start` (submit to the
engine), and `_collect` or `_sse` (one stream generator for every kind).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from kaito.runtime.inference import protocol as p
from kaito.runtime.inference.adapters import AdapterError, AdapterSpec, discover
from kaito.runtime.inference.config import ServerConfig
from kaito.runtime.inference.engines import (
    ChatTurn,
    Delta,
    Engine,
    EngineHooks,
    EngineStoppedError,
    PromptCodec,
    QueueFullError,
    engine_loader,
)
from kaito.runtime.inference.metrics import ServerMetrics
from kaito.runtime.inference.sampling import SamplingParams

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5
# Tokenizing and template rendering run here, off the event loop; two threads keep one huge
# prompt from holding up every other request's preparation.
PREPARE_THREADS = 2

Disconnected = Callable[[], Awaitable[bool]]
T = TypeVar("T")


class ServingError(Exception):
    """A request the server answers with an error: HTTP status plus OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "BadRequestError",  # OpenAI's field name
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def openai_body(self) -> p.ErrorResponse:
        info = p.ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return p.ErrorResponse(error=info)


class ClientGoneError(Exception):
    """The client disconnected before the answer was ready; nobody reads the response."""


def bad_request(message: str, param: str | None = None) -> ServingError:
    return ServingError(400, message, param=param)


def not_ready() -> ServingError:
    return ServingError(503, "the model is still loading", "ServiceUnavailableError")


class EventStream:
    """A server-sent-events body: `data: ...` lines, ending with `data: [DONE]`."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        self.events = events


# ---- the one request path ------------------------------------------------------------------


Prompt = str | list[int] | tuple[ChatTurn, ...]
"""Text (tokenized with special tokens), token ids (checked), or a conversation (rendered)."""


@dataclass(frozen=True)
class _Plan:
    """A request before tokenizing: what to run, how often, and which rules bound it."""

    prompts: Sequence[Prompt]
    n: int
    param: str  # the request field the prompts came from, named in errors
    budget: Callable[[int], int | None]  # prompt length -> requested max tokens (None: default)
    # (prompt length, max tokens, choice index) -> parameters
    sampling: Callable[[int, int, int], SamplingParams]
    adapter: str | None = None
    add_generation_prompt: bool = True
    template_kwargs: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Prepared:
    prompts: list[list[int]]  # one per sequence: each plan prompt repeated n times
    params: list[SamplingParams]
    adapter: str | None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(prompt) for prompt in self.prompts)


@dataclass
class _Collected:
    texts: list[str]
    reasons: list[str]
    generated: int


class _Run:
    """Several sequences of one request (n choices, several prompts) read as one stream."""

    def __init__(self, started: float, metrics: ServerMetrics) -> None:
        self.queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        self.cancels: list[Callable[[], None]] = []
        self.open: set[int] = set()
        self.started = started
        self.metrics = metrics
        self.first_token_seen = False
        self.counted: dict[int, int] = {}

    def new_tokens(self, index: int, delta: Delta) -> int:
        """Tokens generated since this sequence's previous delta (from the running count,
        which every engine reports; llama.cpp does not report the token ids themselves)."""
        before = self.counted.get(index, 0)
        self.counted[index] = max(before, delta.completion_tokens)
        return self.counted[index] - before

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


class _Chunks(Protocol):
    """How one API kind spells its stream: the chunks around and for each delta."""

    def opening(self, count: int) -> list[str]: ...

    def delta(self, index: int, text: str, finish_reason: str | None) -> str | None: ...

    def usage(self, usage: p.UsageInfo) -> str: ...


class InferenceServing:
    """The model server's behaviour, independent of HTTP."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        preloaded: tuple[object, object] | None = None,
    ) -> None:
        """`preloaded` is (model, tokenizer) already in memory; the engine takes ownership."""
        self.config = config
        self._preloaded = preloaded
        self.metrics = metrics or ServerMetrics()
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(
            PREPARE_THREADS, thread_name_prefix="kaito-prepare"
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the engine named by `--engine` with its adapters (blocking; run off-loop)."""
        config = self.config
        try:
            adapter_dir = Path(config.adapter_dir) if config.adapter_dir else None
            hooks = EngineHooks(
                on_step=self.metrics.batch_size.observe,
                preloaded=self._preloaded,
                adapters=tuple(discover(adapter_dir, config.adapter_strengths)),
            )
            self._preloaded = None
            engine = engine_loader(config.engine)(config, hooks)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
            raise
        self.metrics.watch_engine(lambda: engine.num_waiting, lambda: engine.num_running)
        self.engine = engine
        self.metrics.ready.set(1)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> tuple[int, dict[str, str]]:
        if self.engine is not None:
            return 200, {"status": "Healthy"}
        if self.load_error is not None:
            return 500, {"detail": f"Model not initialized: {self.load_error}"}
        return 503, {"status": "Loading"}

    def _engine(self) -> Engine:
        if self.engine is None:
            raise not_ready()
        return self.engine

    @property
    def max_model_len(self) -> int:
        engine = self.engine
        return engine.max_model_len if engine is not None else (self.config.max_model_len or 0)

    # ---- models and adapters -----------------------------------------------------------------

    def models(self) -> p.ModelList:
        base = self.config.model_name
        cards = [p.ModelCard(id=base, root=self.config.model, max_model_len=self.max_model_len)]
        if self.engine is not None:
            for spec in self.engine.adapters.values():
                cards.append(p.ModelCard(id=spec.name, root=str(spec.path), parent=base))
        return p.ModelList(data=cards)

    def resolve_model(self, name: str) -> str | None:
        """None for the base model, else the adapter's name; raises 404 or 503."""
        engine = self._engine()
        if name in (self.config.model_name, self.config.model):
            return None
        if name in engine.adapters:
            return name
        raise ServingError(
            404, f"The model `{name}` does not exist.", "NotFoundError", "model_not_found", "model"
        )

    async def load_adapter(self, request: p.LoadLoRAAdapterRequest) -> str:
        engine = self._engine()
        # The strength comes from the request or the Workspace's settings, never from a
        # variable the request names: that would read (and echo) the pod's environment.
        strength = request.strength
        if strength is None:
            strength = self.config.adapter_strengths.get(request.lora_name, 1.0)
        spec = AdapterSpec(request.lora_name, Path(request.lora_path), strength)
        try:
            await asyncio.wrap_future(engine.add_adapter(spec))
        except AdapterError as exc:
            log.warning("adapter %r refused: %s %s", request.lora_name, exc, exc.detail)
            raise bad_request(str(exc), "lora_name") from exc
        return f"Success: LoRA adapter '{request.lora_name}' added successfully."

    async def unload_adapter(self, request: p.UnloadLoRAAdapterRequest) -> str:
        engine = self._engine()
        if request.lora_name not in engine.adapters:
            raise ServingError(
                404,
                f"The lora adapter '{request.lora_name}' cannot be found.",
                "NotFoundError",
                param="lora_name",
            )
        try:
            await asyncio.wrap_future(engine.remove_adapter(request.lora_name))
        except AdapterError as exc:
            raise bad_request(str(exc), "lora_name") from exc
        return f"Success: LoRA adapter '{request.lora_name}' removed successfully."

    # ---- request preparation -----------------------------------------------------------------

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        """Run blocking CPU work (tokenizing, templates) in the preparation pool."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, fn)

    def _budget(self, prompt_len: int, max_tokens: int | None, param: str) -> int:
        if prompt_len == 0:
            raise bad_request("the prompt is empty", param)
        room = self.max_model_len - prompt_len
        if room < 1 or (max_tokens is not None and max_tokens > room):
            requested = prompt_len + (max_tokens or 1)
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {requested} tokens ({prompt_len} in the {param}, "
                f"{max_tokens or 1} in the completion). Please reduce the length of the {param} "
                "or completion.",
                param,
            )
        return max_tokens if max_tokens is not None else min(self.config.default_max_tokens, room)

    def _encode(self, codec: PromptCodec, text: str, special: bool, param: str) -> list[int]:
        # Text that cannot fit is refused before tokenizing: a few MiB take seconds to tokenize.
        if len(text) > self.max_model_len * codec.max_chars_per_token:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"the {param} is longer than that ({len(text)} characters). Please reduce the "
                f"length of the {param}.",
                param,
            )
        return codec.encode(text, add_special_tokens=special)

    def _tokenize(self, codec: PromptCodec, plan: _Plan) -> list[list[int]]:
        """Every plan prompt as token ids (blocking: runs in the preparation pool)."""
        ids: list[list[int]] = []
        for prompt in plan.prompts:
            try:
                if isinstance(prompt, str):
                    ids.append(self._encode(codec, prompt, True, plan.param))
                elif isinstance(prompt, tuple):
                    text = codec.render_chat(
                        prompt,
                        add_generation_prompt=plan.add_generation_prompt,
                        template_kwargs=plan.template_kwargs,
                    )
                    ids.append(self._encode(codec, text, False, plan.param))
                elif any(not 0 <= token < codec.vocab_size for token in prompt):
                    raise bad_request("a prompt token id is outside the vocabulary", plan.param)
                else:
                    ids.append(prompt)
            except ValueError as exc:
                raise bad_request(str(exc), plan.param) from exc
        return ids

    async def _prepare(self, plan: _Plan) -> _Prepared:
        engine = self._engine()
        if not plan.prompts:
            raise bad_request("the prompt is empty", plan.param)
        longest = max((len(x) for x in plan.prompts if isinstance(x, tuple)), default=0)
        if longest > self.config.max_messages:
            raise bad_request(
                f"at most {self.config.max_messages} messages per request (--max-messages)",
                "messages",
            )
        tokenized = await self._off_loop(lambda: self._tokenize(engine.codec, plan))
        prompts: list[list[int]] = []
        params: list[SamplingParams] = []
        for ids in tokenized:
            budget = self._budget(len(ids), plan.budget(len(ids)), plan.param)
            for index in range(plan.n):
                prompts.append(ids)
                params.append(plan.sampling(len(ids), budget, index))
        return _Prepared(prompts, params, plan.adapter)

    def _start(self, prepared: _Prepared, started: float) -> _Run:
        engine = self._engine()
        loop = asyncio.get_running_loop()
        run = _Run(started, self.metrics)
        request_id = uuid.uuid4().hex
        try:
            for index, (prompt, params) in enumerate(
                zip(prepared.prompts, prepared.params, strict=True)
            ):
                run.open.add(index)
                run.cancels.append(
                    engine.submit(
                        prompt,
                        params,
                        run.sink_for(loop, index),
                        prepared.adapter,
                        f"{request_id}-{index}",
                    )
                )
        except QueueFullError as exc:
            run.close()
            self.metrics.rejected.inc()
            raise ServingError(
                429, f"Too many requests: {exc}", "RateLimitError", "rate_limit_exceeded"
            ) from exc
        except EngineStoppedError as exc:
            run.close()
            raise ServingError(503, str(exc), "ServiceUnavailableError") from exc
        self.metrics.prompt_tokens.inc(prepared.prompt_tokens)
        return run

    async def _collect(self, run: _Run, count: int, disconnected: Disconnected) -> _Collected:
        texts = [""] * count
        reasons: list[str | None] = [None] * count
        generated = 0
        try:
            while (item := await run.next(disconnected)) is not None:
                index, delta = item
                texts[index] += delta.text
                generated += run.new_tokens(index, delta)
                if delta.error is not None:
                    raise ServingError(500, delta.error, "InternalServerError")
                if delta.finish_reason is not None:
                    reasons[index] = delta.finish_reason
        finally:
            run.close()
            self.metrics.generation_tokens.inc(generated)
        finished = [reason for reason in reasons if reason is not None]
        if len(finished) < count:
            raise ClientGoneError()
        return _Collected(texts, finished, generated)

    async def _sse(
        self, run: _Run, count: int, prompt_tokens: int, chunks: _Chunks, include_usage: bool
    ) -> AsyncIterator[str]:
        """The one stream generator: opening chunks, one chunk per delta, usage, [DONE]."""
        generated = 0
        try:
            for opening in chunks.opening(count):
                yield opening
            while (item := await run.next(None)) is not None:
                index, delta = item
                generated += run.new_tokens(index, delta)
                if delta.error is not None:
                    error = ServingError(500, delta.error, "InternalServerError")
                    yield f"data: {error.openai_body().model_dump_json()}\n\n"
                    break
                event = chunks.delta(index, delta.text, delta.finish_reason)
                if event is not None:
                    yield event
            if include_usage:
                yield chunks.usage(_usage(prompt_tokens, generated))
            yield "data: [DONE]\n\n"
        finally:
            # Runs on normal end and when the client disconnects (the generator is closed).
            run.close()
            self.metrics.generation_tokens.inc(generated)

    async def _execute(self, plan: _Plan) -> tuple[_Prepared, _Run]:
        started = time.monotonic()
        prepared = await self._prepare(plan)
        return prepared, self._start(prepared, started)

    # ---- OpenAI: shared checks ---------------------------------------------------------------

    def _validate_sampling(self, req: p.SamplingFields) -> None:
        extra = req.model_extra or {}
        if extra.get("logprobs") or extra.get("top_logprobs"):
            raise bad_request("logprobs are not supported by this server", "logprobs")
        stops = req.stop_list()
        if len(stops) > p.MAX_STOP or any(len(s) > p.MAX_STOP_CHARS for s in stops):
            raise bad_request(
                f"at most {p.MAX_STOP} stop strings of {p.MAX_STOP_CHARS} characters", "stop"
            )
        vocab = self._engine().codec.vocab_size
        for token in req.stop_token_ids or ():
            if not 0 <= token < vocab:
                raise bad_request(f"stop token id {token} is outside the vocabulary", "stop")

    @staticmethod
    def _openai_sampling(req: p.SamplingFields) -> Callable[[int, int, int], SamplingParams]:
        def sampling(_prompt_len: int, max_tokens: int, index: int) -> SamplingParams:
            seed = None if req.seed is None else (req.seed + index) % 2**63
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=max(req.top_k or 0, 0),
                repetition_penalty=req.repetition_penalty or 1.0,
                seed=seed,
                stop=tuple(req.stop_list()),
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
                min_tokens=min(req.min_tokens, max_tokens),
            )

        return sampling

    # ---- OpenAI chat -------------------------------------------------------------------------

    async def chat(
        self, req: p.ChatCompletionRequest, disconnected: Disconnected
    ) -> p.ChatCompletionResponse | EventStream:
        adapter = self.resolve_model(req.model)
        self._validate_sampling(req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        turns = tuple(ChatTurn(m.role, m.text()) for m in req.messages)
        plan = _Plan(
            prompts=[turns],
            n=req.n,
            param="messages",
            budget=lambda _length: max_tokens,
            sampling=self._openai_sampling(req),
            adapter=adapter,
            add_generation_prompt=req.add_generation_prompt,
            template_kwargs=req.chat_template_kwargs or {},
        )
        prepared, run = await self._execute(plan)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = _ChatChunks(req.model)
            return EventStream(self._sse(run, req.n, prepared.prompt_tokens, chunks, include_usage))
        collected = await self._collect(run, req.n, disconnected)
        return p.ChatCompletionResponse(
            model=req.model,
            choices=[
                p.ChatChoice(index=i, message=p.ChatResponseMessage(content=t), finish_reason=r)
                for i, (t, r) in enumerate(zip(collected.texts, collected.reasons, strict=True))
            ],
            usage=_usage(prepared.prompt_tokens, collected.generated),
        )

    # ---- OpenAI completions ------------------------------------------------------------------

    async def completion(
        self, req: p.CompletionRequest, disconnected: Disconnected
    ) -> p.CompletionResponse | EventStream:
        adapter = self.resolve_model(req.model)
        if req.suffix:
            raise bad_request("suffix is not supported", "suffix")
        prompts = _normalized_prompts(req.prompt)
        if len(prompts) > p.MAX_N:
            raise bad_request(f"at most {p.MAX_N} prompts per request", "prompt")
        self._validate_sampling(req)
        plan = _Plan(
            prompts=prompts,
            n=req.n,
            param="prompt",
            budget=lambda _length: req.max_tokens,
            sampling=self._openai_sampling(req),
            adapter=adapter,
        )
        prepared, run = await self._execute(plan)
        count = len(prepared.prompts)
        codec = self._engine().codec
        echoes = (
            await self._off_loop(lambda: [codec.decode(x) for x in prepared.prompts])
            if req.echo
            else [""] * count
        )
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = _CompletionChunks(req.model, echoes)
            return EventStream(self._sse(run, count, prepared.prompt_tokens, chunks, include_usage))
        collected = await self._collect(run, count, disconnected)
        return p.CompletionResponse(
            model=req.model,
            choices=[
                p.CompletionChoice(index=i, text=echoes[i] + t, finish_reason=r)
                for i, (t, r) in enumerate(zip(collected.texts, collected.reasons, strict=True))
            ],
            usage=_usage(prepared.prompt_tokens, collected.generated),
        )

    # ---- legacy /chat ------------------------------------------------------------------------

    async def legacy_chat(
        self, req: p.UnifiedRequestModel, disconnected: Disconnected
    ) -> p.LegacyResult:
        """Upstream's `/chat`: prompt (text generation) or messages (conversation)."""
        if self.engine is None:
            raise ServingError(503, "Model not initialized")
        kwargs = req.generate_kwargs
        if kwargs.num_beams > 1:
            raise bad_request("beam search (num_beams > 1) is not supported")
        prompt: Prompt
        if req.prompt:
            prompt = (req.prefix or "") + req.prompt
        elif req.messages:
            prompt = tuple(ChatTurn(m.role, m.content) for m in req.messages)
        elif self.config.pipeline == "conversational":
            raise bad_request("Conversational parameter messages required")
        else:
            raise bad_request("Text generation parameter prompt required")

        def sampling(prompt_len: int, max_tokens: int, _index: int) -> SamplingParams:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=kwargs.temperature if kwargs.do_sample else 0.0,
                top_k=kwargs.top_k if kwargs.do_sample else 0,
                top_p=kwargs.top_p if kwargs.do_sample else 1.0,
                repetition_penalty=kwargs.repetition_penalty,
                seed=kwargs.seed,
                min_tokens=min(
                    kwargs.min_new_tokens or max(0, kwargs.min_length - prompt_len), max_tokens
                ),
            )

        def budget(length: int) -> int:
            return kwargs.max_new_tokens or max(1, kwargs.max_length - length)

        plan = _Plan(prompts=[prompt], n=1, param="prompt", budget=budget, sampling=sampling)
        _, run = await self._execute(plan)
        collected = await self._collect(run, 1, disconnected)
        answer = collected.texts[0]
        if req.prompt and req.return_full_text:
            answer = req.prompt + answer
        return p.LegacyResult(Result=answer)


# ---- stream spellings ------------------------------------------------------------------------


class _ChatChunks:
    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _event(self, choices: list[p.ChatChunkChoice], usage: p.UsageInfo | None = None) -> str:
        body = p.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return f"data: {body.model_dump_json(exclude_none=usage is None)}\n\n"

    def opening(self, count: int) -> list[str]:
        role = p.DeltaMessage(role="assistant", content="")
        return [self._event([p.ChatChunkChoice(index=i, delta=role)]) for i in range(count)]

    def delta(self, index: int, text: str, finish_reason: str | None) -> str | None:
        if not text and finish_reason is None:
            return None
        content = p.DeltaMessage(content=text or None)
        choice = p.ChatChunkChoice(index=index, delta=content, finish_reason=finish_reason)
        return self._event([choice])

    def usage(self, usage: p.UsageInfo) -> str:
        return self._event([], usage)


class _CompletionChunks:
    def __init__(self, model: str, echoes: list[str]) -> None:
        self.model = model
        self.echoes = echoes
        self.echoed: set[int] = set()
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _event(self, choices: list[p.CompletionChoice], usage: p.UsageInfo | None = None) -> str:
        body = p.CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return f"data: {body.model_dump_json(exclude_none=usage is None)}\n\n"

    def opening(self, count: int) -> list[str]:
        return []

    def delta(self, index: int, text: str, finish_reason: str | None) -> str | None:
        if index not in self.echoed:
            self.echoed.add(index)
            text = self.echoes[index] + text
        if not text and finish_reason is None:
            return None
        choice = p.CompletionChoice(index=index, text=text, finish_reason=finish_reason)
        return self._event([choice])

    def usage(self, usage: p.UsageInfo) -> str:
        return self._event([], usage)


def _normalized_prompts(raw: str | list[str] | list[int] | list[list[int]]) -> list[Prompt]:
    """OpenAI's four prompt spellings as a list of prompts, before any count is checked."""
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(x, int) for x in raw):
        return [[int(x) for x in raw]]  # type: ignore[arg-type]
    items: list[Prompt] = []
    for item in raw:
        items.append(item if isinstance(item, str) else [int(x) for x in item])  # type: ignore[union-attr]
    return items


def _usage(prompt_tokens: int, completion_tokens: int) -> p.UsageInfo:
    return p.UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
