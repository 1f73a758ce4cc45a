"""`kaito chat`: talk to a running inference server, one-shot or interactively."""

from __future__ import annotations

from typing import Any

import typer


def chat(
    prompt: str | None = typer.Argument(None, help="Ask once and exit; omit for a session."),
    url: str = typer.Option("http://127.0.0.1:5000", help="Server base URL (local or forwarded)."),
    model: str | None = typer.Option(None, help="Model or adapter name (default: the first)."),
    max_tokens: int = typer.Option(256, help="Upper bound on each answer's length."),
    temperature: float = typer.Option(0.0, help="0 answers greedily (deterministic)."),
    api_key: str = typer.Option("none", envvar="KAITO_API_KEY", help="Bearer token, if required."),
) -> None:
    """Chat through the OpenAI-compatible API, keeping the conversation's history."""
    import openai

    client = openai.OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key=api_key, max_retries=0)
    try:
        name = model or client.models.list().data[0].id
    except openai.APIConnectionError:
        typer.echo(f"error: no server at {url}: start one with `kaito run -f FILE`", err=True)
        raise typer.Exit(2) from None
    history: list[Any] = []

    def ask(text: str) -> None:
        history.append({"role": "user", "content": text})
        stream = client.chat.completions.create(
            model=name,
            messages=history,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
        )
        parts = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                typer.echo(chunk.choices[0].delta.content, nl=False)
        typer.echo()
        history.append({"role": "assistant", "content": "".join(parts)})

    try:
        if prompt is not None:
            ask(prompt)
            return
        typer.echo(f"chatting with {name} at {url}; Ctrl-D to leave")
        while True:
            try:
                text = input("> ")
            except EOFError:
                typer.echo()
                return
            if text.strip():
                ask(text)
    except openai.APIStatusError as exc:
        typer.echo(f"error: {exc.status_code} {exc.message}", err=True)
        raise typer.Exit(1) from None
