"""`kaito demo`: the first thing a newcomer runs; answers a question with the small real model."""

from __future__ import annotations

import time

import typer

DEFAULT_QUESTION = "What is the capital of France?"


def demo(
    question: str = typer.Argument(DEFAULT_QUESTION, help="What to ask the model."),
    max_new_tokens: int = typer.Option(48, help="Upper bound on the answer's length in tokens."),
) -> None:
    """Load SmolLM2-135M-Instruct on the CPU and answer one question (greedy decoding)."""
    from rich.console import Console

    from kaito.runtime.small_model import SMALL_MODEL_NAME, small_model_path

    console = Console()
    started = time.monotonic()
    with console.status(f"preparing {SMALL_MODEL_NAME} (first run converts the GGUF, ~30 s)"):
        path = small_model_path()
        answer = _answer(str(path), question, max_new_tokens)
    console.print(f"[bold]Q:[/bold] {question}")
    console.print(f"[bold]A:[/bold] {answer}")
    console.print(f"[dim]{SMALL_MODEL_NAME} from {path}, {time.monotonic() - started:.1f} s[/dim]")


def _answer(model_path: str, question: str, max_new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    return str(tokenizer.decode(output[0][prompt_len:], skip_special_tokens=True)).strip()
