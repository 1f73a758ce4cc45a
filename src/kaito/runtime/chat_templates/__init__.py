"""Chat templates shipped with the runtime (package data) and how a template name finds one."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

TEMPLATE_DIR = Path(__file__).resolve().parent
# Where upstream's images kept these files; workspaces and ConfigMaps written for upstream name
# them there, so a missing file at this path means the shipped template of the same name.
UPSTREAM_DIR = PurePosixPath("/workspace/chat_templates")
SUFFIX = ".jinja"


def shipped_templates() -> list[str]:
    """File names of the templates that ship with kaito."""
    return sorted(p.name for p in TEMPLATE_DIR.glob(f"*{SUFFIX}"))


def shipped_path(name: str) -> Path | None:
    """The packaged file for a bare template name (`llama-3-instruct.jinja`), or None."""
    if "/" in name or not name.endswith(SUFFIX):
        return None
    path = TEMPLATE_DIR / name
    return path if path.is_file() else None


def resolve_template_path(value: str) -> str:
    """Where `--chat-template value` really points: a bare shipped name, or upstream's
    /workspace/chat_templates/<name> when that file is absent, becomes the packaged file's
    absolute path; anything else (an existing file, inline Jinja, a missing path) is returned
    unchanged for the engine to use or reject."""
    if "{" in value or "\n" in value or Path(value).is_file():
        return value
    candidate = PurePosixPath(value)
    if candidate.parent in (PurePosixPath("."), UPSTREAM_DIR):
        shipped = shipped_path(candidate.name)
        if shipped is not None:
            return str(shipped)
    return value
