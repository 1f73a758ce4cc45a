"""Sampling parameters and the per-step token chooser shared by every sequence in a batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it stops.

    `temperature == 0` means greedy decoding; `top_k == 0` and `top_p == 1` disable those filters.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    histories: list[list[int]],
) -> list[int]:
    """Pick the next token of every row; greedy rows share one argmax, sampled rows go one by one.

    Sampled rows are drawn individually because a seeded request owns its generator, which must
    produce the same tokens whatever else shares the batch.
    """
    chosen = torch.argmax(logits, dim=-1).tolist()
    for row, param in enumerate(params):
        if param.greedy and param.repetition_penalty == 1.0:
            continue
        row_logits = logits[row].float()
        if param.repetition_penalty != 1.0 and histories[row]:
            seen = torch.tensor(sorted(set(histories[row])), dtype=torch.long)
            values = row_logits[seen]
            row_logits = row_logits.clone()
            row_logits[seen] = torch.where(
                values > 0, values / param.repetition_penalty, values * param.repetition_penalty
            )
        if param.greedy:
            chosen[row] = int(torch.argmax(row_logits))
            continue
        chosen[row] = _sample(row_logits / param.temperature, param, generators[row])
    return [int(token) for token in chosen]


def _sample(logits: torch.Tensor, param: SamplingParams, generator: torch.Generator | None) -> int:
    if 0 < param.top_k < logits.shape[-1]:
        threshold = torch.topk(logits, param.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if param.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p; the first token always survives.
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= param.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
