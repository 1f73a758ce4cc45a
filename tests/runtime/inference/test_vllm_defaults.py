"""The vLLM command: vLLM's own GPU defaults, opt-in remote code, shipped templates, hidden key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.runtime.chat_templates import TEMPLATE_DIR, resolve_template_path
from kaito.runtime.inference.config import parse_args
from kaito.runtime.inference.vllm import VLLM_API_KEY_ENV, build_vllm_argv, vllm_environment


def vllm_argv(*flags: str, environ: dict[str, str] | None = None) -> list[str]:
    config = parse_args(["--engine", "vllm", "--adapter-dir", "/nonexistent", *flags], {})
    return build_vllm_argv(config, environ=environ or {})


def test_vllm_keeps_its_own_batch_size_unless_one_is_configured(tmp_path: Path) -> None:
    assert "--max-num-seqs" not in vllm_argv()
    argv = vllm_argv("--max-num-seqs", "16")
    assert argv[argv.index("--max-num-seqs") + 1] == "16"
    file = tmp_path / "cfg.yaml"
    file.write_text("max_num_seqs: 512\n")
    argv = vllm_argv("--config", str(file))
    assert argv[argv.index("--max-num-seqs") + 1] == "512"


def test_remote_code_runs_only_when_asked() -> None:
    assert "--trust-remote-code" not in vllm_argv()
    assert "--trust-remote-code" in vllm_argv("--trust-remote-code")


def test_the_api_key_reaches_vllm_through_its_environment_not_the_command_line() -> None:
    config = parse_args(["--engine", "vllm", "--adapter-dir", "/nonexistent"], {})
    keyed = config.with_overrides(api_key="s3cret-key")
    assert not [a for a in build_vllm_argv(keyed, environ={}) if "s3cret" in a or a == "--api-key"]
    assert vllm_environment(keyed, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        VLLM_API_KEY_ENV: "s3cret-key",
    }
    assert VLLM_API_KEY_ENV not in vllm_environment(config, {"PATH": "/bin"})


@pytest.mark.parametrize(
    "named",
    ["tool-chat-phi4-mini.jinja", "/workspace/chat_templates/tool-chat-phi4-mini.jinja"],
)
def test_a_shipped_template_name_becomes_the_packaged_file(named: str) -> None:
    argv = vllm_argv("--chat-template", named)
    path = Path(argv[argv.index("--chat-template") + 1])
    assert path == TEMPLATE_DIR / "tool-chat-phi4-mini.jinja" and path.is_file()


def test_other_templates_pass_through_for_vllm_to_judge(tmp_path: Path) -> None:
    own = tmp_path / "mine.jinja"
    own.write_text("{{ messages }}")
    assert resolve_template_path(str(own)) == str(own)
    assert resolve_template_path("{{ messages }}") == "{{ messages }}"
    # Not shipped: left as written, so vLLM's own check names the missing file.
    assert resolve_template_path("/workspace/chat_templates/nope.jinja") == (
        "/workspace/chat_templates/nope.jinja"
    )
    assert resolve_template_path("/elsewhere/tool-chat-phi4-mini.jinja") == (
        "/elsewhere/tool-chat-phi4-mini.jinja"
    )
