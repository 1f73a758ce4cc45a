"""Every chat template the catalog names ships with the runtime and renders a tool-using chat."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kaito.presets import default_catalog
from kaito.runtime.chat_templates import shipped_path, shipped_templates

NAMED = sorted(
    {
        template
        for preset in default_catalog()
        for template in (
            preset.vllm_args.get("chat_template"),
            preset.transformers_args.get("chat_template"),
        )
        if template
    }
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call0abc1",
                "type": "function",
                # vLLM hands templates the arguments parsed into a mapping.
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call0abc1", "name": "get_weather", "content": "22 C, sunny"},
    {"role": "assistant", "content": "It is 22 C and sunny in Paris."},
    {"role": "user", "content": "And tomorrow?"},
]


def render(name: str, **context: Any) -> str:
    """Render as transformers and vLLM do: sandboxed, trimmed blocks, a tojson filter."""
    path = shipped_path(name)
    assert path is not None, f"{name} is named by the catalog but not shipped"

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(path.read_text()).render(**context)


def test_the_catalog_names_templates_and_every_one_ships() -> None:
    assert len(NAMED) >= 8
    missing = [name for name in NAMED if name not in shipped_templates()]
    assert missing == []


@pytest.mark.parametrize("name", NAMED)
def test_a_named_template_renders_a_conversation_with_a_tool_call(name: str) -> None:
    text = render(name, messages=CONVERSATION, tools=TOOLS, add_generation_prompt=True)
    assert "get_weather" in text and "Paris" in text
    assert "22 C, sunny" in text
    assert text.rstrip().endswith(("And tomorrow?[/INST]", "And tomorrow?")) or (
        text.index("And tomorrow?") < len(text) - len("And tomorrow?")
    )
    # The call's arguments are rendered as data, not as a Python repr.
    assert "{'city'" not in text


@pytest.mark.parametrize("name", NAMED)
def test_a_named_template_renders_a_plain_chat_and_json_string_arguments(name: str) -> None:
    plain = render(
        name, messages=[{"role": "user", "content": "Hi"}], tools=None, add_generation_prompt=True
    )
    assert "Hi" in plain and "get_weather" not in plain
    as_text = [dict(m) for m in CONVERSATION]
    as_text[2] = {
        **as_text[2],
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": json.dumps({"city": "Lyon"})}}
        ],
    }
    assert '"city": "Lyon"' in render(name, messages=as_text, tools=TOOLS) or (
        # Gemma's compact call syntax quotes strings with <|"|>.
        'city:<|"|>Lyon<|"|>' in render(name, messages=as_text, tools=TOOLS)
        or '{"city": "Lyon"}' in render(name, messages=as_text, tools=TOOLS)
    )
