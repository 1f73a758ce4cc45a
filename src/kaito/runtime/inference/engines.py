"""The engine interface the serving layer calls, and the registry of in-process engine back-ends.

An engine turns prompt token ids into a stream of `Delta`s. The serving layer (HTTP-independent)
owns everything before that (tokenizing, chat templates, limits, sampling parameters) and after
it (collecting or streaming choices). A back-end provides three things:

- an `Engine` (submit, cancel, adapters, queue depths, stop),
- a `PromptCodec` for its vocabulary (encode, chat template, decode), reachable as
  `engine.codec`; every codec method is blocking and thread-safe: the serving layer calls it
  from a worker thread, never from the event loop,
- a loader `def load(config: ServerConfig, hooks: EngineHooks) -> Engine` that blocks until the
  engine accepts work (the engine runs its own threads), registered by `--engine` name in
  `ENGINE_LOADERS` as "module:function" so a back-end's imports load only when it is chosen.
"""

from __future__ import annotations

import concurrent.futures
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kaito.runtime.inference.adapters import AdapterSpec
from kaito.runtime.inference.sampling import SamplingParams

if TYPE_CHECKING:
    from kaito.runtime.inference.config import ServerConfig


class QueueFullError(RuntimeError):
    """The waiting queue is at capacity; the caller should answer 429."""


class EngineStoppedError(RuntimeError):
    """The engine is not running (still loading, or shut down)."""


@dataclass
class Delta:
    """New output of one sequence since the previous delta.

    `text` is final (stop strings already cut, partial characters held back); the last delta of a
    sequence has `finish_reason` ("stop", "length", or "error" with `error` set).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


Sink = Callable[[Delta], None]
"""Called by the engine's thread for each delta; must not block (the serving layer hops loops)."""


@dataclass(frozen=True)
class ChatTurn:
    """One message as chat templates see it."""

    role: str
    content: str


class PromptCodec(Protocol):
    """Text <-> token ids for one model's vocabulary (blocking, thread-safe)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_chars_per_token(self) -> int:
        """An upper bound on the characters one token stands for: text longer than
        `max_model_len * max_chars_per_token` cannot fit, and is refused without tokenizing."""
        ...

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """Raises ValueError when the text cannot be tokenized (the client's error)."""
        ...

    def render_chat(
        self,
        turns: Sequence[ChatTurn],
        *,
        add_generation_prompt: bool,
        template_kwargs: Mapping[str, object],
    ) -> str:
        """The prompt text; raises ValueError when the template rejects the conversation."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class Engine(Protocol):
    """What the serving layer needs from a running engine."""

    @property
    def codec(self) -> PromptCodec: ...

    @property
    def max_model_len(self) -> int:
        """Prompt plus generated tokens per sequence."""
        ...

    @property
    def adapters(self) -> Mapping[str, AdapterSpec]: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Sink,
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> Callable[[], None]:
        """Queue one sequence; returns a cancel function. Raises QueueFullError or
        EngineStoppedError; never blocks on model work."""
        ...

    def add_adapter(self, spec: AdapterSpec) -> concurrent.futures.Future[None]:
        """Load an adapter; the future fails with AdapterError when it does not fit."""
        ...

    def remove_adapter(self, name: str) -> concurrent.futures.Future[None]:
        """Unload an adapter; its running sequences end with an error."""
        ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class EngineHooks:
    """What the serving process hands an engine loader besides the server config."""

    on_step: Callable[[int], None] | None = None  # sequences per decode step (a histogram)
    # A (model, tokenizer) pair already in memory (tests, benchmarks); the loader takes it.
    preloaded: tuple[Any, Any] | None = None
    adapters: Sequence[AdapterSpec] = field(default_factory=tuple)  # to load before serving


EngineLoader = Callable[["ServerConfig", EngineHooks], Engine]

# --engine name -> "module:function" of its loader. vLLM is absent: it replaces the process.
ENGINE_LOADERS: dict[str, str] = {
    "transformers": "kaito.runtime.inference.engine:load_transformers_engine",
    "llamacpp": "kaito.runtime.inference.llamacpp:load_llamacpp_engine",
}


def engine_loader(name: str) -> EngineLoader:
    """The loader registered for `--engine name`; KeyError names the known ones."""
    try:
        target = ENGINE_LOADERS[name]
    except KeyError:
        raise KeyError(f"no in-process engine {name!r}; known: {sorted(ENGINE_LOADERS)}") from None
    module_name, _, function = target.partition(":")
    loader: EngineLoader = getattr(importlib.import_module(module_name), function)
    return loader
